"""The front end on real depth-camera clouds (skipped, with the reason, where the data is absent).

CloPeMa: three Kinect views of garments spread on a table (research-only data, never copied here).
The expectations come from an independent, image-space method: a least-squares plane fitted to the
image border (all table in these views), a height map, and its largest 2-D connected blob.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from keygrid_ros.perception.preprocess import PreprocessConfig, Preprocessor

from conftest import require

CLOPEMA_BAG = 'clopema-research-only/clopema_garment_on_table_points_mcap'
KINECT = (570.3422, 570.3422, 319.5, 239.5)  # the intrinsics the bag was made with


def bag_clouds(path):
    """(H, W, 3) float32 xyz of every PointCloud2 in a rosbag2, in order (via the project's codec)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from keygrid_ros.perception.pointcloud2 import read_xyz

    clouds = []
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        for connection, _, raw in reader.messages():
            message = reader.deserialize(raw, connection.msgtype)
            clouds.append(np.array(read_xyz(message, skip_nans=False, organized=True)))
    return clouds


def border_plane(points: np.ndarray, margin: int = 40):
    """Least-squares plane (unit normal towards the camera, offset) of the image border, which is
    mostly table here; refitted twice without the points more than 3 sigma off (garment tips)."""
    border = np.zeros(points.shape[:2], bool)
    border[:margin], border[-margin:], border[:, :margin], border[:, -margin:] = True, True, True, True
    table = points[border & np.isfinite(points[..., 2])].astype(np.float64)
    for _ in range(3):
        centroid = table.mean(axis=0)
        normal = np.linalg.eigh(np.cov((table - centroid).T))[1][:, 0]
        residual = (table - centroid) @ normal
        table = table[np.abs(residual) < 3 * residual.std()]
    if normal @ -centroid < 0:
        normal = -normal
    return normal, -normal @ centroid


@pytest.fixture(scope='module')
def clopema(shared_data):
    return bag_clouds(require(shared_data / CLOPEMA_BAG))


@pytest.mark.parametrize('frame', [0, 1, 2], ids=['pants', 'polo', 'folded-pants'])
def test_clopema_cluster_is_the_garment(clopema, frame):
    cloud = clopema[frame]
    height, width, _ = cloud.shape
    config = PreprocessConfig(crop_min=(-0.8, -0.8, 0.5), crop_max=(0.8, 0.8, 1.6))
    result = Preprocessor(config)(cloud)
    assert result.ok, result.report.reason

    normal, offset = border_plane(cloud)
    found = result.plane.normal.numpy().astype(np.float64)
    assert np.degrees(np.arccos(min(1.0, abs(found @ normal)))) < 2.0
    # Reference garment: pixels > 4 mm above the border plane, median-filtered, largest blob.
    heights = np.nan_to_num(cloud.reshape(-1, 3) @ normal + offset, nan=0.0).reshape(height, width)
    raised = ndimage.median_filter(heights, size=5) > 0.004
    labels, count = ndimage.label(raised)
    garment = labels == 1 + np.argmax(ndimage.sum(raised, labels, range(1, count + 1)))

    fx, fy, cx, cy = KINECT
    points = result.points
    u = np.clip(np.round(points[:, 0] / points[:, 2] * fx + cx).astype(int), 0, width - 1)
    v = np.clip(np.round(points[:, 1] / points[:, 2] * fy + cy).astype(int), 0, height - 1)
    assert ndimage.binary_dilation(garment, iterations=3)[v, u].mean() > 0.7
    hit = np.zeros_like(garment)
    hit[v, u] = True
    assert ndimage.binary_dilation(hit, iterations=8)[garment].mean() > 0.9  # covers the garment
    # Above the table, garment-sized.
    assert np.all(points @ found + result.plane.offset > 0.0)
    extent = np.ptp(points, axis=0)
    assert 0.25 < extent.max() < 1.2


# PCL table scenes: organised Kinect clouds of objects on a table, camera optical frame. The table
# pixels were picked by eye in image space (a band in front of the objects), independently of the
# RANSAC under test.
PCL_TABLE_PIXELS = {
    'frame_20121214T142255.814212.pcd': (slice(380, 460), slice(60, 560)),
    'milk_cartoon_all_small_clorox.pcd': (slice(360, 440), slice(60, 540)),
    'table_scene_mug_stereo_textured.pcd': (slice(420, 470), slice(160, 620)),
}


@pytest.mark.parametrize('name', sorted(PCL_TABLE_PIXELS))
def test_pcl_table_plane_matches_least_squares_on_table_pixels(shared_data, name):
    from keygrid_ros.perception.pcd import read_pcd

    cloud = read_pcd(require(shared_data / 'pcl' / name)).xyz(organized=True)
    rows, cols = PCL_TABLE_PIXELS[name]
    table = cloud[rows, cols].reshape(-1, 3)
    table = table[np.isfinite(table).all(axis=1)].astype(np.float64)
    for _ in range(3):  # least squares, twice more without 3-sigma outliers (edges, flying pixels)
        centroid = table.mean(axis=0)
        normal = np.linalg.eigh(np.cov((table - centroid).T))[1][:, 0]
        residual = (table - centroid) @ normal
        table = table[np.abs(residual) < 3 * residual.std()]
    config = PreprocessConfig(crop_min=(-1.0, -1.0, 0.3), crop_max=(1.0, 1.0, 1.5), table_distance_threshold=0.01)
    result = Preprocessor(config)(cloud)
    assert result.plane is not None, result.report.reason
    found = result.plane.normal.numpy().astype(np.float64)
    assert np.degrees(np.arccos(min(1.0, abs(found @ normal)))) < 3.0
    assert float(found @ -centroid) > 0  # oriented towards the camera
    # Everything kept after table removal lies above the table (the objects), none of it on it.
    if result.ok:
        assert np.all(result.points @ found + result.plane.offset > 0.01 - 1e-6)


def test_moveit_kinect_scene_has_no_garment(shared_data):
    """A real Kinect view of a floor, a wall and a can: the front end must say there is no garment."""
    from keygrid_ros.perception.cloud_io import load_cloud
    from keygrid_ros.perception.pointcloud2 import read_xyz

    message = load_cloud(require(shared_data / 'moveit' / 'perception_tutorial_ros2_mcap'))
    result = Preprocessor()(read_xyz(message, skip_nans=False))
    assert not result.ok
    assert result.report.reason.startswith('no garment')
    assert result.plane is not None and result.plane.inlier_ratio > 0.5  # the floor was found
