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
    """BatchNorm1d that also trains on a batch of one.

    With a single sample per channel in training (batch size 1 into the skeleton head) batch statistics do
    not exist; the released code crashes there. This layer normalises with the running statistics instead
    and leaves them untouched.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, eps=self.eps)
        return super().forward(x)


def mlp_layers(channels: Sequence[int]) -> list[nn.Module]:
    """Linear -> BatchNorm -> ReLU for every consecutive pair of ``channels``.

    The Linear layers have no bias: BatchNorm subtracts the per-channel mean, so a bias before it could
    never learn (the released 1x1 convolutions carry such dead biases).
    """
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [nn.Linear(c_in, c_out, bias=False), BatchNorm(c_out), nn.ReLU(inplace=True)]
    return layers


class SharedMLP(nn.Sequential):
    """Layers applied to every point of a channels-last tensor ``(..., C)`` -> ``(..., C_out)``.

    The leading axes are flattened into one, so BatchNorm counts every point (and neighbour) as a sample,
    like the released BatchNorm1d/2d over 1x1 convolutions, and every layer works on one 2-D tensor.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(*lead, -1)


def shared_mlp(channels: Sequence[int]) -> SharedMLP:
    """A :class:`SharedMLP` of Linear -> BatchNorm -> ReLU layers (see :func:`mlp_layers`)."""
    return SharedMLP(*mlp_layers(channels))


@torch.no_grad()
def fold_batchnorm(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """One Linear equal to ``bn(linear(x))`` with ``bn`` in eval mode (its running statistics)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Linear(linear.in_features, linear.out_features, bias=True).to(linear.weight)
    fused.weight.copy_(linear.weight * scale.unsqueeze(1))
    bias = linear.bias if linear.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def fold_batchnorms_(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a Linear inside a Sequential into it, in place.

    For inference only (the running statistics become constants): one matmul instead of a matmul and a
    normalisation pass per layer. Returns ``module``.
    """
    for child in module.modules():
        if not isinstance(child, nn.Sequential):
            continue
        for i in range(len(child) - 1):
            if isinstance(child[i], nn.Linear) and isinstance(child[i + 1], nn.BatchNorm1d):
                child[i] = fold_batchnorm(child[i], child[i + 1])
                child[i + 1] = nn.Identity()
    return module


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
