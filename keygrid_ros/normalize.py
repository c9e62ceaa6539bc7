"""Key-Grid's input normalisation and its exact inverse.

The released code normalises each cloud with one *scalar* minimum and range over all three axes,
``x' = 2 (x - lo) / (hi - lo) - 1`` with ``lo = min(X)``, ``hi = max(X)`` taken over every coordinate.
This keeps the aspect ratio, puts the cloud inside [-1, 1]^3 (touching -1 and 1 on some axis) and only
roughly centres it. The model's grid heatmap lives in that cube, so every path into the model (the
node's preprocessing, the datasets, evaluation) must use this one function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Normalization:
    """``normalised = (points - offset) * scale - 1``, with scalar ``offset`` and ``scale``.

    ``offset`` is the cloud's scalar minimum and ``scale = 2 / (max - min)``.
    """

    offset: float
    scale: float

    @classmethod
    def fit(cls, points: np.ndarray) -> Normalization:
        """Fit to ``points`` (..., 3). A degenerate cloud (all coordinates equal) gets scale 1."""
        lo = float(np.min(points))
        hi = float(np.max(points))
        extent = hi - lo
        return cls(offset=lo, scale=2.0 / extent if extent > 0 else 1.0)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Original units (..., 3) -> normalised [-1, 1] units, same dtype."""
        return ((points - self.offset) * self.scale - 1.0).astype(points.dtype, copy=False)

    def invert(self, points: np.ndarray) -> np.ndarray:
        """Normalised units (..., 3) -> original units, same dtype."""
        return ((points + 1.0) / self.scale + self.offset).astype(points.dtype, copy=False)

    def invert_length(self, length: float | np.ndarray) -> float | np.ndarray:
        """A distance in normalised units -> the same distance in original units."""
        return length / self.scale


def normalize(points: np.ndarray) -> tuple[np.ndarray, Normalization]:
    """Normalise ``points`` (N, 3) (or (T, N, 3) per frame: fit each frame separately).

    Returns the normalised array and the :class:`Normalization` (a list of them for (T, N, 3)).
    """
    if points.ndim == 2:
        norm = Normalization.fit(points)
        return norm.apply(points), norm
    if points.ndim == 3:
        norms = [Normalization.fit(frame) for frame in points]
        return np.stack([n.apply(f) for n, f in zip(norms, points)]), norms
    raise ValueError(f'expected (N, 3) or (T, N, 3) points, got shape {points.shape}')


def fit_batch(points):
    """The same rule for a batch of torch clouds ``points`` (B, N, 3), per cloud: ``(offset, scale)``, each
    (B, 1, 1), with ``normalised = (points - offset) * scale - 1`` and ``points = (normalised + 1) / scale +
    offset``. For paths that normalise inside a batched model call (``KeypointModel(canonicalize=...)``)."""
    offset = points.amin(dim=(1, 2), keepdim=True)
    extent = points.amax(dim=(1, 2), keepdim=True) - offset
    return offset, (2.0 / extent).where(extent > 0, extent.new_ones(()))  # degenerate: scale 1, as fit
