"""load_cloud / iter_bag_clouds / load_tf_static on real bags and PCD files, and on small generated files."""

from __future__ import annotations

import numpy as np
import pytest

from keygrid_ros.messages import Header, PointCloud2, Time
from keygrid_ros.perception.cloud_io import (
    CloudIOError,
    bag_topics,
    cloud_topics,
    is_bag,
    iter_bag_clouds,
    load_cloud,
    load_tf_static,
)
from keygrid_ros.perception.pcd import read_pcd, write_pcd
from keygrid_ros.perception.pointcloud2 import create_cloud_xyz32, read_points, read_xyz
from keygrid_ros.ros.rosbag_io import BagWriter, static_transform

from conftest import require


@pytest.fixture
def moveit_bag(shared_data):
    return require(shared_data / 'moveit' / 'perception_tutorial_ros2_mcap')


@pytest.fixture
def clopema_bag(shared_data):
    return require(shared_data / 'clopema-research-only' / 'clopema_garment_on_table_points_mcap')


# -------------------------------------------------------------------------------------------------- real bags
def test_moveit_bag_directory_and_mcap_file(moveit_bag):
    for path in (moveit_bag, moveit_bag / 'perception_tutorial_ros2_mcap.mcap'):
        assert is_bag(path)
        cloud = load_cloud(path)
        assert isinstance(cloud, PointCloud2)
        assert (cloud.height, cloud.width, cloud.point_step) == (480, 640, 32)
        assert cloud.header.frame_id == 'camera_rgb_optical_frame'
        points = read_xyz(cloud, skip_nans=False)
        assert np.shares_memory(points, cloud.data)  # from storage to numpy without a copy of the cloud
        assert np.isfinite(points).all(axis=1).sum() == len(read_xyz(cloud))
    assert cloud_topics(moveit_bag) == ['/camera/depth_registered/points']
    assert load_tf_static(moveit_bag) == []


def test_clopema_bag_index_order_and_errors(clopema_bag):
    stamps = [load_cloud(clopema_bag, index=i).header.stamp.sec for i in range(3)]
    assert stamps == [1_700_000_000, 1_700_000_001, 1_700_000_002]
    clouds = list(iter_bag_clouds(clopema_bag))
    assert [t for t, _, _ in clouds] == ['/camera/depth/points'] * 3
    assert [ns for _, _, ns in clouds] == sorted(ns for _, _, ns in clouds)
    assert all(read_xyz(msg, organized=True).shape == (480, 640, 3) for _, msg, _ in clouds)
    assert load_cloud(clopema_bag, topic='/camera/depth/points', index=1).header.stamp.sec == 1_700_000_001
    with pytest.raises(CloudIOError, match='has 3 clouds, index 3 is out of range'):
        load_cloud(clopema_bag, index=3)
    listing = r"no PointCloud2 topic '/nope' \(PointCloud2 topics: /camera/depth/points\)"
    with pytest.raises(CloudIOError, match=listing):
        load_cloud(clopema_bag, topic='/nope')
    with pytest.raises(CloudIOError, match='no PointCloud2 topic'):
        list(iter_bag_clouds(clopema_bag, topic='/nope'))


def test_pcl_pcd_file(shared_data):
    path = require(shared_data / 'pcl' / 'table_scene_mug_stereo_textured.pcd')
    cloud = load_cloud(path, frame_id='camera_optical_frame')
    assert (cloud.height, cloud.width) == (480, 640) and cloud.header.frame_id == 'camera_optical_frame'
    assert [f.name for f in cloud.fields] == ['x', 'y', 'z', 'rgba'] and not cloud.is_dense
    np.testing.assert_array_equal(read_xyz(cloud, organized=True), read_pcd(path).xyz(organized=True))


# --------------------------------------------------------------------------------------------- generated files
def test_npy_and_npz_inputs(tmp_path, rng):
    flat = rng.normal(size=(20, 3)).astype(np.float32)
    grid = rng.normal(size=(4, 5, 3))
    np.save(tmp_path / 'flat.npy', flat)
    np.save(tmp_path / 'grid.npy', grid)
    np.testing.assert_array_equal(read_xyz(load_cloud(tmp_path / 'flat.npy')), flat)
    organised = load_cloud(tmp_path / 'grid.npy', frame_id='cam')
    assert (organised.height, organised.width, organised.header.frame_id) == (4, 5, 'cam')
    np.testing.assert_array_equal(read_xyz(organised, organized=True), grid.astype(np.float32))

    structured = np.zeros(3, [('x', 'f4'), ('y', 'f4'), ('z', 'f4'), ('intensity', 'f4')])
    structured['intensity'] = [1, 2, 3]
    np.save(tmp_path / 'structured.npy', structured)
    assert read_points(load_cloud(tmp_path / 'structured.npy'), ['intensity'])['intensity'].tolist() == [1, 2, 3]

    np.savez(tmp_path / 'points.npz', points=flat, other=np.zeros(2))
    np.testing.assert_array_equal(read_xyz(load_cloud(tmp_path / 'points.npz')), flat)
    sequence = rng.normal(size=(3, 10, 3)).astype(np.float32)  # the project's sequence file layout
    np.savez(tmp_path / 'seq.npz', vertices=sequence, faces=np.zeros((1, 3), np.int32))
    np.testing.assert_array_equal(read_xyz(load_cloud(tmp_path / 'seq.npz', index=2)), sequence[2])
    with pytest.raises(CloudIOError, match='3 frames, index 5'):
        load_cloud(tmp_path / 'seq.npz', index=5)


def test_file_errors_name_the_file(tmp_path):
    np.save(tmp_path / 'bad.npy', np.zeros((4, 2)))
    with pytest.raises(CloudIOError, match=r'bad.npy: expected \(N, 3\) or \(H, W, 3\)'):
        load_cloud(tmp_path / 'bad.npy')
    np.savez(tmp_path / 'bad.npz', a=np.zeros((2, 3)), b=np.zeros((2, 3)))
    with pytest.raises(CloudIOError, match='bad.npz: no points array'):
        load_cloud(tmp_path / 'bad.npz')
    (tmp_path / 'cloud.ply').write_text('ply')
    with pytest.raises(CloudIOError, match="unknown cloud format '.ply'"):
        load_cloud(tmp_path / 'cloud.ply')
    with pytest.raises(FileNotFoundError, match='missing.pcd'):
        load_cloud(tmp_path / 'missing.pcd')
    write_pcd(tmp_path / 'one.pcd', np.zeros((2, 3)))
    with pytest.raises(CloudIOError, match='one.pcd: a PCD file holds one cloud'):
        load_cloud(tmp_path / 'one.pcd', index=1)
    with pytest.raises(CloudIOError, match='no such bag'):
        list(iter_bag_clouds(tmp_path / 'absent.mcap'))


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_bags_we_write_read_back(tmp_path, storage):
    path = tmp_path / 'bag'
    clouds = [create_cloud_xyz32(Header(stamp=Time(sec=10 + i), frame_id='cam'), np.full((2, 3, 3), i, np.float32))
              for i in range(3)]
    with BagWriter(path, storage=storage) as bag:
        bag.write_static_transforms([static_transform('base_link', 'cam', (0.1, 0.2, 0.3), stamp_ns=5)])
        for cloud in reversed(clouds):  # written out of order: readers sort by time
            bag.write('/b/points', cloud)
        bag.write('/a/points', clouds[0], timestamp_ns=1)
    assert bag_topics(path) == {'/tf_static': 'tf2_msgs/msg/TFMessage', '/b/points': 'sensor_msgs/msg/PointCloud2',
                                '/a/points': 'sensor_msgs/msg/PointCloud2'}
    assert cloud_topics(path) == ['/b/points', '/a/points']
    assert load_cloud(path).header.stamp.sec == 10  # first PointCloud2 topic, earliest message
    assert [ns for _, _, ns in iter_bag_clouds(path, '/b/points')] == [10**10, 11 * 10**9, 12 * 10**9]
    assert [topic for topic, _, _ in iter_bag_clouds(path)] == ['/a/points', '/b/points', '/b/points', '/b/points']
    np.testing.assert_array_equal(read_xyz(load_cloud(path, index=2)), np.full((6, 3), 2, np.float32))
    storage_file = next(p for p in path.iterdir() if p.suffix in ('.mcap', '.db3'))
    assert load_cloud(storage_file, topic='/a/points').header.frame_id == 'cam'
    (tf,) = load_tf_static(path)
    assert (tf.header.frame_id, tf.child_frame_id, tf.transform.translation.z) == ('base_link', 'cam', 0.3)
