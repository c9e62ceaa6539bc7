"""Depth image + pinhole intrinsics -> organised point cloud in the camera optical frame.

REP 103 optical frame: z forward (along the optical axis), x right, y down. Pixel ``(u, v)`` (column, row) with
depth ``z`` back-projects to ``((u - cx) z / fx, (v - cy) z / fy, z)``, the model of ROS ``CameraInfo`` (pixel
centres at integer coordinates) and of depth_image_proc's ``point_cloud_xyz``.

Depth comes in metres as floats, or as integers (``uint16`` millimetres from OpenNI/Kinect/RealSense drivers,
``depth_scale`` 0.001 by default). Invalid pixels (0, NaN, inf, negative, or outside ``[min_depth, max_depth]``)
become NaN in all three coordinates, so the cloud stays organised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

#: Depth scale for integer images: the ROS convention (sensor_msgs/image_encodings 16UC1) is millimetres.
MILLIMETRES = 0.001


@dataclass(frozen=True)
class PinholeIntrinsics:
    """Pinhole camera: focal lengths and principal point in pixels; optional image size."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        if not (np.isfinite([self.fx, self.fy, self.cx, self.cy]).all() and self.fx > 0 and self.fy > 0):
            raise ValueError(f'invalid pinhole intrinsics fx={self.fx} fy={self.fy} cx={self.cx} cy={self.cy}')

    @classmethod
    def from_k(cls, k: Any, width: int | None = None, height: int | None = None) -> PinholeIntrinsics:
        """From a 3x3 camera matrix K, or its row-major 9 values (``CameraInfo.k``)."""
        k = np.asarray(k, dtype=np.float64).reshape(3, 3)
        return cls(fx=float(k[0, 0]), fy=float(k[1, 1]), cx=float(k[0, 2]), cy=float(k[1, 2]), width=width,
                   height=height)

    @classmethod
    def from_camera_info(cls, info: Any) -> PinholeIntrinsics:
        """From a duck-typed sensor_msgs/CameraInfo (ROS 2 ``k``, or ROS 1 ``K``)."""
        k = getattr(info, 'k', None)
        if k is None:
            k = info.K
        return cls.from_k(k, width=int(info.width) or None, height=int(info.height) or None)

    @property
    def k(self) -> np.ndarray:
        """The 3x3 camera matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


IntrinsicsLike = Union[PinholeIntrinsics, tuple, list]


def _intrinsics(value: IntrinsicsLike) -> PinholeIntrinsics:
    if isinstance(value, PinholeIntrinsics):
        return value
    fx, fy, cx, cy = (float(v) for v in value)
    return PinholeIntrinsics(fx, fy, cx, cy)


def depth_to_cloud(depth: np.ndarray, intrinsics: IntrinsicsLike, *, depth_scale: float | None = None,
                   min_depth: float = 0.0, max_depth: float = np.inf, dtype: Any = np.float32) -> np.ndarray:
    """Back-project a depth image ``(H, W)`` into an organised cloud ``(H, W, 3)``, NaN where invalid.

    ``intrinsics``: PinholeIntrinsics or ``(fx, fy, cx, cy)``. ``depth_scale`` multiplies raw values to get metres
    (default 1 for float images, 0.001 for integer images). ``min_depth``/``max_depth`` bound valid depth in metres
    (``min_depth`` itself is excluded when 0, since 0 means "no return").
    """
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise ValueError(f'depth must be an (H, W) image, got shape {depth.shape}')
    if depth.dtype.kind not in 'fiu':
        raise ValueError(f'depth must be numeric, got {depth.dtype}')
    cam = _intrinsics(intrinsics)
    height, width = depth.shape
    if cam.width is not None and cam.height is not None and (cam.width, cam.height) != (width, height):
        raise ValueError(f'depth image is {width}x{height} but the intrinsics are for {cam.width}x{cam.height}')
    if depth_scale is None:
        depth_scale = 1.0 if depth.dtype.kind == 'f' else MILLIMETRES
    dtype = np.dtype(dtype)

    with np.errstate(invalid='ignore'):
        z = depth.astype(dtype) * dtype.type(depth_scale)
        valid = np.isfinite(z) & (z > 0) & (z >= min_depth) & (z <= max_depth)
    z[~valid] = np.nan
    # Per-column and per-row ray slopes, computed in float64 once: (u - cx) / fx and (v - cy) / fy.
    x_slope = ((np.arange(width) - cam.cx) / cam.fx).astype(dtype)
    y_slope = ((np.arange(height) - cam.cy) / cam.fy).astype(dtype)
    cloud = np.empty((height, width, 3), dtype)
    np.multiply(z, x_slope[None, :], out=cloud[..., 0])
    np.multiply(z, y_slope[:, None], out=cloud[..., 1])
    cloud[..., 2] = z
    return cloud


def project_points(points: np.ndarray, intrinsics: IntrinsicsLike) -> np.ndarray:
    """Inverse of ``depth_to_cloud`` for points ``(..., 3)`` in the optical frame: pixel ``(..., 2)`` as (u, v).

    Points at or behind the camera (z <= 0) project to NaN.
    """
    cam = _intrinsics(intrinsics)
    points = np.asarray(points, dtype=np.float64)
    z = np.where(points[..., 2] > 0, points[..., 2], np.nan)
    return np.stack([cam.fx * points[..., 0] / z + cam.cx, cam.fy * points[..., 1] / z + cam.cy], axis=-1)


def load_depth_image(path: str | Path) -> np.ndarray:
    """Read a depth image: ``.npy`` as stored, PNG/TIFF through Pillow (16-bit PNGs keep their raw values)."""
    path = Path(path)
    if path.suffix == '.npy':
        return np.load(path, allow_pickle=False)
    from PIL import Image  # pillow ships with matplotlib; imported lazily so the node does not need it

    with Image.open(path) as image:
        array = np.array(image)
    if array.ndim != 2:
        raise ValueError(f'{path}: expected a single-channel depth image, got mode {image.mode} {array.shape}')
    return array
