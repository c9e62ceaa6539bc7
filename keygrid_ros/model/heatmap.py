"""The grid heatmap: Key-Grid's keypoint skeleton rasterised onto a fixed grid in the [-1, 1] cube.

Every pair of keypoints (i < j) is a segment with a strength s_ij. Each grid point p gets
``max_ij s_ij * exp(-d_ij(p)^2 / sigma^2)`` where d_ij is the point-to-segment distance (Eq. 3-5), so the
map is large near strong segments. The decoder reads, at each of its points, the nearest grid point's
``[heat, x, y, z]``.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops


def make_grid(resolution: tuple[int, int, int]) -> torch.Tensor:
    """Grid points ``(X*Y*Z, 3)`` spanning [-1, 1] per axis, ordered as ``meshgrid(x, y, z, indexing='ij')``."""
    axes = [torch.linspace(-1.0, 1.0, n) for n in resolution]
    return torch.stack(torch.meshgrid(*axes, indexing='ij'), dim=-1).reshape(-1, 3)


class GridHeatmap(nn.Module):
    """Keypoints (B, K, 3) + strengths (B, K(K-1)/2) -> heat (B, G) on a fixed grid; nearest-grid lookup."""

    def __init__(self, num_keypoints: int, resolution: tuple[int, int, int] = (16, 16, 8), sigma2: float = 0.0025):
        super().__init__()
        self.resolution = tuple(resolution)
        self.sigma2 = float(sigma2)
        # Buffers (not parameters, not saved): they follow the module to its device.
        self.register_buffer('grid', make_grid(self.resolution), persistent=False)
        pairs = torch.triu_indices(num_keypoints, num_keypoints, offset=1)  # (2, S), row-major i < j
        self.register_buffer('pairs', pairs, persistent=False)

    def forward(self, keypoints: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
        """``keypoints`` (B, K, 3), ``strengths`` (B, S) -> heat (B, G) in [0, 1)."""
        starts = keypoints[:, self.pairs[0]]  # (B, S, 3)
        ends = keypoints[:, self.pairs[1]]
        grid = self.grid.to(keypoints.dtype).expand(keypoints.shape[0], -1, -1)
        sqdist = ops.point_segment_sqdist(grid, starts, ends)  # (B, G, S)
        heat = strengths.unsqueeze(1) * torch.exp(-sqdist / self.sigma2)
        return heat.amax(dim=-1)

    def nearest_index(self, points: torch.Tensor) -> torch.Tensor:
        """Index ``(B, P)`` of the grid point nearest to each of ``points`` (B, P, 3).

        The grid is a product of evenly spaced axes, so the nearest grid point is the per-axis nearest one:
        round each coordinate to its axis (clamped to the cube) instead of comparing with every grid point.
        """
        sizes = torch.tensor(self.resolution, device=points.device)
        steps = ((points + 1.0) * 0.5 * (sizes - 1)).round().long()
        steps = torch.minimum(steps.clamp_min(0), sizes - 1)
        nx, ny, nz = self.resolution
        return (steps[..., 0] * ny + steps[..., 1]) * nz + steps[..., 2]

    def lookup(self, points: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
        """The nearest grid point's ``[heat, x, y, z]`` for each of ``points`` (B, P, 3) -> (B, P, 4)."""
        idx = self.nearest_index(points)
        features = torch.cat([heat.unsqueeze(-1), self.grid.to(heat.dtype).expand(heat.shape[0], -1, -1)], dim=-1)
        return ops.index_points(features, idx)
