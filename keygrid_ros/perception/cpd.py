"""Non-rigid Coherent Point Drift (Myronenko & Song, TPAMI 2010): move a set of nodes onto a point cloud.

Why: cloth is inextensible but bends anywhere, and most of a garment is flat. Registering a small patch around a
keypoint rigidly cannot tell a flat patch sliding along the cloth from one standing still (the aperture
problem), so such a track drifts. CPD moves *all* nodes of the garment at once under one smooth displacement
field, so the parts whose shape pins them down (edges, a lifted flap, the crease) carry the flat cloth between
them. It is the registration step of deformable-object trackers such as CDCPD (Chi & Berenson, 2019).

The nodes ``Y`` (M, 3) are the Gaussian mixture's centroids, the cloud ``X`` (N, 3) its samples. The nodes move
by ``v = G W`` with ``G_ij = exp(-|y_i - y_j|² / 2β²)``; EM alternates

- E: ``P_mn = exp(-|x_n - y_m - v_m|² / 2σ²) / (Σ_k exp(-|x_n - y_k - v_k|² / 2σ²) + c)``, ``c`` the uniform
  outlier term of weight ``w``;
- M: ``(G + λσ² d(P1)⁻¹) W = d(P1)⁻¹ P X - Y`` and ``σ²`` from the weighted residuals.

Speed: a tracker starts from last frame's nodes, so σ is a few millimetres to centimetres and a node's weight on
points beyond 3σ is below 1 %; the E-step therefore visits only the point pairs within 3σ (one dual-tree search
per iteration, nodes against points) instead of all M × N. The M-step would be an M × M solve per iteration;
with ``G`` replaced by its Nyström factor ``U Uᵀ`` over the first ``landmarks`` nodes (the nodes come in
farthest-point order, so these are spread over the garment) the Woodbury identity makes it an L × L solve, and
the field ``v = U Uᵀ W`` is a sum of L smooth bumps, as in the low-rank CPD of the paper (section 6.2).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.spatial import cKDTree

#: Pairs farther apart than this many σ are left out of the E-step (their weight is below exp(-4.5) ≈ 1 %).
CUTOFF_SIGMAS = 3.0
#: σ never falls below this (metres): the EM would otherwise sharpen onto single samples of a noisy cloud.
MIN_SIGMA = 1e-3


class CPDResult(NamedTuple):
    nodes: np.ndarray  # (M, 3) the moved nodes
    sigma: float  # final mixture width (metres): the registration's residual scale
    matched: np.ndarray  # (M,) P1, how much of the cloud each node explains (about 0 for nodes seeing no point)


def coherent_point_drift(nodes: np.ndarray, points: np.ndarray, smoothness: float = 0.08, regularisation: float = 2.0,
                         outlier_weight: float = 0.1, iterations: int = 30, sigma: float = 0.02,
                         tree: cKDTree | None = None, landmarks: int = 128) -> CPDResult:
    """Move ``nodes`` (M, 3) onto ``points`` (N, 3) by non-rigid CPD.

    Args:
        smoothness: β, the displacement field's correlation length (metres): nodes closer than this move
            nearly together.
        regularisation: λ, how strongly the field is kept smooth against the data.
        outlier_weight: w in [0, 1), the share of points explained by no node (depth noise, a gripper).
        iterations: EM steps.
        sigma: the first mixture width (metres), about how far the cloth moved since the nodes were placed.
        tree: a k-d tree of ``points``, if the caller has one.
        landmarks: L, the nodes (the first L) spanning the low-rank kernel; L >= M gives exact CPD.

    Returns:
        :class:`CPDResult`. Permuting ``points`` does not change it (up to rounding).
    """
    nodes = np.asarray(nodes, np.float64)
    points = np.asarray(points, np.float64)
    if nodes.ndim != 2 or nodes.shape[1] != 3 or len(nodes) == 0:
        raise ValueError(f'nodes must be (M > 0, 3), got shape {nodes.shape}')
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f'points must be (N > 0, 3), got shape {points.shape}')
    if not 0.0 <= outlier_weight < 1.0:
        raise ValueError(f'outlier_weight must be in [0, 1), got {outlier_weight}')
    tree = tree if tree is not None else cKDTree(points)
    M, N = len(nodes), len(points)
    factor = kernel_factor(nodes, nodes[:max(1, min(landmarks, M))], smoothness)  # (M, L') U, G ≈ U Uᵀ
    moved, sigma2 = nodes.copy(), max(sigma, MIN_SIGMA) ** 2
    matched = np.zeros(M)
    for _ in range(iterations):
        # E-step over the pairs within the cutoff: pair p joins node node_of[p] and point point_of[p]. A dual
        # tree search returns them as arrays (a ball query per node returns Python lists, 3x slower here).
        pairs = cKDTree(moved).sparse_distance_matrix(tree, CUTOFF_SIGMAS * np.sqrt(sigma2), output_type='ndarray')
        if len(pairs) == 0:
            return CPDResult(moved, float('inf'), np.zeros(M))  # nothing near any node: the cloth is elsewhere
        node_of, point_of = pairs['i'].astype(np.int64), pairs['j'].astype(np.int64)
        weight = np.exp(-pairs['v'] ** 2 / (2 * sigma2))  # (P,)
        outlier = (2 * np.pi * sigma2) ** 1.5 * outlier_weight / (1 - outlier_weight) * M / N
        weight /= np.bincount(point_of, weight, N)[point_of] + outlier
        matched = np.bincount(node_of, weight, M)  # (M,) P1
        explained = np.bincount(point_of, weight, N)  # (N,) Pᵀ1
        pulled = np.stack([np.bincount(node_of, weight * points[point_of, d], M) for d in range(3)], 1)  # (M, 3) PX
        total = matched.sum()
        if total <= 1e-12:
            return CPDResult(moved, float('inf'), matched)
        # M-step, symmetric form: (U Uᵀ + C) W = d(P1)⁻¹ PX - Y with C = λσ² d(P1)⁻¹, by Woodbury:
        # W = C⁻¹R - C⁻¹U (I + Uᵀ C⁻¹ U)⁻¹ Uᵀ C⁻¹R. A node that sees no point has C⁻¹ = 0: no pull of its own,
        # it moves only with its neighbours.
        inverse = matched / (regularisation * sigma2)  # (M,) C⁻¹
        scaled = inverse[:, None] * (pulled / np.maximum(matched, 1e-12)[:, None] - nodes)  # C⁻¹ R
        scaled[matched <= 1e-12] = 0.0
        inner = np.eye(factor.shape[1]) + factor.T @ (inverse[:, None] * factor)
        coefficients = scaled - inverse[:, None] * (factor @ cho_solve(cho_factor(inner), factor.T @ scaled))
        moved = nodes + factor @ (factor.T @ coefficients)
        sigma2 = (explained @ (points * points).sum(1) - 2 * (pulled * moved).sum()
                  + matched @ (moved * moved).sum(1)) / (3 * total)
        sigma2 = max(sigma2, MIN_SIGMA ** 2)
    return CPDResult(moved, float(np.sqrt(sigma2)), matched)


def kernel_factor(nodes: np.ndarray, landmarks: np.ndarray, smoothness: float) -> np.ndarray:
    """(M, L') ``U`` with ``U Uᵀ`` the Nyström approximation of the Gaussian kernel matrix of ``nodes`` (M, 3)
    through ``landmarks`` (L, 3); directions the landmarks' own kernel cannot tell apart (eigenvalues below
    1e-9 of the largest) are dropped, so L' <= L. Exact (``U Uᵀ = G``) when the landmarks are all the nodes."""
    def gaussian(a, b):
        return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * smoothness ** 2))
    values, vectors = np.linalg.eigh(gaussian(landmarks, landmarks))
    keep = values > 1e-9 * values.max()
    return gaussian(nodes, landmarks) @ (vectors[:, keep] / np.sqrt(values[keep]))
