"""The full Key-Grid model (encoder + grid heatmap + decoder) and its two losses.

Training, as released::

    model = KeyGrid(KeyGridConfig())
    optimizer = model.configure_optimizer()          # Adadelta(lr=0.1, eps=1e-2)
    for epoch in range(100):
        similarity = model.use_similarity(epoch)     # False during the 21-epoch warm-up
        for points in batches:                       # (B, N, 3), normalised, FPS-ordered if config.fps_prefix
            output = model(points, reconstruct=similarity)
            losses = model.losses(points, output)    # {'loss', 'fps', 'sim'}
            optimizer.zero_grad(); losses['loss'].backward(); optimizer.step()

Losses (``reference/keygrid_method.md`` section 4): the farthest-point loss is the chamfer distance between
the K keypoints and F farthest points of the input sampled from a new random start every step; the
similarity loss is the chamfer distance between the reconstruction and the input. Both are squared L2,
mean per cloud in each direction, summed, mean over the batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .. import ops
from .config import KeyGridConfig
from .decoder import Decoder
from .encoder import KeypointEncoder
from .heatmap import GridHeatmap


class KeyGridOutput(NamedTuple):
    keypoints: torch.Tensor  # (B, K, 3)
    weights: torch.Tensor  # (B, K, N)
    strengths: torch.Tensor  # (B, K(K-1)/2)
    heat: torch.Tensor | None  # (B, G) grid heatmap, None when not reconstructing or without the grid stream
    reconstruction: torch.Tensor | None  # (B, N, 3) one point per input point, None when not reconstructing


class KeyGrid(nn.Module):
    """Key-Grid: points (B, N, 3) in the normalised cube -> keypoints, weights, strengths, heatmap, reconstruction."""

    def __init__(self, config: KeyGridConfig | None = None):
        super().__init__()
        self.config = config = config or KeyGridConfig()
        self.encoder = KeypointEncoder(config)
        self.heatmap = GridHeatmap(config.num_keypoints, config.grid_resolution, config.sigma2)
        channels = tuple(layer.out_channels for layer in self.encoder.sa)
        self.decoder = Decoder(config, channels) if config.use_decoder else None

    def forward(self, points: torch.Tensor, reconstruct: bool = True, hard: bool = False) -> KeyGridOutput:
        """``points`` (B, N, 3). ``reconstruct=False`` skips the heatmap and decoder (warm-up, inference).

        ``hard`` snaps keypoints to input points (inference only: no gradient reaches the weights).
        """
        enc = self.encoder(points, hard=hard)
        heat = reconstruction = None
        if reconstruct and self.decoder is not None:
            if self.config.use_grid_heatmap:
                heat = self.heatmap(enc.keypoints, enc.strengths)
            reconstruction = self.decoder(enc.levels, heat, self.heatmap)
            if enc.order is not None:  # back to the caller's point order
                inverse = torch.argsort(enc.order, dim=-1)
                reconstruction = ops.index_points(reconstruction, inverse)
        return KeyGridOutput(enc.keypoints, enc.weights, enc.strengths, heat, reconstruction)

    def use_similarity(self, epoch: int) -> bool:
        """Whether the similarity loss is on in this (0-indexed) epoch: after the warm-up, unless ablated.

        Without the farthest-point loss nothing would train during the warm-up, so there is none then.
        """
        cfg = self.config
        if not (cfg.use_decoder and cfg.use_similarity_loss):
            return False
        return epoch >= cfg.warmup_epochs or not cfg.use_fps_loss

    def losses(
        self, points: torch.Tensor, output: KeyGridOutput, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """``{'loss': total, 'fps': farthest-point loss, 'sim': similarity loss}`` (0-d tensors).

        The similarity term is counted when ``output`` has a reconstruction. ``generator`` draws the FPS
        targets' random starts (the global RNG when None).
        """
        cfg = self.config
        zero = points.new_zeros(())
        fps = sim = zero
        if cfg.use_fps_loss:
            targets, _ = ops.farthest_point_sample(points, cfg.num_fps_targets, start=None, generator=generator)
            fps = ops.chamfer_distance(output.keypoints, targets)
        if output.reconstruction is not None and cfg.use_similarity_loss:
            sim = ops.chamfer_distance(output.reconstruction, points)
        total = cfg.lambda_fps * fps + cfg.lambda_sim * sim
        return {'loss': total, 'fps': fps.detach(), 'sim': sim.detach()}

    def configure_optimizer(self, kind: str = 'adadelta', lr: float | None = None) -> torch.optim.Optimizer:
        """The released optimiser, ``Adadelta(lr=0.1, eps=1e-2)``, or the paper's ``Adam`` (``kind='adam'``)."""
        if kind == 'adadelta':
            return torch.optim.Adadelta(self.parameters(), lr=0.1 if lr is None else lr, eps=1e-2)
        if kind == 'adam':
            return torch.optim.Adam(self.parameters(), lr=1e-3 if lr is None else lr)
        raise ValueError(f"optimizer kind must be 'adadelta' or 'adam', got {kind!r}")
