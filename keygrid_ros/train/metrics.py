"""Keypoint-consistency metrics on unannotated deformation sequences: DAS (two protocols) and mIoU.

Pure numpy; every function takes the keypoints of one sequence, ``(T, K, 3)`` (T frames, K keypoints).
Scores are percentages in [0, 100]. The definitions follow ``reference/keygrid_method.md`` section 6:

**Protocol A, reference-frame DAS** (SC3K ``metrics.py::DAS_unsupervised``). The keypoints of frame 0 are
the reference R (K, 3). For every other frame t and every reference keypoint i, find the nearest (Euclidean)
keypoint of frame t; it is a positive when its index is i. ``DAS_A = 100 * positives / ((T - 1) * K)``.
Frame 0 is never compared with itself. SC3K compares keypoints in each sample's own normalised frame, so the
evaluator passes keypoints in each frame's normalised coordinates.

**Protocol B, correspondence DAS** (Skeleton Merger ``eval_keypointnet.py``, section 6.1). Ground truth:
M vertices picked by farthest point sampling on frame 0 (:func:`fps_vertex_indices`) and tracked through
the sequence by vertex index (the simulated mesh keeps its topology); ground-truth keypoint m has semantic
id m. With instances = frames:

- forward: for frame n and predicted keypoint k, ``a_n[k]`` = the id of the nearest ground-truth keypoint
  (squared L2). ``forward = mean over all ordered frame pairs (n, m), n == m included, of
  mean_k [a_n[k] == a_m[k]]``;
- backward: for frame n and ground-truth id s, ``b_s[n]`` = the index of the nearest predicted keypoint.
  ``score_s = mean over all ordered pairs (n, m), self included, of [b_s[n] == b_s[m]]``;
  ``backward = mean over s of score_s``;
- ``DAS_B = 100 * (forward + backward) / 2``.

Pair agreement with self-pairs included has a closed form: if ``p_k(s)`` is the fraction of frames where
keypoint k maps to id s, the mean over ordered pairs of ``[a_n[k] == a_m[k]]`` is ``sum_s p_k(s)^2``. So both
scores cost O(T K) after the nearest-neighbour search, instead of O(T^2 K). With random labels the
expected score is not 1/M but ``1/M + (1 - 1/M) / T`` (the self-pairs always agree).

**mIoU at threshold 0.1** (section 6.2): each predicted keypoint is snapped to its nearest point of the
cloud (when a cloud is given); over a whole set of frames, ``npos`` = number of ground-truth points,
``FN`` = ground-truth points with no prediction within the threshold (distance <= threshold), ``FP`` =
predictions with no ground-truth point within it; ``mIoU = 100 * (npos - FN) / (npos + FP)``. Distances are
in whatever units the caller passes; the released protocol uses the original (un-normalised) coordinates.

**Coverage** (a diagnostic): per frame, the number of distinct ground-truth ids the keypoints are nearest to,
over M, averaged over frames. Collapsed keypoints (all on one spot) score DAS (B) high and coverage 1/M.

**Side consistency** (a diagnostic, not in the literature): on a garment whose landmarks come in left/right
pairs (``*_l`` / ``*_r``), each mesh vertex gets a signed lateral coordinate from its rest pose (frame 0);
a keypoint is *lateral* in a frame when its nearest vertex lies off the central band (``|lateral| >
band x garment width``). ``lateral_fraction`` = share of keypoint-frames that are lateral; ``side_consistency``
= for keypoints lateral in at least a quarter of the frames, the share of those frames on their majority side,
averaged. A consistent detector scores 1; one that cannot tell left from right (a reflection-invariant
network on a symmetric garment) either keeps its keypoints on the centre line (low lateral fraction) or
lands on either side by chance (about 0.5-0.7).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Distance threshold of the mIoU (released default ``--miou 0.1``).
MIOU_THRESHOLD = 0.1


def _as_sequence(keypoints: np.ndarray, name: str = 'keypoints') -> np.ndarray:
    """Check a ``(T, K, 3)`` array and return it as float64."""
    array = np.asarray(keypoints, dtype=np.float64)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f'{name} must have shape (T, K, 3), got {array.shape}')
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f'{name} needs at least one frame and one point, got {array.shape}')
    return array


def _as_labels(labels: np.ndarray) -> np.ndarray:
    """Check per-frame labels ``(T, C)`` with at least one frame (the forward ids of protocol B)."""
    array = np.asarray(labels)
    if array.ndim != 2 or array.shape[0] < 1:
        raise ValueError(f'labels must have shape (T, C) with T >= 1, got {array.shape}')
    return array


def nearest_index(queries: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each query the index of its nearest target: ``(T, P, 3)`` x ``(T, Q, 3)`` -> ``(T, P)`` int64.

    Per frame; ties go to the lowest target index (``argmin``), as in the reference implementations.
    """
    sqdist = ((queries[:, :, None, :] - targets[:, None, :, :]) ** 2).sum(-1)  # (T, P, Q)
    return sqdist.argmin(-1)


def pair_agreement(labels: np.ndarray, num_labels: int) -> np.ndarray:
    """Mean agreement over all ordered pairs of rows (self-pairs included), per column.

    ``labels`` (T, C) integers in ``[0, num_labels)`` -> (C,): for column c, the mean over (n, m) in
    T x T of ``[labels[n, c] == labels[m, c]]``, computed as ``sum_s p_c(s)^2``.
    """
    T, C = labels.shape
    counts = np.zeros((C, num_labels), dtype=np.float64)
    np.add.at(counts, (np.broadcast_to(np.arange(C), (T, C)), labels), 1.0)
    return ((counts / T) ** 2).sum(-1)


def coverage(labels: np.ndarray, num_labels: int) -> float:
    """Share of the ground-truth ids the keypoints are nearest to, per frame, averaged: ``labels`` (T, K)
    forward labels in ``[0, num_labels)`` -> [0, 1].

    Protocol B cannot see a collapse: K keypoints piled on one spot keep one nearest ground-truth id each,
    frame after frame, and score high. Coverage can: such keypoints reach 1 of M ids, spread ones up to
    ``min(K, M) / M``. Read every DAS (B) next to it.
    """
    distinct = [len(np.unique(row)) for row in _as_labels(labels)]
    return float(np.mean(distinct)) / num_labels


def label_runs(labels: np.ndarray) -> list[list[tuple[int, int, int]]]:
    """Runs of equal labels down each column: ``labels`` (T, C) -> per column ``[(label, first row, last row), ...]``.

    Applied to the forward labels of protocol B (each keypoint's nearest ground-truth id per frame) it is the
    keypoint's timeline: a consistent keypoint has one run, and every extra run is a switch to another spot.
    """
    runs = []
    for column in _as_labels(labels).T:
        change = np.flatnonzero(column[1:] != column[:-1]) + 1  # first row of every run but the first
        firsts = np.concatenate([[0], change])
        lasts = np.concatenate([change - 1, [len(column) - 1]])
        runs.append([(int(column[first]), int(first), int(last)) for first, last in zip(firsts, lasts)])
    return runs


def das_reference_frame(keypoints: np.ndarray) -> float:
    """Protocol A (SC3K): ``keypoints`` (T, K, 3) -> DAS in [0, 100]. Needs T >= 2.

    Positives: reference keypoint i of frame 0 whose nearest keypoint in frame t > 0 has index i.
    """
    kp = _as_sequence(keypoints)
    T, K, _ = kp.shape
    if T < 2:
        raise ValueError('reference-frame DAS needs at least two frames')
    reference = np.broadcast_to(kp[:1], (T - 1, K, 3))
    matched = nearest_index(reference, kp[1:])  # (T-1, K): nearest keypoint of frame t to reference i
    positives = np.count_nonzero(matched == np.arange(K))
    return 100.0 * positives / ((T - 1) * K)


@dataclass(frozen=True)
class DualAlignment:
    """Skeleton Merger DAS parts, each in [0, 100]."""

    forward: float
    backward: float

    @property
    def das(self) -> float:
        return 0.5 * (self.forward + self.backward)


def das_skeleton_merger(keypoints: np.ndarray, ground_truth: np.ndarray) -> DualAlignment:
    """Skeleton Merger forward/backward DAS with frames as instances.

    ``keypoints`` (T, K, 3) predictions; ``ground_truth`` (T, M, 3) with semantic id m for column m, in the
    same coordinates as the predictions in each frame (any per-frame similarity transform applied to both
    leaves the score unchanged).
    """
    kp = _as_sequence(keypoints)
    gt = _as_sequence(ground_truth, 'ground_truth')
    if gt.shape[0] != kp.shape[0]:
        raise ValueError(f'keypoints have {kp.shape[0]} frames, ground truth {gt.shape[0]}')
    K, M = kp.shape[1], gt.shape[1]
    forward_ids = nearest_index(kp, gt)  # (T, K): a_n[k], the id of the nearest ground-truth point
    backward_ids = nearest_index(gt, kp)  # (T, M): b_s[n], the nearest predicted keypoint of id s
    forward = pair_agreement(forward_ids, M).mean()
    backward = pair_agreement(backward_ids, K).mean()
    return DualAlignment(100.0 * float(forward), 100.0 * float(backward))


def fps_vertex_indices(vertices: np.ndarray, count: int, start: int | None = None) -> np.ndarray:
    """Farthest point sampling on one frame's vertices ``(V, 3)`` -> ``count`` vertex indices (int64).

    Deterministic: it starts at ``start``, or by default at the vertex farthest from the centroid (a choice
    that does not depend on the vertex order); ties go to the lowest index. With ``count > V`` every vertex
    is taken and index ``start`` is repeated for the remaining slots.
    """
    xyz = np.asarray(vertices, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
        raise ValueError(f'vertices must have shape (V, 3) with V >= 1, got {xyz.shape}')
    if start is None:
        start = int(((xyz - xyz.mean(0)) ** 2).sum(-1).argmax())
    chosen = np.full(count, start, dtype=np.int64)
    nearest = np.full(len(xyz), np.inf)
    current = start
    for i in range(min(count, len(xyz))):
        chosen[i] = current
        nearest = np.minimum(nearest, ((xyz - xyz[current]) ** 2).sum(-1))
        current = int(nearest.argmax())
    return chosen


def correspondence_ground_truth(vertices: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Protocol B ground truth: ``vertices`` (T, V, 3) -> (positions (T, count, 3), vertex indices (count,)).

    ``count`` vertices chosen by FPS on frame 0, then followed through every frame by vertex index.
    """
    verts = _as_sequence(vertices, 'vertices')
    indices = fps_vertex_indices(verts[0], count)
    return verts[:, indices], indices


def das_correspondence(keypoints: np.ndarray, vertices: np.ndarray, num_ground_truth: int | None = None) -> float:
    """Protocol B: ``keypoints`` (T, K, 3), mesh ``vertices`` (T, V, 3) in the same coordinates -> DAS.

    The ground truth is ``num_ground_truth`` (default K) FPS vertices of frame 0 tracked by index.
    """
    kp = _as_sequence(keypoints)
    gt, _ = correspondence_ground_truth(vertices, num_ground_truth or kp.shape[1])
    return das_skeleton_merger(kp, gt).das


@dataclass
class IoUCounts:
    """Counts behind the mIoU; add them up over frames or sequences, then read :attr:`miou`."""

    npos: int = 0
    false_negatives: int = 0
    false_positives: int = 0

    def __add__(self, other: IoUCounts) -> IoUCounts:
        return IoUCounts(self.npos + other.npos, self.false_negatives + other.false_negatives,
                         self.false_positives + other.false_positives)

    @property
    def miou(self) -> float:
        """``100 (npos - FN) / (npos + FP)``; NaN when there is no ground truth at all."""
        denominator = self.npos + self.false_positives
        return 100.0 * (self.npos - self.false_negatives) / denominator if denominator else float('nan')


def iou_counts(
    keypoints: np.ndarray,
    ground_truth: np.ndarray,
    threshold: float = MIOU_THRESHOLD,
    cloud: np.ndarray | None = None,
) -> IoUCounts:
    """mIoU counts of one sequence: ``keypoints`` (T, K, 3), ``ground_truth`` (T, M, 3), same units.

    With ``cloud`` (T, N, 3) each keypoint is first snapped to its nearest cloud point (the released
    protocol; a no-op for hard-argmax keypoints, which already are cloud points). Ground-truth rows with
    a non-finite coordinate (missing annotations) are not counted.
    """
    kp = _as_sequence(keypoints)
    gt = _as_sequence(ground_truth, 'ground_truth')
    if cloud is not None:
        points = _as_sequence(cloud, 'cloud')
        kp = np.take_along_axis(points, nearest_index(kp, points)[..., None], axis=1)
    counts = IoUCounts()
    for frame_kp, frame_gt in zip(kp, gt):
        frame_gt = frame_gt[np.isfinite(frame_gt).all(-1)]
        if len(frame_gt) == 0:
            continue
        dist = np.sqrt(((frame_gt[:, None, :] - frame_kp[None, :, :]) ** 2).sum(-1))  # (M, K)
        close = dist <= threshold  # 'within': the reference counts a miss only when the distance exceeds it
        counts += IoUCounts(len(frame_gt), int((~close.any(1)).sum()), int((~close.any(0)).sum()))
    return counts


def lateral_coordinates(rest_vertices: np.ndarray, landmarks: np.ndarray, names: list[str]) -> np.ndarray | None:
    """Signed distance of every vertex ``(V, 3)`` from the garment's plane of symmetry, positive on the ``_r``
    side: the plane through the midpoints of the ``*_r``/``*_l`` landmark pairs (``landmarks`` (M, 3)), normal
    to their mean left-to-right direction. None when ``names`` has no such pairs."""
    pairs = [(names.index(n), names.index(n[:-2] + '_l')) for n in names if n.endswith('_r') and n[:-2] + '_l' in names]
    if not pairs:
        return None
    lm = np.asarray(landmarks, dtype=np.float64)
    axis = np.mean([lm[r] - lm[left] for r, left in pairs], axis=0)
    norm = np.linalg.norm(axis)
    if norm == 0:
        return None
    centre = np.mean([(lm[r] + lm[left]) / 2 for r, left in pairs], axis=0)
    return (np.asarray(rest_vertices, dtype=np.float64) - centre) @ (axis / norm)


def side_consistency(lateral: np.ndarray, band: float = 0.1) -> dict[str, float]:
    """``lateral`` (T, K): each keypoint's lateral coordinate per frame, as a fraction of the garment's width
    -> ``lateral_fraction`` and ``side_consistency`` (module docstring); ``band``: the half-width of the
    central band, in the same units."""
    lat = np.asarray(lateral, dtype=np.float64)
    side = np.sign(lat) * (np.abs(lat) > band)
    T, K = side.shape
    shares = []
    for k in range(K):
        s = side[:, k][side[:, k] != 0]
        if len(s) >= max(1, T // 4):
            shares.append(max(float((s > 0).mean()), float((s < 0).mean())))
    return {'lateral_fraction': float(np.count_nonzero(side)) / side.size if side.size else float('nan'),
            'side_consistency': float(np.mean(shares)) if shares else float('nan')}


def side_scores(vertex_indices: np.ndarray, rest_vertices: np.ndarray, landmarks: np.ndarray, names: list[str],
                band: float = 0.1) -> dict[str, float] | None:
    """Side consistency of keypoints given as the mesh vertex each sits on per frame, ``(T, K)`` int."""
    lateral = lateral_coordinates(rest_vertices, landmarks, names)
    if lateral is None:
        return None
    width = float(np.ptp(lateral)) or 1.0
    return side_consistency(lateral[np.asarray(vertex_indices)] / width, band)
