"""From the model's answer to what a grasp planner wants: confidences, smoothing, a garment pose.

Pure numpy on small arrays (K keypoints, a few thousand points); no ROS types here — the node turns
these into messages.
"""

from __future__ import annotations

import math

import numpy as np


def keypoint_confidence(weights: np.ndarray) -> np.ndarray:
    """How sure the model is of each keypoint, from its weight distribution over the points.

    ``1 - H(w) / log(N)``: 1 when all weight sits on one point, 0 when it is spread uniformly over
    the whole cloud (the keypoint could be anywhere).

    Args:
        weights: (K, N) non-negative, each row summing to 1 (softmax over points).

    Returns:
        (K,) float32 in [0, 1].
    """
    count = weights.shape[-1]
    if count < 2:
        return np.ones(weights.shape[:-1], np.float32)
    w = np.clip(weights.astype(np.float64), 1e-30, None)
    entropy = -(w * np.log(w)).sum(axis=-1)
    return np.clip(1.0 - entropy / math.log(count), 0.0, 1.0).astype(np.float32)


class KeypointSmoother:
    """Exponential smoothing of keypoints over frames: ``s = alpha * s + (1 - alpha) * new``.

    ``alpha = 0`` passes keypoints through. Call :meth:`reset` when the garment is lost, so a new
    garment never inherits the old one's keypoints.
    """

    def __init__(self, alpha: float = 0.0):
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f'smoothing factor must be in [0, 1), got {alpha}')
        self.alpha = alpha
        self._state: np.ndarray | None = None

    def __call__(self, keypoints: np.ndarray) -> np.ndarray:
        """(K, 3) -> (K, 3) smoothed (a new array)."""
        if self._state is None or self._state.shape != keypoints.shape or self.alpha == 0.0:
            self._state = keypoints.astype(np.float64).copy()
        else:
            self._state = self.alpha * self._state + (1.0 - self.alpha) * keypoints
        return self._state.astype(keypoints.dtype)

    def reset(self) -> None:
        self._state = None


def kabsch(source: np.ndarray, target: np.ndarray) -> np.ndarray | None:
    """Rotation R (3, 3) minimising sum ||R (s_i - s̄) - (t_i - t̄)||², a proper rotation (det +1).

    Returns None when the source points do not fix a rotation (fewer than 3, or collinear).
    """
    if source.shape[0] < 3:
        return None
    s = source - source.mean(axis=0)
    t = target - target.mean(axis=0)
    singular = np.linalg.svd(s, compute_uv=False)
    if singular[1] < 1e-6 * max(singular[0], 1e-12):
        return None  # collinear: rotation about the line is undetermined
    u, _, vt = np.linalg.svd(t.T @ s)
    fix = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    return u @ fix @ vt


def principal_axes(points: np.ndarray, up: np.ndarray | None = None) -> np.ndarray:
    """Rotation (3, 3) whose columns are the cloud's major axis, its middle axis and its normal.

    The normal (least-variance axis) is turned towards ``up`` (default +z) and the major axis towards
    +x of the frame, so the result does not flip from frame to frame; columns form a right-handed frame.
    """
    centered = points - points.mean(axis=0)
    _, vectors = np.linalg.eigh(centered.T @ centered)  # ascending eigenvalues
    normal, major = vectors[:, 0], vectors[:, 2]
    if normal @ (up if up is not None else np.array([0.0, 0.0, 1.0])) < 0:
        normal = -normal
    if major[0] < 0:
        major = -major
    middle = np.cross(normal, major)
    return np.stack([major, middle, normal], axis=1)


def quaternion_from_matrix(rotation: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> unit quaternion (x, y, z, w) as geometry_msgs/Quaternion orders it; w >= 0."""
    m = rotation
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = np.array([(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s])
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + m[i, i] - m[j, j] - m[k, k], 1e-12))
        q = np.empty(4)
        q[i] = 0.25 * s
        q[j] = (m[j, i] + m[i, j]) / s
        q[k] = (m[k, i] + m[i, k]) / s
        q[3] = (m[k, j] - m[j, k]) / s
    q /= np.linalg.norm(q)
    return q if q[3] >= 0 else -q


def garment_pose(points: np.ndarray, keypoints: np.ndarray, reference: np.ndarray | None = None,
                 up: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Position and orientation of the garment.

    Args:
        points: (N, 3) garment points (position = their centroid).
        keypoints: (K, 3) detected keypoints, same frame.
        reference: (K, 3) the model's reference keypoint layout (garment frame), or None.
        up: the frame's up direction for the principal-axes fallback (default +z).

    Returns:
        position (3,), quaternion (x, y, z, w), and which method gave the orientation
        (``'kabsch'`` or ``'principal_axes'``).
    """
    position = points.mean(axis=0)
    rotation = kabsch(reference, keypoints) if reference is not None else None
    method = 'kabsch'
    if rotation is None:
        rotation, method = principal_axes(points, up), 'principal_axes'
    return position, quaternion_from_matrix(rotation), method
