"""Building blocks shared by the encoder and the decoder: point-wise MLPs over channels-last tensors.

The released code uses Conv1d/Conv2d with 1x1 kernels on channels-first tensors; a Linear layer on the
last axis is the same map with the same parameters, and keeps every tensor channels-last (one matmul,
no permutes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .. import ops


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm over the last axis of ``(..., C)``, every other axis counting as a sample.

    With a single sample per channel in training (batch size 1 into the skeleton head) batch statistics do
    not exist; the released code crashes there. This layer normalises with the running statistics instead
    and leaves them untouched.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if self.training and flat.shape[0] == 1:
            flat = F.batch_norm(flat, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, eps=self.eps)
            return flat.reshape(shape)
        return super().forward(flat).reshape(shape)


def shared_mlp(channels: Sequence[int]) -> nn.Sequential:
    """Point-wise Linear -> BatchNorm -> ReLU for every consecutive pair of ``channels``.

    The Linear layers have no bias: BatchNorm subtracts the per-channel mean, so a bias before it could
    never learn (the released 1x1 convolutions carry such dead biases).
    """
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [nn.Linear(c_in, c_out, bias=False), BatchNorm(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FeaturePropagation(nn.Module):
    """PointNet++ feature propagation: 3-NN interpolation up to denser points, concatenation, shared MLP.

    The MLP sees ``[skip, interpolated, grid]`` (each optional but the middle one), the released order:
    ``in_channels`` is their total width.
    """

    def __init__(self, in_channels: int, mlp: Sequence[int]):
        super().__init__()
        self.mlp = shared_mlp([in_channels, *mlp])

    def forward(
        self,
        target_xyz: torch.Tensor,
        source_xyz: torch.Tensor,
        source_features: torch.Tensor,
        skip: torch.Tensor | None = None,
        grid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``target_xyz`` (B, P, 3), ``source_xyz`` (B, S, 3), ``source_features`` (B, S, C), ``skip`` (B, P, E),
        ``grid`` (B, P, G) -> (B, P, mlp[-1])."""
        parts = [ops.three_interpolate(target_xyz, source_xyz, source_features)]
        if skip is not None:
            parts.insert(0, skip)
        if grid is not None:
            parts.append(grid)
        return self.mlp(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0])
