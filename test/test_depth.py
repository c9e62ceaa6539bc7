"""Depth image -> organised cloud: the pinhole model, invalid pixels, and two real depth sources."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial import ConvexHull

from keygrid_ros.perception.depth import PinholeIntrinsics, depth_to_cloud, load_depth_image, project_points

from conftest import require

KINECT_V1 = PinholeIntrinsics(fx=570.3422, fy=570.3422, cx=319.5, cy=239.5, width=640, height=480)
AIRO = (282.109, 282.109, 200.0, 150.0)


def test_pinhole_model_and_optical_frame_axes():
    depth = np.full((3, 4), 2.0, np.float32)
    cloud = depth_to_cloud(depth, (2.0, 4.0, 1.0, 1.0))
    assert cloud.shape == (3, 4, 3) and cloud.dtype == np.float32
    # Pixel right of / below the principal point -> +x (right) / +y (down); z is the depth itself.
    np.testing.assert_allclose(cloud[1, 1], [0, 0, 2])
    np.testing.assert_allclose(cloud[1, 3], [(3 - 1) * 2 / 2, 0, 2])
    np.testing.assert_allclose(cloud[2, 0], [(0 - 1) * 2 / 2, (2 - 1) * 2 / 4, 2])


def test_uint16_millimetres_and_invalid_pixels():
    raw = np.array([[0, 1000, 65535], [500, 2500, 1]], np.uint16)
    cloud = depth_to_cloud(raw, (100, 100, 1, 0.5), max_depth=10.0)
    z = cloud[..., 2]
    assert np.isnan(cloud[0, 0]).all() and np.isnan(cloud[0, 2]).all()  # no return; beyond max_depth
    np.testing.assert_allclose(z[0, 1], 1.0)
    np.testing.assert_allclose(z[1], [0.5, 2.5, 0.001])
    assert np.isnan(depth_to_cloud(raw, (100, 100, 1, 0.5), min_depth=0.4)[1, 2]).all()
    scaled = depth_to_cloud(raw, (100, 100, 1, 0.5), depth_scale=0.0001)
    np.testing.assert_allclose(scaled[0, 1, 2], 0.1)


def test_float_depth_nan_inf_negative_are_invalid():
    depth = np.array([[np.nan, np.inf, -1.0, 0.0, 1.5]])
    cloud = depth_to_cloud(depth, (1, 1, 0, 0))
    assert np.isnan(cloud[0, :4]).all() and np.isfinite(cloud[0, 4]).all()


def test_project_points_inverts_back_projection(rng):
    depth = rng.uniform(0.5, 3.0, size=(30, 40))
    cam = PinholeIntrinsics(fx=55.0, fy=60.0, cx=19.2, cy=14.7)
    cloud = depth_to_cloud(depth, cam, dtype=np.float64)
    uv = project_points(cloud, cam)
    v, u = np.mgrid[0:30, 0:40]
    np.testing.assert_allclose(uv[..., 0], u, atol=1e-9)
    np.testing.assert_allclose(uv[..., 1], v, atol=1e-9)
    assert np.isnan(project_points([[0, 0, -1.0]], cam)).all()


def test_intrinsics_constructors_and_checks():
    k = [570.3422, 0, 319.5, 0, 570.3422, 239.5, 0, 0, 1]
    assert PinholeIntrinsics.from_k(k, 640, 480) == KINECT_V1
    info = SimpleNamespace(k=k, width=640, height=480)
    assert PinholeIntrinsics.from_camera_info(info) == KINECT_V1
    np.testing.assert_array_equal(KINECT_V1.k.reshape(-1), k)
    with pytest.raises(ValueError, match='invalid pinhole'):
        PinholeIntrinsics(0.0, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match='640x480'):
        depth_to_cloud(np.ones((10, 10)), KINECT_V1)
    with pytest.raises(ValueError, match=r'\(H, W\)'):
        depth_to_cloud(np.ones((2, 2, 2)), KINECT_V1)


# ------------------------------------------------------------------------------------------------- real data
def _plane(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centre = points.mean(axis=0)
    normal = np.linalg.svd(points - centre, full_matrices=False)[2][2]
    return centre, normal if normal @ centre < 0 else -normal  # normal towards the camera


def test_airo_cube_above_ground_plane(shared_data):
    depth = load_depth_image(require(shared_data / 'airo' / 'test_depth_map.npy'))
    assert depth.shape == (300, 400)
    points = depth_to_cloud(depth, AIRO).astype(np.float64).reshape(-1, 3)
    assert np.isfinite(points).all()
    far = depth.reshape(-1) > 1.0  # the ground is 1.4-2.6 m away, the cube 0.37-0.5 m
    ground, cube = points[far], points[~far]
    centre, normal = _plane(ground)
    # A rendered plane back-projects to a plane only if the intrinsics and axes are right.
    assert np.abs((ground - centre) @ normal).max() < 1e-4
    assert -(centre @ normal) == pytest.approx(1.5, abs=0.01)  # camera height above the ground
    heights = (cube - centre) @ normal
    # The visible side faces of the 0.2 m cube span exactly its edge length in height.
    assert heights.max() - heights.min() == pytest.approx(0.2, abs=0.005)
    top = cube[heights > heights.max() - 0.003]
    top_centre, top_normal = _plane(top)
    assert np.degrees(np.arccos(abs(top_normal @ normal))) < 0.5  # top face parallel to the ground
    axis_u = np.cross(normal, [1.0, 0.0, 0.0])
    axis_u /= np.linalg.norm(axis_u)
    axis_v = np.cross(normal, axis_u)
    area = ConvexHull(np.stack([top @ axis_u, top @ axis_v], axis=1)).volume
    assert area == pytest.approx(0.2 * 0.2, rel=0.03)  # the top face is a 0.2 m square


def _bag_clouds(bag: Path) -> list[np.ndarray]:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from keygrid_ros.perception.pointcloud2 import read_xyz

    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        return [np.array(read_xyz(reader.deserialize(raw, conn.msgtype), organized=True))
                for conn, _, raw in reader.messages()]


def test_clopema_depth_pngs_match_the_recorded_clouds(shared_data):
    root = require(shared_data / 'clopema-research-only')
    recorded = _bag_clouds(require(root / 'clopema_garment_on_table_points_mcap'))
    assert len(recorded) == 3
    for name, reference in zip(['cloD00023', 'cloD01158', 'cloD02321'], recorded):
        raw = load_depth_image(require(root / f'{name}.png'))
        assert raw.dtype == np.uint16 and raw.shape == (480, 640)
        cloud = depth_to_cloud(raw, KINECT_V1)
        np.testing.assert_array_equal(np.isnan(cloud), np.isnan(reference))
        np.testing.assert_allclose(cloud, reference, atol=2e-6, equal_nan=True)
        assert (raw == 0).sum() == np.isnan(cloud[..., 2]).sum()
