"""A deterministic depth-camera view of a wrinkled T-shirt on a table, for benchmarks and tests.

Not a simulator (``keygrid_ros.data`` has the real one): an analytic ray cast of a height field, so
the front end can be measured and tested anywhere, in milliseconds, against known ground truth
(which pixels are garment, where the table plane is). The camera imitates a RealSense D435 at
640x480 hanging 0.75 m above the table and tilted 20 degrees, with the depth noise, holes, dead
border and flying pixels such a camera produces.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

#: T-shirt outline in the table frame (metres, z up), counter-clockwise: 59 cm across the sleeves.
TSHIRT_OUTLINE = 0.7 * np.array([
    (-0.20, -0.30), (0.20, -0.30), (0.20, 0.08), (0.36, -0.02), (0.42, 0.08), (0.24, 0.24),
    (0.07, 0.26), (0.0, 0.22), (-0.07, 0.26), (-0.24, 0.24), (-0.42, 0.08), (-0.36, -0.02),
    (-0.20, 0.08),
])


@dataclass(frozen=True)
class SyntheticScene:
    """``points`` (H, W, 3) float32 in the camera optical frame (NaN = no return);
    ``table_from_camera`` (4, 4) maps them into the table frame (z up, table top at z = 0);
    ``garment_mask`` (H, W) bool marks the pixels that see the garment."""

    points: np.ndarray
    table_from_camera: np.ndarray
    garment_mask: np.ndarray
    intrinsics: tuple[float, float, float, float]  # fx, fy, cx, cy


def inside_polygon(xy: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd test of points (N, 2) against a closed polygon (P, 2); returns (N,) bool."""
    x, y = xy[:, 0:1], xy[:, 1:2]
    x0, y0 = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    straddles = (y0 > y) != (y1 > y)
    with np.errstate(divide='ignore', invalid='ignore'):
        crossing_x = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (straddles & (x < crossing_x)).sum(axis=1) % 2 == 1


def _garment_height(xy: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Wrinkled cloth: 6 mm thick (two layers and the air between) plus wrinkles up to 12 mm and a 3 cm fold."""
    x, y = xy[:, 0], xy[:, 1]
    wrinkles = 0.006 * (1 + np.sin(31 * x + 7 * y)) * (1 + np.cos(23 * y - 11 * x)) / 2
    ridge = 0.03 * np.exp(-((x - 0.6 * y - 0.05) / 0.03) ** 2) * (np.abs(y) < 0.2)
    return np.where(inside, 0.006 + wrinkles + ridge, 0.0)


def look_at(eye: np.ndarray, target: np.ndarray, image_up: np.ndarray) -> np.ndarray:
    """(4, 4) world <- optical frame of a camera at ``eye`` looking at ``target`` (REP 103 optical:
    z forward, x right, y down); ``image_up`` is the world direction that should appear up."""
    z = target - eye
    z = z / np.linalg.norm(z)
    y = -(image_up - (image_up @ z) * z)
    y = y / np.linalg.norm(y)
    x = np.cross(y, z)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], axis=1)
    pose[:3, 3] = eye
    return pose


def synthetic_scene(width: int = 640, height: int = 480, seed: int = 0, tilt_deg: float = 20.0,
                    camera_height: float = 0.75) -> SyntheticScene:
    """Render the scene (deterministic for a given ``seed``)."""
    rng = np.random.default_rng(seed)
    fx = fy = 615.0 * width / 640.0
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    tilt = math.radians(tilt_deg)
    eye = np.array([0.0, -camera_height * math.tan(tilt), camera_height])
    pose = look_at(eye, np.zeros(3), image_up=np.array([0.0, 1.0, 0.0]))
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    rays_cam = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u, dtype=float)], axis=-1).reshape(-1, 3)
    rays = rays_cam @ pose[:3, :3].T
    # Table top 1.0 x 0.8 m at z = 0; beyond it the floor, 0.75 m lower.
    surface = np.zeros(rays.shape[0])
    for _ in range(4):  # fixed-point ray / height-field intersection; converges in a few steps here
        t = (surface - eye[2]) / rays[:, 2]
        xy = eye[:2] + t[:, None] * rays[:, :2]
        on_table = (np.abs(xy[:, 0]) <= 0.5) & (np.abs(xy[:, 1]) <= 0.4)
        inside = inside_polygon(xy, TSHIRT_OUTLINE) & on_table
        surface = np.where(on_table, _garment_height(xy, inside), -camera_height)
    depth = (surface - eye[2]) / rays[:, 2]  # rays_cam has z = 1, so the ray parameter is the depth
    depth = depth * (1.0 + rng.normal(0.0, 1.0, depth.shape) * (0.0008 + 0.0012 * depth))
    # Flying pixels: a few garment-edge pixels land between garment and table.
    edge = inside & ~np.roll(inside, 1) | inside & ~np.roll(inside, -1)
    flying = edge & (rng.random(depth.shape) < 0.3)
    depth = np.where(flying, depth * (1 + rng.uniform(0.005, 0.05, depth.shape)), depth)
    points = (rays_cam * depth[:, None]).reshape(height, width, 3)
    invalid = rng.random((height, width)) < 0.08
    invalid[:, : max(1, width // 80)] = True  # dead left border, as structured-light cameras have
    invalid |= points[..., 2] > 3.0
    points[invalid] = np.nan
    mask = inside.reshape(height, width) & ~invalid & ~flying.reshape(height, width)
    return SyntheticScene(points=points.astype(np.float32), table_from_camera=pose,
                          garment_mask=mask, intrinsics=(fx, fy, cx, cy))
