"""Key-Grid's reconstruction decoder: climb the encoder's point hierarchy back up to one point per input point.

Released design (``reference/keygrid_method.md`` section 3). At each level l (64, 256, 1024 points) the MLP
sees ``[E_l, P(F_{l+1}), G_l]``: the encoder's features there (skip), the previous decoder features
brought over by 3-NN inverse-squared-distance interpolation, and the nearest grid point's
``[heat, x, y, z]``. The finest level (all N points) gets the interpolated features only. A point-wise MLP
head regresses absolute xyz.

Paper Table 5 ablations: without encoder information the skips are dropped and the deepest level starts
from its grid feature; without the grid heatmap the grid feature is dropped.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import KeyGridConfig
from .encoder import Level
from .heatmap import GridHeatmap
from .layers import FeaturePropagation, SharedMLP, mlp_layers

GRID_CHANNELS = 4  # heat value + grid xyz


class Decoder(nn.Module):
    """Encoder levels l0..l4 + grid heat (B, G) -> reconstructed points (B, N, 3), in l0's order."""

    def __init__(self, config: KeyGridConfig, encoder_channels: tuple[int, int, int, int]):
        super().__init__()
        if not (config.use_encoder_info or config.use_grid_heatmap):
            raise ValueError('the decoder needs encoder information, the grid heatmap, or both')
        self.use_skips = config.use_encoder_info
        self.use_grid = config.use_grid_heatmap
        c1, c2, c3, c4 = encoder_channels if self.use_skips else (0, 0, 0, 0)
        g = GRID_CHANNELS if self.use_grid else 0
        deepest = c4 if self.use_skips else GRID_CHANNELS
        self.up = nn.ModuleList([
            FeaturePropagation(128, [128, 128, 128]),  # l1 -> l0: interpolation only
            FeaturePropagation(c1 + 256 + g, [256, 128]),  # l2 -> l1
            FeaturePropagation(c2 + 256 + g, [256, 256]),  # l3 -> l2
            FeaturePropagation(c3 + deepest + g, [256, 256]),  # l4 -> l3
        ])
        self.head = SharedMLP(*mlp_layers([128, 128, 128, 128, 64, 32, 16]), nn.Linear(16, 3))

    def forward(self, levels: list[Level], heat: torch.Tensor | None, heatmap: GridHeatmap) -> torch.Tensor:
        """``levels`` from the encoder, ``heat`` (B, G) (None without the grid stream) -> (B, N, 3)."""

        def grid_feature(i: int) -> torch.Tensor | None:
            return heatmap.lookup(levels[i].xyz, heat) if self.use_grid else None

        features = levels[4].features if self.use_skips else heatmap.lookup(levels[4].xyz, heat)
        for i in (3, 2, 1):
            skip = levels[i].features if self.use_skips else None
            features = self.up[i](levels[i].xyz, levels[i + 1].xyz, features, skip=skip, grid=grid_feature(i))
        features = self.up[0](levels[0].xyz, levels[1].xyz, features)
        return self.head(features)
