"""SPRIN, the SE(3)-invariant per-point segmentation network of the USEEK student, in plain PyTorch.

Reference: ``reference/keygrid_method.md`` section 7.2 (US ``merger/sprin/model.py::SPRINSeg``). Reading order:
:func:`pair_descriptor` (the 8-D rotation-invariant description of a neighbour, 9-D when chiral),
:class:`SparseSO3Conv` (a low-rank continuous convolution whose kernel sees only that descriptor),
:class:`NeighbourhoodSO3Conv` (kNN neighbourhoods + the convolution), :class:`GlobalInfoProp`, :func:`fps_pool`,
then :class:`SPRINSeg` (the 16-layer stack of the table) and :class:`SPRINConfig` (every number of it).

Invariance: every quantity the network sees is a distance, an angle between vectors, or an angle seen from
the origin, so the output is invariant to rotations about the origin; centring the input on its centroid
(:func:`normalize_input`) adds translations, hence SE(3). The neighbour search (distances) and the pooling
(farthest point sampling from the point farthest from the origin) are invariant too, up to exact distance ties.
The same quantities are unchanged by a mirror image, so the network is invariant to reflections as well (E(3),
not only SE(3)): it cannot tell a shape from its mirror image, and on a mirror-symmetric garment (a T-shirt
lying flat) it gives the left and the right sleeve the same logits, so a keypoint's weights split between
them. ``SPRINConfig.chiral`` adds one reflection-odd descriptor entry: the network stays SE(3)-invariant but
can use the garment's relief to tell left from right. Nothing SE(3)-invariant can do so on a perfectly flat
symmetric sheet, whose half turn about its axis of symmetry is a rotation. ``SPRINConfig.up_cue`` gives the
network an "up" read from the cloud itself (:func:`keygrid_ros.model.canonical.up_direction`: the side the
relief rises to, which turns with the cloud), so the half turn is no longer a symmetry of what it sees.

Determinism: the released network picks a random subset of each kNN neighbourhood and a random FPS start in
every forward pass, at test time too. Here evaluation is deterministic by default (``neighbour_sampling=
'dilated'``: every ``stride``-th neighbour by distance rank; ``fps_start='farthest'``); training keeps the
released randomness (``train_*`` settings), drawn from the ``generator`` passed to :meth:`SPRINSeg.forward`
(the global RNG when None), so runs are reproducible under a seed. Geometry (kNN, descriptor) is always
computed in at least float32, also under autocast: bfloat16 distances would reorder neighbours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
import math
from typing import Any, NamedTuple

import torch
from torch import nn

from .. import ops
from . import canonical
from .config import reject_unknown_fields


class ConvSpec(NamedTuple):
    """One SO(3) convolution of the stack.

    ``k`` neighbours searched (0: every point of the source level, the dense layers), of which every
    ``stride``-th is kept (ceil(k / stride) in all); kernel ``rank``; ``out`` channels; ``hidden`` widths of the
    kernel MLP; ``glob`` width of the GlobalInfoProp after the ReLU (0: none).
    """

    k: int
    stride: int
    rank: int
    out: int
    hidden: tuple[int, ...]
    glob: int = 0


#: The layers in forward order, with the levels they read from and write to: l1 = the input points,
#: l2 = the first FPS pool (``fps_points[0]``), l3 = the second (``fps_points[1]``).
LAYERS: tuple[tuple[str, int, int], ...] = (
    ('conv_11', 1, 1), ('conv_12', 1, 1),
    ('pconv_1', 1, 2), ('conv_21', 2, 2), ('conv_22', 2, 2),
    ('pconv_2', 2, 3), ('conv_31', 3, 3), ('conv_32', 3, 3),
    ('upconv_4', 3, 2), ('conv_41', 2, 2),
    ('upconv_5', 2, 1), ('conv_51', 1, 1), ('conv_52', 1, 1),
)
LAYER_NAMES = tuple(name for name, _, _ in LAYERS)

#: The released SPRINSeg table (section 7.2), rows 1-15; the top MLP (row 16) is ``SPRINConfig.head``.
SPRIN_LAYERS: tuple[ConvSpec, ...] = (
    ConvSpec(64, 2, 32, 32, (80,), 8),  # conv_11: ones (1 channel) -> 32, glob +8 -> 40
    ConvSpec(64, 2, 32, 48, (80,), 16),  # conv_12: 40 -> 48, glob +16 -> 64
    ConvSpec(32, 1, 64, 128, (100,)),  # pconv_1: N -> 128 points
    ConvSpec(32, 1, 64, 128, (140,), 16),  # conv_21 -> 144
    ConvSpec(32, 1, 72, 144, (180,), 16),  # conv_22 -> 160
    ConvSpec(32, 1, 128, 256, (240,)),  # pconv_2: 128 -> 32 points
    ConvSpec(0, 1, 128, 256, (240,)),  # conv_31: dense over the 32 points
    ConvSpec(0, 1, 128, 256, (240,), 32),  # conv_32: dense, glob +32 -> 288
    ConvSpec(16, 1, 32, 128, (128,)),  # upconv_4: 32 -> 128 points, no ReLU
    ConvSpec(32, 1, 64, 128, (128,), 32),  # conv_41 -> 160
    ConvSpec(32, 1, 32, 48, (80,)),  # upconv_5: 128 -> N points, no ReLU
    ConvSpec(48, 2, 32, 48, (80,), 16),  # conv_51 -> 64
    ConvSpec(96, 3, 32, 64, (80,), 16),  # conv_52 -> 80
)

#: A narrow, short-range variant for tests and quick experiments (same structure, ~1/20 of the work).
TINY_LAYERS: tuple[ConvSpec, ...] = (
    ConvSpec(16, 2, 8, 16, (16,), 4),
    ConvSpec(16, 2, 8, 16, (16,), 4),
    ConvSpec(8, 1, 8, 32, (16,)),
    ConvSpec(8, 1, 8, 32, (16,), 4),
    ConvSpec(8, 1, 8, 32, (16,), 4),
    ConvSpec(8, 1, 16, 32, (16,)),
    ConvSpec(0, 1, 16, 32, (16,)),
    ConvSpec(0, 1, 16, 32, (16,), 8),
    ConvSpec(4, 1, 8, 32, (16,)),
    ConvSpec(8, 1, 8, 32, (16,), 8),
    ConvSpec(8, 1, 8, 16, (16,)),
    ConvSpec(16, 2, 8, 16, (16,), 4),
    ConvSpec(24, 3, 8, 16, (16,), 4),
)

SAMPLING_MODES = ('dilated', 'random')
FPS_STARTS = ('farthest', 'random')


@dataclass(frozen=True)
class SPRINConfig:
    """Every number of the student network. Defaults: the released SPRINSeg for USEEK (2048 points).

    ``layers`` has one :class:`ConvSpec` per entry of :data:`LAYERS`; ``head`` the widths of the top MLP
    (Conv1d + BatchNorm + ReLU each) before the K logits. ``neighbour_sampling`` / ``fps_start`` apply in eval
    mode, ``train_neighbour_sampling`` / ``train_fps_start`` in training mode (see the module docstring).
    """

    num_keypoints: int = 8
    num_points: int = 2048  # what the model was trained on; any N works at run time
    fps_points: tuple[int, int] = (128, 32)
    layers: tuple[ConvSpec, ...] = SPRIN_LAYERS
    head: tuple[int, ...] = (128, 256)
    neighbour_sampling: str = 'dilated'
    train_neighbour_sampling: str = 'random'  # the released behaviour (random subset of the k nearest)
    fps_start: str = 'farthest'
    train_fps_start: str = 'random'  # the released behaviour
    # A 9th, reflection-odd descriptor entry (see pair_descriptor): the network stays SE(3)-invariant but can
    # tell a shape from its mirror image. Off in the released network (and in files that predate it).
    chiral: bool = False
    # Three entries measured against the cloud's own "up" (model/canonical.py): still SE(3)-invariant, and
    # they tell left from right on a garment whose relief rises from the table. Off as released.
    up_cue: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, 'layers', tuple(ConvSpec(k, s, r, o, tuple(h), g)
                                                 for k, s, r, o, h, g in self.layers))
        object.__setattr__(self, 'fps_points', tuple(self.fps_points))
        object.__setattr__(self, 'head', tuple(self.head))
        if self.num_keypoints < 1:
            raise ValueError('num_keypoints must be at least 1')
        if len(self.layers) != len(LAYERS):
            raise ValueError(f'layers needs {len(LAYERS)} entries ({", ".join(LAYER_NAMES)}), got {len(self.layers)}')
        if len(self.fps_points) != 2 or not self.fps_points[0] > self.fps_points[1] > 0:
            raise ValueError('fps_points must be two decreasing positive counts, e.g. (128, 32)')
        for name, spec in zip(LAYER_NAMES, self.layers):
            if spec.k < 0 or spec.stride < 1 or spec.rank < 1 or spec.out < 1 or spec.glob < 0:
                raise ValueError(f'{name}: bad layer {spec}')
        for key, allowed in (('neighbour_sampling', SAMPLING_MODES), ('train_neighbour_sampling', SAMPLING_MODES),
                             ('fps_start', FPS_STARTS), ('train_fps_start', FPS_STARTS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f'{key} must be one of {allowed}, got {getattr(self, key)!r}')

    @classmethod
    def tiny(cls, num_keypoints: int = 4, num_points: int = 256, **changes: Any) -> SPRINConfig:
        """The narrow test variant (:data:`TINY_LAYERS`, pools of 32 and 8 points)."""
        return cls(num_keypoints=num_keypoints, num_points=num_points, fps_points=(32, 8), layers=TINY_LAYERS,
                   head=(32, 32), **changes)

    def spec(self, name: str) -> ConvSpec:
        return self.layers[LAYER_NAMES.index(name)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        data = asdict(self)
        data['layers'] = [[s.k, s.stride, s.rank, s.out, list(s.hidden), s.glob] for s in self.layers]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SPRINConfig:
        """Inverse of :meth:`to_dict`. Unknown keys are an error (a newer file, or a typo)."""
        reject_unknown_fields(cls, data, 'SPRINConfig fields')
        return cls(**data)

    def replace(self, **changes: Any) -> SPRINConfig:
        return replace(self, **changes)


#: Fields that the weights depend on; a model file must agree with a requested config on these.
ARCHITECTURE_FIELDS = ('num_keypoints', 'fps_points', 'layers', 'head', 'chiral', 'up_cue')


# ----------------------------------------------------------------------------------------------------------
# geometry


def normalize_input(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """USEEK's ``pcd_normalization``: centre on the centroid, divide by the largest distance to it.

    ``points`` (B, N, 3) -> (normalised (B, N, 3), centre (B, 1, 3), radius (B, 1, 1)); ``points =
    normalised * radius + centre``. Equivariant to SE(3) and to uniform scaling, so the network after it is
    invariant to both (Key-Grid's min/max normalisation in front of it changes nothing).
    """
    centre = points.mean(dim=1, keepdim=True)
    centred = points - centre
    radius = centred.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)
    radius = torch.where(radius > 0, radius, torch.ones_like(radius))  # a single point (or copies of one)
    return centred / radius, centre, radius


def _cos(a: torch.Tensor, b: torch.Tensor, na: torch.Tensor, nb: torch.Tensor) -> torch.Tensor:
    """Cosine of the angle between ``a`` and ``b`` (..., 3) given their norms (..., 1); eps 1e-7 as released."""
    return (a * b).sum(-1, keepdim=True) / (na * nb + 1e-7)


def descriptor_width(chiral: bool = False, up_cue: bool = False) -> int:
    """Entries of :func:`pair_descriptor`: 8, +1 with ``chiral``, +3 with an ``up`` vector."""
    return 8 + int(chiral) + 3 * int(up_cue)


def pair_descriptor(neighbours: torch.Tensor, centres: torch.Tensor, chiral: bool = False,
                    up: torch.Tensor | None = None) -> torch.Tensor:
    """The 8-D rotation-invariant descriptor of each neighbour ``p_j`` of each centre ``p_i``.

    ``neighbours`` (B, Q, k, 3) (or (B, 1, k, 3) when every centre shares them), ``centres`` (B, Q, 3) ->
    (B, Q, k, 8) (9 with ``chiral``), with ``m`` the mean of the centre's neighbours and coordinates relative
    to the origin:
    angle(p_i, p_j) seen from the origin / pi, |p_j|, |m - p_j|, |p_j - p_i|, |p_i - m|, cos(m - p_j, p_j - p_i),
    cos(p_j - p_i, p_i - m), cos(p_i - m, m - p_j).

    The released code gets the first one through an Euler-angle frame at p_i; it is the angle between the
    two position vectors, computed here as ``atan2(|p_i x p_j|, p_i . p_j)``, which (unlike ``acos`` of a
    cosine near 1) keeps full precision for nearby directions and is 0, not NaN, at the origin.

    ``chiral`` appends det[p_j - p_i, m - p_i, p_i] / (|p_j - p_i| |m - p_i| |p_i| + 1e-7): which way the
    triangle (p_i, p_j, m) turns about the centre's direction from the origin. A rotation leaves it unchanged,
    a reflection flips its sign, so it is the one entry that tells a shape from its mirror image. On a flat
    sheet through the origin it is 0; the garment's relief (wrinkles, drape, folds) makes it informative.

    ``up`` (B, 3), the cloud's own up (:func:`~keygrid_ros.model.canonical.up_direction`, which rotates with the
    cloud), appends cos(p_j - p_i, up), the height p_j . up and det[p_j - p_i, m - p_i, up] / (|p_j - p_i|
    |m - p_i| + 1e-7). All three are rotation-invariant because ``up`` turns with the points; the last one
    flips under a half turn that swaps the sleeves (up flips with the relief), so it tells left from right.
    """
    dtype = torch.promote_types(neighbours.dtype, torch.float32)
    with torch.autocast(neighbours.device.type, enabled=False):
        pj = neighbours.to(dtype)
        pi = centres.to(dtype).unsqueeze(-2)  # (B, Q, 1, 3)
        m = pj.mean(dim=-2, keepdim=True)  # (B, Q or 1, 1, 3)
        l1, l2, l3 = m - pj, pj - pi, pi - m
        n1, n2, n3 = (v.norm(dim=-1, keepdim=True) for v in (l1, l2, l3))
        pi_b, pj_b = torch.broadcast_tensors(pi, pj)
        angle = torch.atan2(torch.linalg.cross(pi_b, pj_b).norm(dim=-1, keepdim=True),
                            (pi_b * pj_b).sum(-1, keepdim=True)) / math.pi
        shape = l2.shape[:-1] + (1,)
        parts = [angle, pj.norm(dim=-1, keepdim=True), n1, n2, n3,
                 _cos(l1, l2, n1, n2), _cos(l2, l3, n2, n3), _cos(l3, l1, n3, n1)]
        if chiral or up is not None:  # both reflection-odd entries are volumes spanned with this normal
            normal = torch.linalg.cross(*torch.broadcast_tensors(l2, -l3))  # (p_j - p_i) x (m - p_i)
        if chiral:
            volume = (normal * pi_b).sum(-1, keepdim=True)  # det[p_j - p_i, m - p_i, p_i]
            parts.append(volume / (n2 * n3 * pi.norm(dim=-1, keepdim=True) + 1e-7))
        if up is not None:
            u = up.to(dtype).view(up.shape[0], 1, 1, 3)
            parts += [(l2 * u).sum(-1, keepdim=True) / (n2 + 1e-7), (pj * u).sum(-1, keepdim=True),
                      (normal * u).sum(-1, keepdim=True) / (n2 * n3 + 1e-7)]
        return torch.cat([p.expand(shape) for p in parts], dim=-1)


def nearest_neighbours(src: torch.Tensor, dst: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, Q, min(k, S)) into ``src`` (B, S, 3) of the nearest points to each ``dst`` point, nearest first."""
    sqdist = ops.square_distance(dst, src)
    return sqdist.topk(min(k, src.shape[1]), dim=-1, largest=False, sorted=True).indices


def subsample_neighbours(idx: torch.Tensor, k: int, stride: int, mode: str = 'dilated',
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Of the ``k`` nearest (a prefix of ``idx`` (B, Q, >= k), nearest first), keep every ``stride``-th.

    ``'dilated'``: ranks 0, stride, 2 stride, ... (deterministic). ``'random'``: the released behaviour, a random
    subset of the same size (one permutation of the k slots, every stride-th kept), shared by the whole batch.
    Returns (B, Q, ceil(k' / stride)) with ``k' = min(k, idx.shape[-1])``.
    """
    k = min(k, idx.shape[-1])
    if stride == 1:
        return idx[..., :k]
    if mode == 'random':
        gen_device = generator.device if generator is not None else torch.device('cpu')
        slots = torch.randperm(k, generator=generator, device=gen_device)[::stride].to(idx.device)
    else:
        slots = torch.arange(0, k, stride, device=idx.device)
    return idx[..., slots]


def fps_pool(points: torch.Tensor, count: int, start: str = 'farthest',
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Farthest point sampling of ``count`` points (B, count, 3) from ``points`` (B, N, 3).

    ``start='farthest'`` begins at the point farthest from the origin (the centroid after
    :func:`normalize_input`): a rotation-invariant, order-independent choice. ``'random'`` begins at a random
    point per cloud, drawn from ``generator`` (the released behaviour).
    """
    first = (points * points).sum(-1).argmax(-1) if start == 'farthest' else None
    return ops.farthest_point_sample(points.detach(), count, start=first, generator=generator)[0]


# ----------------------------------------------------------------------------------------------------------
# layers


class SparseSO3Conv(nn.Module):
    """Low-rank continuous convolution over a neighbourhood, its kernel a function of the pair descriptor.

    Kernel MLP 8 -> hidden (Linear, LayerNorm, ReLU each) -> ``rank``; the neighbours' features are summed
    weighted by each of the ``rank`` kernel outputs (rank x C_in values), then Linear -> ``c_out`` and LayerNorm.
    """

    def __init__(self, rank: int, c_in: int, c_out: int, hidden: tuple[int, ...], chiral: bool = False,
                 up_cue: bool = False):
        super().__init__()
        self.chiral, self.up_cue = chiral, up_cue
        layers: list[nn.Module] = []
        width = descriptor_width(chiral, up_cue)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, rank))
        self.kernel = nn.Sequential(*layers)
        self.out = nn.Linear(rank * c_in, c_out)
        self.norm = nn.LayerNorm(c_out)

    def forward(self, neighbours: torch.Tensor, features: torch.Tensor, centres: torch.Tensor,
                up: torch.Tensor | None = None) -> torch.Tensor:
        """``neighbours`` (B, Q|1, k, 3), ``features`` (B, Q|1, k, C_in), ``centres`` (B, Q, 3) -> (B, Q, C_out).

        A size-1 second axis means every centre shares the same neighbours (the dense layers). ``up`` (B, 3) is
        required with ``up_cue`` and ignored without.
        """
        if self.up_cue and up is None:
            raise ValueError('this convolution was built with up_cue and needs the cloud\'s up vector')
        descriptor = pair_descriptor(neighbours, centres, self.chiral, up if self.up_cue else None)
        kernel = self.kernel(descriptor.to(features.dtype))  # (B, Q, k, rank)
        if features.shape[1] == 1:  # shared neighbours: one (k, C) matrix per cloud
            contracted = torch.einsum('bqkr,bkc->bqrc', kernel, features[:, 0])
        else:
            contracted = torch.einsum('bqkr,bqkc->bqrc', kernel, features)
        return self.norm(self.out(contracted.flatten(-2)))


class NeighbourhoodSO3Conv(nn.Module):
    """:class:`SparseSO3Conv` over the kNN neighbourhood (in the source level) of each query point.

    ``spec.k == 0`` makes it dense: every source point is a neighbour of every query (conv_31 / conv_32).
    """

    def __init__(self, spec: ConvSpec, c_in: int, chiral: bool = False, up_cue: bool = False):
        super().__init__()
        self.k, self.stride = spec.k, spec.stride
        self.conv = SparseSO3Conv(spec.rank, c_in, spec.out, spec.hidden, chiral, up_cue)

    def forward(self, src: torch.Tensor, features: torch.Tensor, dst: torch.Tensor, mode: str = 'dilated',
                generator: torch.Generator | None = None, nearest: torch.Tensor | None = None,
                up: torch.Tensor | None = None) -> torch.Tensor:
        """``src`` (B, S, 3) with ``features`` (B, S, C_in), queries ``dst`` (B, Q, 3) -> (B, Q, C_out).

        ``nearest`` (B, Q, >= k): the queries' nearest source points, nearest first, when already known (layers
        on the same pair of levels share one search). ``up`` (B, 3): see :class:`SparseSO3Conv`.
        """
        if self.k == 0:
            return self.conv(src.unsqueeze(1), features.unsqueeze(1), dst, up)
        if nearest is None:
            nearest = nearest_neighbours(src, dst, self.k)
        idx = subsample_neighbours(nearest, self.k, self.stride, mode, generator)  # (B, Q, k')
        return self.conv(ops.index_points(src, idx), ops.index_points(features, idx), dst, up)


class GlobalInfoProp(nn.Module):
    """Append a global feature: Linear C -> g, max over the points, broadcast: (B, N, C) -> (B, N, C + g)."""

    def __init__(self, c_in: int, width: int):
        super().__init__()
        self.linear = nn.Linear(c_in, width)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = self.linear(features).amax(dim=1, keepdim=True)
        return torch.cat([features, pooled.expand(*features.shape[:-1], pooled.shape[-1])], dim=-1)


class SPRINSeg(nn.Module):
    """Points (B, N, 3), centred (see :func:`normalize_input`) -> per-point logits (B, N, K).

    The released USEEK stack (section 7.2): two convolutions on the input points, FPS pool to
    ``fps_points[0]``, three convolutions there, FPS pool to ``fps_points[1]``, a strided convolution and two
    dense ones, back up by two "up-convolutions" (kNN from the coarser level) with convolutions after each, and
    a per-point MLP head. The initial feature is a constant 1 per point.
    """

    def __init__(self, config: SPRINConfig | None = None):
        super().__init__()
        self.config = config = config or SPRINConfig()
        self.convs = nn.ModuleDict()
        self.globs = nn.ModuleDict()
        channels = 1
        for name, spec in zip(LAYER_NAMES, config.layers):
            self.convs[name] = NeighbourhoodSO3Conv(spec, channels, config.chiral, config.up_cue)
            channels = spec.out
            if spec.glob:
                self.globs[name] = GlobalInfoProp(channels, spec.glob)
                channels += spec.glob
        head: list[nn.Module] = []
        for width in config.head:
            head += [nn.Conv1d(channels, width, 1), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            channels = width
        head.append(nn.Conv1d(channels, config.num_keypoints, 1))
        self.head = nn.Sequential(*head)

    def forward(self, points: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``points`` (B, N, 3) -> logits (B, N, K). ``generator`` draws the training-mode randomness."""
        cfg = self.config
        mode = cfg.train_neighbour_sampling if self.training else cfg.neighbour_sampling
        start = cfg.train_fps_start if self.training else cfg.fps_start
        xyz = points
        if xyz.shape[1] <= cfg.fps_points[0]:
            raise ValueError(f'SPRIN needs more than {cfg.fps_points[0]} points, got {xyz.shape[1]}')
        l2 = fps_pool(xyz, cfg.fps_points[0], start, generator)
        l3 = fps_pool(l2, cfg.fps_points[1], start, generator)
        levels = {1: xyz, 2: l2, 3: l3}
        # One neighbour search per pair of levels, as deep as the deepest layer on it needs.
        depth: dict[tuple[int, int], int] = {}
        for (_, src, dst), spec in zip(LAYERS, cfg.layers):
            if spec.k:
                depth[src, dst] = max(depth.get((src, dst), 0), spec.k)
        nearest = {pair: nearest_neighbours(levels[pair[0]], levels[pair[1]], k) for pair, k in depth.items()}
        up = canonical.up_direction(xyz) if cfg.up_cue else None  # (B, 3), turns with the cloud
        features = torch.ones_like(xyz[..., :1])
        for name, src, dst in LAYERS:
            features = self.convs[name](levels[src], features, levels[dst], mode, generator, nearest.get((src, dst)),
                                        up)
            if not name.startswith('upconv'):  # the released stack has no ReLU after the up-convolutions
                features = torch.relu(features)
            if name in self.globs:
                features = self.globs[name](features)
        return self.head(features.transpose(1, 2)).transpose(1, 2)


def keypoints_from_logits(points: torch.Tensor, logits: torch.Tensor, hard: bool = False,
                          temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """USEEK's "weight" mode: softmax over the points -> weights (B, K, N), keypoints = weights @ points (B, K, 3).

    ``hard``: each keypoint is the point of largest logit (the arg-max variant; weights become one-hot).
    ``temperature``: softmax of ``logits / temperature`` (1 as released). The logits are trained by a per-point
    BCE, not for a softmax over 2048 points: they span a few units, so at 1 a keypoint's weights spread over
    most of the cloud and the mean sinks towards the centroid; a lower temperature keeps the mean on the
    region the logits pick out.
    The keypoints are in ``points``' own coordinates (a weighted mean commutes with any affine map).
    """
    if not temperature > 0:
        raise ValueError(f'temperature must be positive, got {temperature}')
    dtype = torch.promote_types(logits.dtype, torch.float32)  # a softmax over thousands of points: not in bf16
    weights = torch.softmax(logits.to(dtype).transpose(1, 2) / temperature, dim=-1)
    if hard:
        weights = torch.nn.functional.one_hot(weights.argmax(-1), weights.shape[-1]).to(weights.dtype)
    return weights @ points.to(weights.dtype), weights
