"""Shared helpers for the node, detector, transport and DDS tests: stand-in models and synthetic clouds.

The stand-in model keeps the tests fast and deterministic on two shared CPU cores: its keypoints are the first
K points of the FPS-ordered input (spread over the garment, like a Key-Grid model's), its weights a soft
distribution around them, its segment strengths fixed.
"""

from __future__ import annotations

import functools
import time

import numpy as np

from keygrid_ros.messages import Header, Quaternion, TFMessage, Time, Transform, TransformStamped, Vector3
from keygrid_ros.perception.postprocess import quaternion_from_matrix

CAMERA_FRAME = 'camera_depth_optical_frame'
TABLE_FRAME = 'table'


class StubModel:
    """KeypointModel stand-in: keypoints = the first K input points, Gaussian-soft weights around them."""

    def __init__(self, num_keypoints: int = 8, delay_s: float = 0.0, fail: bool = False):
        self.num_keypoints = num_keypoints
        self.delay_s = delay_s
        self.fail = fail
        self.keypoint_names = tuple(f'stub_{i}' for i in range(num_keypoints))
        self.calls = 0

    def predict(self, points: np.ndarray):
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError('stub model failure')
        keypoints = points[:self.num_keypoints].astype(np.float32)
        d2 = ((points[None, :, :] - keypoints[:, None, :]) ** 2).sum(-1)
        logits = -d2 / 0.002
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        k = self.num_keypoints
        strengths = np.linspace(0.0, 1.0, k * (k - 1) // 2, dtype=np.float32)
        return keypoints, weights.astype(np.float32), strengths


@functools.lru_cache(maxsize=1)
def _synthetic():
    from keygrid_ros.bench.preprocess import synthetic_message
    from keygrid_ros.perception.synthetic import synthetic_scene

    message, table_from_camera = synthetic_message()
    scene = synthetic_scene()
    return message, table_from_camera, scene


def synthetic_cloud(stamp_ns: int = 0, frame_id: str = CAMERA_FRAME):
    """The 640x480 synthetic garment scene as a driver-style PointCloud2 (shared data buffer, new header)."""
    from dataclasses import replace

    message, _, _ = _synthetic()
    return replace(message, header=Header(stamp=Time.from_ns(stamp_ns), frame_id=frame_id))


def synthetic_scene():
    return _synthetic()[2]


def table_from_camera() -> np.ndarray:
    return _synthetic()[1]


def table_transform(stamp_ns: int = 0, parent: str = TABLE_FRAME, child: str = CAMERA_FRAME) -> TransformStamped:
    """TransformStamped parent <- child for the synthetic camera mount."""
    matrix = table_from_camera()
    q = quaternion_from_matrix(matrix[:3, :3])
    t = matrix[:3, 3]
    return TransformStamped(
        header=Header(stamp=Time.from_ns(stamp_ns), frame_id=parent), child_frame_id=child,
        transform=Transform(translation=Vector3(x=float(t[0]), y=float(t[1]), z=float(t[2])),
                            rotation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))))


def table_tf_message(stamp_ns: int = 0) -> TFMessage:
    return TFMessage(transforms=[table_transform(stamp_ns)])


def garment_points_in_table_frame() -> np.ndarray:
    """The synthetic scene's garment points (P, 3), table frame."""
    scene = synthetic_scene()
    garment = scene.points[scene.garment_mask]
    garment = garment[np.isfinite(garment).all(axis=1)]
    matrix = table_from_camera()
    return garment @ matrix[:3, :3].T + matrix[:3, 3]


def garment_distance(points_table: np.ndarray) -> np.ndarray:
    """Distance (m) from each table-frame point to the nearest garment point of the synthetic scene."""
    from scipy.spatial import cKDTree

    return cKDTree(garment_points_in_table_frame()).query(points_table)[0]


def random_keygrid_file(path, num_points: int = 512, seed: int = 0):
    """A randomly initialised Key-Grid model file (small point count so CPU inference is quick); its keypoints
    still lie on the garment in hard mode, since they are input points."""
    import torch

    from keygrid_ros.model.config import KeyGridConfig
    from keygrid_ros.model.io import save_model
    from keygrid_ros.model.keygrid import KeyGrid

    torch.manual_seed(seed)
    model = KeyGrid(KeyGridConfig(num_points=num_points, use_decoder=False))
    return save_model(path, model, encoder_only=True)
