"""Every number that shapes Key-Grid, in one frozen dataclass.

Defaults are the released code's (``reference/keygrid_method.md``): K=8 keypoints on 2048 points, a
16x16x8 grid, sigma^2 = 0.0025, F = 12 farthest-point targets, similarity loss after a 21-epoch warm-up.
The paper's variants are one field away (``grid_resolution=(16, 16, 16)``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# Per set-abstraction level: centroids, two radii, two neighbourhood sizes, two MLP branches (released widths).
SA_NPOINTS = (1024, 256, 64, 16)
SA_RADII = ((0.05, 0.1), (0.1, 0.2), (0.2, 0.4), (0.4, 0.8))
SA_NSAMPLES = ((16, 32), (16, 32), (16, 32), (16, 32))
SA_MLPS = (
    ((16, 16, 32), (32, 32, 64)),
    ((64, 64, 128), (64, 96, 128)),
    ((128, 196, 256), (128, 196, 256)),
    ((256, 256, 512), (256, 384, 512)),
)



def reject_unknown_fields(cls: type, data: dict[str, Any], what: str) -> None:
    """Raise ValueError naming the keys of ``data`` that are not fields of the dataclass ``cls`` (a newer
    file, or a typo in a config), with the known ones listed."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f'unknown {what}: {", ".join(unknown)} (known: {", ".join(sorted(known))})')

@dataclass(frozen=True)
class KeyGridConfig:
    """Architecture, sampling, loss and ablation settings.

    Sampling: with ``fps_prefix`` the input must already be in farthest-point order (the node's
    preprocessing and FPS-ordered datasets deliver that) and every level of the hierarchy is a prefix of
    it. Without it the model orders the input itself by FPS, starting at the point farthest from the
    centroid (a permutation-invariant choice), or at a random point per cloud in training when
    ``random_fps_start`` (the released code's stochasticity).
    """

    # --- architecture (what the weights and the outputs depend on) ---
    num_keypoints: int = 8
    num_points: int = 2048  # what the model was trained on; any N works at run time
    sa_npoints: tuple[int, ...] = SA_NPOINTS
    sa_radii: tuple[tuple[float, float], ...] = SA_RADII
    sa_nsamples: tuple[tuple[int, int], ...] = SA_NSAMPLES
    sa_mlps: tuple[tuple[tuple[int, ...], ...], ...] = SA_MLPS
    grouping: str = 'ball'  # 'ball' (released: smallest indices within the radius) or 'knn'
    head_dropout: float = 0.5
    grid_resolution: tuple[int, int, int] = (16, 16, 8)  # the paper says 16^3
    sigma2: float = 0.0025
    use_decoder: bool = True  # False: encoder only (what the node runs; no similarity loss possible)
    use_encoder_info: bool = True  # Table 5 "no encoder information": decoder without skip features
    use_grid_heatmap: bool = True  # Table 5 "no grid heatmap": decoder without the grid feature

    # --- sampling and inference ---
    fps_prefix: bool = True
    random_fps_start: bool = False
    hard_keypoints: bool = True  # at inference: snap each keypoint to its highest-weight input point

    # --- losses and training ---
    num_fps_targets: int = 12  # F; the paper uses K + 4 (12 for K=8, 14 for K=10)
    lambda_fps: float = 1.0
    lambda_sim: float = 1.0
    warmup_epochs: int = 21  # released: similarity loss when epoch > 20 (0-indexed)
    use_similarity_loss: bool = True  # Table 5 "no similarity loss"
    use_fps_loss: bool = True  # Table 5 "no farthest-point loss"

    def __post_init__(self) -> None:
        if self.num_keypoints < 2:
            raise ValueError('num_keypoints must be at least 2 (segments join pairs of keypoints)')
        if self.grouping not in ('ball', 'knn'):
            raise ValueError(f"grouping must be 'ball' or 'knn', got {self.grouping!r}")
        if len({len(self.sa_npoints), len(self.sa_radii), len(self.sa_nsamples), len(self.sa_mlps)}) != 1:
            raise ValueError('sa_npoints, sa_radii, sa_nsamples and sa_mlps must have one entry per level')
        if len(self.sa_npoints) != 4:
            raise ValueError('the encoder and decoder are built for 4 set-abstraction levels')
        if any(a >= b for a, b in zip(self.sa_npoints[1:], self.sa_npoints)):
            raise ValueError('sa_npoints must decrease from level to level')
        if len(self.grid_resolution) != 3 or min(self.grid_resolution) < 2:
            raise ValueError('grid_resolution needs three sizes of at least 2')
        if self.sigma2 <= 0:
            raise ValueError('sigma2 must be positive')
        if self.use_decoder and not (self.use_encoder_info or self.use_grid_heatmap):
            raise ValueError('the decoder needs use_encoder_info, use_grid_heatmap, or both')

    @property
    def num_segments(self) -> int:
        """K(K-1)/2 keypoint pairs."""
        return self.num_keypoints * (self.num_keypoints - 1) // 2

    @property
    def num_grid_points(self) -> int:
        x, y, z = self.grid_resolution
        return x * y * z

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyGridConfig:
        """Inverse of :meth:`to_dict`. Unknown keys are an error (a newer file, or a typo)."""
        reject_unknown_fields(cls, data, 'KeyGridConfig fields')
        return cls(**{key: _tuplify(value) for key, value in data.items()})

    def replace(self, **changes: Any) -> KeyGridConfig:
        return replace(self, **changes)


#: Fields that change the weights' shapes or what the model computes from them. A model file must agree with
#: the requested config on these; the rest (sampling, inference and training knobs) may be overridden.
#: ``use_decoder`` is separate: an encoder-only model may be loaded from a full model file, not the reverse.
ARCHITECTURE_FIELDS = (
    'num_keypoints', 'num_points', 'sa_npoints', 'sa_radii', 'sa_nsamples', 'sa_mlps',
    'grouping', 'grid_resolution', 'sigma2', 'use_encoder_info', 'use_grid_heatmap',
)


def _tuplify(value: Any) -> Any:
    """JSON lists back to the tuples the dataclass uses (recursively)."""
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value
