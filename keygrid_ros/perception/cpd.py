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

Balance (``balance`` > 0). Plain CPD lets a node explain as much or as little of the cloud as lies near it. When
cloth slides along itself into a part the nodes do not follow (the flat part of a garment drawn up into a lifted
flap), the nodes left behind crowd the flat part while the few on the flap spread thin, and the mixture fits both
nearly as well as the right answer: nothing moves them (the aperture problem again, at the garment's scale). But
cloth does not stretch and the cloud samples it evenly, so each node's share of the cloud should stay about the
same. The E-step therefore weighs node m by a factor ``u_m``, ``P_mn ∝ u_m exp(-|x_n - y_m - v_m|² / 2σ²)``, and
after each E-step moves ``u`` towards equal shares, ``u_m <- u_m (P1_mean / P1_m)^balance`` with the log ratio
averaged over the kernel's width (only imbalance at the scale of β counts, not a node that happens to have a
sample fewer): a relaxed Sinkhorn step of an optimal-transport assignment (``BALANCE_STEPS`` per EM step).
Crowded nodes then take the thinly covered cloud next to them and move into it. Nodes with no point within the
cutoff keep their factor and are left out of the shares (a hidden layer, cloth out of view).

Kernel over the cloth (``anchors``). The displacement field couples two nodes by their distance now; where a
fold lays a flap on the cloth under it, the two layers are near and the flap drags the cloth under it along. Given
where the nodes were when they were placed on the cloth (``anchors``), the kernel is a Gaussian over both
distances, ``exp(-(|y_i - y_j|² + |a_i - a_j|²) / 4β²)`` (a product of two Gaussian kernels, so still a kernel;
the same as the plain one where the two distances agree):
nodes near each other on the cloth and in space move together, stacked layers that were apart on the cloth
do not. It is also what couples the flat cloth to the flap it is drawn into.

Cloth the camera cannot see (``visibility``, CDCPD's visibility prior). A node with visibility 0 (the cloth under
a fold, seen from one camera) takes no share of any point; it holds its place as firmly as a typical seen node
holds its points, and moves only as its neighbours drag it (``keygrid_ros.perception.cloth_prior``).

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
#: Balance: updates of the node factors u per EM step, and the most any factor may weigh a node up or down.
BALANCE_STEPS = 3
MAX_FACTOR = 1e3


class CPDResult(NamedTuple):
    nodes: np.ndarray  # (M, 3) the moved nodes
    sigma: float  # final mixture width (metres): the registration's residual scale
    matched: np.ndarray  # (M,) P1, how much of the cloud each node explains (about 0 for nodes seeing no point)


def coherent_point_drift(nodes: np.ndarray, points: np.ndarray, smoothness: float = 0.08, regularisation: float = 2.0,
                         outlier_weight: float = 0.1, iterations: int = 30, sigma: float = 0.02,
                         tree: cKDTree | None = None, landmarks: int = 128, balance: float = 0.0,
                         anchors: np.ndarray | None = None, visibility: np.ndarray | None = None) -> CPDResult:
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
        balance: how strongly each node is made to keep an equal share of the cloud (0 = plain CPD; 1 = each
            update removes the whole imbalance it sees), for cloth that slides along itself (module docstring).
        anchors: (M, 3) where the nodes were when placed on the cloth, or None: the kernel then couples nodes by
            their distance on the cloth as well as in space (module docstring); None = by space alone.
        visibility: (M,) in [0, 1], each node's weight in the mixture: 0 for a node the camera cannot see (the
            cloth under a fold), which then explains no point and moves only with its neighbours and is left out
            of the balance (``keygrid_ros.perception.cloth_prior.node_visibility``); None = all seen.

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
    if not 0.0 <= balance <= 10.0:
        raise ValueError(f'balance must be in [0, 10], got {balance}')
    if anchors is not None and np.shape(anchors) != nodes.shape:
        raise ValueError(f'anchors must be (M, 3) like the nodes {nodes.shape}, got shape {np.shape(anchors)}')
    if visibility is not None and np.shape(visibility) != (len(nodes),):
        raise ValueError(f'visibility must be (M,) = ({len(nodes)},), got shape {np.shape(visibility)}')
    tree = tree if tree is not None else cKDTree(points)
    M, N = len(nodes), len(points)
    prior = np.ones(M) if visibility is None else np.clip(np.asarray(visibility, np.float64), 0.0, 1.0)
    visible = prior > 0.5  # (M,) the nodes the camera sees
    # With anchors, both distances are scaled by 1/√2: nodes whose distance on the cloth is their distance in
    # space (flat or bent, not folded onto each other) are then coupled exactly as by the plain kernel.
    coupled = nodes if anchors is None else np.hstack([nodes, np.asarray(anchors, np.float64)]) / np.sqrt(2)
    factor = kernel_factor(coupled, coupled[:max(1, min(landmarks, M))], smoothness)  # (M, L') U, G ≈ U Uᵀ
    moved, sigma2 = nodes.copy(), max(sigma, MIN_SIGMA) ** 2
    matched, factors = np.zeros(M), np.ones(M)  # (M,) P1 and the balance's node factors u
    for _ in range(iterations):
        # E-step over the pairs within the cutoff: pair p joins node node_of[p] and point point_of[p]. A dual
        # tree search returns them as arrays (a ball query per node returns Python lists, 3x slower here).
        pairs = cKDTree(moved).sparse_distance_matrix(tree, CUTOFF_SIGMAS * np.sqrt(sigma2), output_type='ndarray')
        if len(pairs) == 0:
            return CPDResult(moved, float('inf'), np.zeros(M))  # nothing near any node: the cloth is elsewhere
        node_of, point_of = pairs['i'].astype(np.int64), pairs['j'].astype(np.int64)
        kernel = np.exp(-pairs['v'] ** 2 / (2 * sigma2)) * prior[node_of]  # (P,)
        outlier = (2 * np.pi * sigma2) ** 1.5 * outlier_weight / (1 - outlier_weight) * M / N
        if balance > 0:
            # Which nodes take part in the shares, and the kernel's mass around each: fixed within the EM step.
            # A hidden node sees no point however near: its share is not the balance's to even out.
            seen = (np.bincount(node_of, minlength=M) > 0) & visible  # (M,)
            mass = factor @ (factor.T @ seen.astype(np.float64))  # (M,) G 1 over the seen nodes
            for _ in range(BALANCE_STEPS):
                matched = responsibilities(kernel * factors[node_of], node_of, point_of, outlier, M, N)[1]
                factors = rebalanced(factors, matched, seen, mass, factor, balance)
        weight, matched = responsibilities(kernel * factors[node_of], node_of, point_of, outlier, M, N)  # P, P1
        explained = np.bincount(point_of, weight, N)  # (N,) Pᵀ1
        pulled = np.stack([np.bincount(node_of, weight * points[point_of, d], M) for d in range(3)], 1)  # (M, 3) PX
        total = matched.sum()
        if total <= 1e-12:
            return CPDResult(moved, float('inf'), matched)
        # A hidden node observes itself where it was, as firmly as a typical seen node observes the cloud: the
        # field fitted to the seen nodes alone would otherwise extrapolate into the hidden cloth and throw it
        # anywhere (cloth under a fold thrown a metre). Neighbours still drag it, as cloth does.
        hold = (1.0 - prior) * (matched[visible].mean() if visible.any() else 0.0)  # (M,)
        fit_matched, fit_pulled = matched + hold, pulled + hold[:, None] * nodes
        # M-step, symmetric form: (U Uᵀ + C) W = d(P1)⁻¹ PX - Y with C = λσ² d(P1)⁻¹, by Woodbury:
        # W = C⁻¹R - C⁻¹U (I + Uᵀ C⁻¹ U)⁻¹ Uᵀ C⁻¹R. A node that sees no point has C⁻¹ = 0: no pull of its own,
        # it moves only with its neighbours.
        inverse = fit_matched / (regularisation * sigma2)  # (M,) C⁻¹
        scaled = inverse[:, None] * (fit_pulled / np.maximum(fit_matched, 1e-12)[:, None] - nodes)  # C⁻¹ R
        scaled[fit_matched <= 1e-12] = 0.0
        inner = np.eye(factor.shape[1]) + factor.T @ (inverse[:, None] * factor)
        coefficients = scaled - inverse[:, None] * (factor @ cho_solve(cho_factor(inner), factor.T @ scaled))
        moved = nodes + factor @ (factor.T @ coefficients)
        sigma2 = (explained @ (points * points).sum(1) - 2 * (pulled * moved).sum()
                  + matched @ (moved * moved).sum(1)) / (3 * total)
        sigma2 = max(sigma2, MIN_SIGMA ** 2)
    return CPDResult(moved, float(np.sqrt(sigma2)), matched)


def responsibilities(weight: np.ndarray, node_of: np.ndarray, point_of: np.ndarray, outlier: float, M: int, N: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The E-step on pairs: ``weight`` (P,) each pair's (weighted) kernel value, normalised over the nodes of its
    point plus the outlier term, in place; returns it and P1 (M,), how much of the cloud each node explains."""
    weight /= np.bincount(point_of, weight, N)[point_of] + outlier
    return weight, np.bincount(node_of, weight, M)


def rebalanced(factors: np.ndarray, matched: np.ndarray, seen: np.ndarray, mass: np.ndarray, factor: np.ndarray,
               balance: float) -> np.ndarray:
    """(M,) node factors ``u`` moved towards equal shares of the cloud: ``u <- u (mean P1 / P1)^balance`` over
    the ``seen`` nodes (M,) bool (those with points within the cutoff), the log ratio averaged with the kernel
    ``factor`` (M, L) (``U``, ``G ≈ U Uᵀ``) over the nodes around each one (``mass`` (M,): ``U Uᵀ seen``, the
    average's weights); geometric mean 1 over the seen nodes, within ``MAX_FACTOR``."""
    if not seen.any() or matched[seen].sum() <= 0:
        return factors
    log_ratio = np.zeros(len(factors))
    log_ratio[seen] = np.log(matched[seen].mean() / np.maximum(matched[seen], 1e-12))
    smoothed = factor @ (factor.T @ log_ratio) / np.maximum(mass, 1e-12)
    log_factors = np.log(factors)
    log_factors[seen] += balance * smoothed[seen]
    log_factors[seen] -= log_factors[seen].mean()
    return np.exp(np.clip(log_factors, -np.log(MAX_FACTOR), np.log(MAX_FACTOR)))


def kernel_factor(nodes: np.ndarray, landmarks: np.ndarray, smoothness: float) -> np.ndarray:
    """(M, L') ``U`` with ``U Uᵀ`` the Nyström approximation of the Gaussian kernel matrix of ``nodes`` (M, D)
    through ``landmarks`` (L, D) (D = 3, or 6 for positions next to anchors); directions the landmarks' own
    kernel cannot tell apart (eigenvalues below 1e-9 of the largest) are dropped, so L' <= L. Exact
    (``U Uᵀ = G``) when the landmarks are all the nodes."""
    def gaussian(a, b):
        return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * smoothness ** 2))
    values, vectors = np.linalg.eigh(gaussian(landmarks, landmarks))
    keep = values > 1e-9 * values.max()
    return gaussian(nodes, landmarks) @ (vectors[:, keep] / np.sqrt(values[keep]))
