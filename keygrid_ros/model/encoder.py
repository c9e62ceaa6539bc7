"""Key-Grid's keypoint detector: PointNet++ MSG segmentation network -> keypoint weights, keypoints, segment strengths.

Released design (``reference/keygrid_method.md`` section 1): 4 multi-scale set-abstraction levels
(1024/256/64/16 centroids, two radii each), 4 feature-propagation levels back to every input point, a
per-point head giving K logits, ``log_softmax`` over K, ``Linear(K, K)``, softmax over the *points*, and
keypoints = weights @ points. A skeleton head on the max-pooled deepest feature gives one sigmoid
strength per keypoint pair. Dropped from the release: its dead modules (``MA_EMB``, the decoder ``Head``s)
and its batch-size-1 crash.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
import torch.nn.functional as F

from .. import ops
from .config import KeyGridConfig
from .layers import BatchNorm, FeaturePropagation, SharedMLP, fold_batchnorm, fold_batchnorms_, mlp_layers

#: Per-point input features: xyz repeated three times (the released network's 9 input channels).
INPUT_CHANNELS = 9


class Level(NamedTuple):
    """One level of the point hierarchy: points ``xyz`` (B, S, 3) and their features (B, S, C) (None at l0)."""

    xyz: torch.Tensor
    features: torch.Tensor | None


class EncoderOutput(NamedTuple):
    keypoints: torch.Tensor  # (B, K, 3) = weights @ points
    weights: torch.Tensor  # (B, K, N) each row sums to 1 over the points (one-hot when hard)
    strengths: torch.Tensor  # (B, K(K-1)/2) in (0, 1), pairs in torch.triu_indices(K, K, 1) order
    levels: list[Level]  # l0 (the input, in the order the model used) .. l4, for the decoder
    order: torch.Tensor | None  # (B, N): l0 = input[order] when the model FPS-ordered the input, else None


class SetAbstractionMSG(nn.Module):
    """Multi-scale grouping: per radius, group neighbours of each centroid, shared MLP, max over the group.

    Each neighbour j of centroid c contributes ``[features_j, xyz_j - c]``; the branches' outputs are
    concatenated. The first layer is linear, so it is applied once per point before grouping instead of
    once per (centroid, neighbour) pair: ``W [f_j, x_j - c] + b = (W [f_j, x_j] + b) - W_xyz c``. Same
    parameters and result as the released layer, with far less work and memory (neighbourhoods overlap).
    """

    def __init__(self, in_channels: int, radii, nsamples, mlps, grouping: str = 'ball'):
        super().__init__()
        self.radii = tuple(radii)
        self.nsamples = tuple(nsamples)
        self.grouping = grouping
        self.first = nn.ModuleList(nn.Linear(in_channels + 3, mlp[0], bias=False) for mlp in mlps)
        self.rest = nn.ModuleList(
            SharedMLP(BatchNorm(mlp[0]), nn.ReLU(inplace=True), *mlp_layers(mlp)) for mlp in mlps
        )
        self.out_channels = sum(mlp[-1] for mlp in mlps)

    def fold_batchnorms_(self) -> None:
        """Inference only: fold each branch's first BatchNorm into its per-point first layer (see forward)."""
        for i, (first, rest) in enumerate(zip(self.first, self.rest)):
            if isinstance(rest[0], nn.BatchNorm1d):
                self.first[i] = fold_batchnorm(first, rest[0])
                rest[0] = nn.Identity()

    def neighbourhoods(self, xyz: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Neighbour indices (B, S, nsample) of each centroid, one tensor per radius (no autograd)."""

        def query(centroids: torch.Tensor, xyz: torch.Tensor) -> tuple[torch.Tensor, ...]:
            sqdist = ops.square_distance(centroids, xyz)  # shared by both radii
            if self.grouping == 'ball':
                return tuple(ops.ball_query(r, k, xyz, centroids, sqdist) for r, k in zip(self.radii, self.nsamples))
            return tuple(ops.knn_query(k, xyz, centroids, sqdist) for k in self.nsamples)

        with torch.no_grad():
            return ops.per_cloud(query, centroids, xyz)

    def forward(self, xyz: torch.Tensor, features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """``xyz`` (B, N, 3), ``features`` (B, N, C), ``centroids`` (B, S, 3) -> (B, S, out_channels)."""
        per_point = torch.cat([features, xyz], dim=-1)  # (B, N, C + 3)
        outputs = []
        for idx, first, rest in zip(self.neighbourhoods(xyz, centroids), self.first, self.rest):
            projected = first(per_point)  # (B, N, C1)
            centroid_term = centroids @ first.weight[:, -3:].t()  # (B, S, C1)
            grouped = ops.index_points(projected, idx) - centroid_term.unsqueeze(2)  # (B, S, nsample, C1)
            # max, not amax: same values, and its backward scatters to one index instead of comparing the
            # whole (B, S, nsample, C) tensor against the maximum (2x faster at SA1 in training).
            outputs.append(rest(grouped).max(dim=2).values)
        return torch.cat(outputs, dim=-1)


def canonical_start(xyz: torch.Tensor) -> torch.Tensor:
    """FPS start that does not depend on the point order: the point farthest from the centroid, ``(B,)``."""
    return ((xyz - xyz.mean(dim=1, keepdim=True)) ** 2).sum(-1).argmax(-1)


class KeypointEncoder(nn.Module):
    """Points (B, N, 3) in the normalised [-1, 1] cube -> :class:`EncoderOutput`."""

    def __init__(self, config: KeyGridConfig):
        super().__init__()
        self.config = config
        K = config.num_keypoints
        channels = INPUT_CHANNELS
        self.sa = nn.ModuleList()
        for radii, nsamples, mlps in zip(config.sa_radii, config.sa_nsamples, config.sa_mlps):
            layer = SetAbstractionMSG(channels, radii, nsamples, mlps, config.grouping)
            self.sa.append(layer)
            channels = layer.out_channels
        c1, c2, c3, c4 = (layer.out_channels for layer in self.sa)  # 96, 256, 512, 1024 as released
        self.fp = nn.ModuleList([
            FeaturePropagation(128, [128, 128, 128]),  # l1 -> l0: no skip (the input xyz is not re-used)
            FeaturePropagation(c1 + 256, [256, 128]),  # l2 -> l1
            FeaturePropagation(c2 + 256, [256, 256]),  # l3 -> l2
            FeaturePropagation(c3 + c4, [256, 256]),  # l4 -> l3
        ])
        self.head = SharedMLP(
            nn.Linear(128, 128, bias=False), BatchNorm(128), nn.ReLU(inplace=True), nn.Dropout(config.head_dropout),
            nn.Linear(128, K),
        )
        # The released PT_L, applied after log_softmax over the keypoints. No bias: a per-keypoint constant
        # cannot change a softmax over the points.
        self.mix = nn.Linear(K, K, bias=False)
        self.skeleton = nn.Sequential(  # Linear layers before BatchNorm need no bias (see mlp_layers)
            nn.Linear(c4, 512, bias=False), BatchNorm(512), nn.ReLU(inplace=True),
            nn.Linear(512, 256, bias=False), BatchNorm(256), nn.ReLU(inplace=True),
            nn.Linear(256, config.num_segments),
        )

    def fold_batchnorms_(self) -> KeypointEncoder:
        """Fold every BatchNorm into the Linear before it, in place, for faster inference (eval mode only:
        the running statistics become constants, so the result must not be trained). Returns ``self``."""
        for layer in self.sa:
            layer.fold_batchnorms_()
        fold_batchnorms_(self)
        return self.eval()

    def fps_order(self, xyz: torch.Tensor) -> torch.Tensor:
        """Farthest-point order ``(B, N)`` of the input, for inputs that do not arrive in that order."""
        random_start = self.training and self.config.random_fps_start
        start = None if random_start else canonical_start(xyz)
        return ops.farthest_point_sample(xyz, xyz.shape[1], start=start)[1]

    def forward(self, xyz: torch.Tensor, hard: bool = False) -> EncoderOutput:
        """``xyz`` (B, N, 3) -> keypoints (B, K, 3), weights (B, K, N), strengths (B, K(K-1)/2), levels.

        ``hard`` replaces each weight row by a one-hot at its largest weight, so every keypoint is an input
        point (the released test-time mode; no gradient flows through it).
        """
        order = None
        if not self.config.fps_prefix:
            order = self.fps_order(xyz)
            xyz = ops.index_points(xyz, order)
        # With the points in farthest-point order every level's centroids are a prefix of the level above.
        levels = [Level(xyz, None)]
        features = torch.cat([xyz, xyz, xyz], dim=-1)
        for npoint, layer in zip(self.config.sa_npoints, self.sa):
            prev_xyz = levels[-1].xyz
            centroids = prev_xyz[:, :npoint]
            features = layer(prev_xyz, features, centroids)
            levels.append(Level(centroids, features))

        # Feature propagation back down to every input point (l4 -> l3 -> l2 -> l1 -> l0).
        features = levels[4].features
        for i in (3, 2, 1, 0):
            skip = levels[i].features  # None at l0
            features = self.fp[i](levels[i].xyz, levels[i + 1].xyz, features, skip=skip)

        logits = F.log_softmax(self.head(features), dim=-1)  # (B, N, K), normalised over the keypoints
        weights = torch.softmax(self.mix(logits).transpose(1, 2), dim=-1)  # (B, K, N), over the points
        if hard:
            weights = F.one_hot(weights.argmax(-1), weights.shape[-1]).to(weights.dtype)
        keypoints = weights @ xyz
        strengths = torch.sigmoid(self.skeleton(levels[4].features.amax(dim=1)))

        if order is not None:  # report weights in the caller's point order
            inverse = torch.argsort(order, dim=-1)
            weights = torch.gather(weights, 2, inverse.unsqueeze(1).expand_as(weights))
        return EncoderOutput(keypoints, weights, strengths, levels, order)
