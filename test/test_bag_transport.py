"""Bag transport and ``keygrid detect --bag``: deterministic replay, outputs in a ROS-readable bag."""

from __future__ import annotations

import json

from node_fixtures import (
    CAMERA_FRAME,
    TABLE_FRAME,
    StubModel,
    garment_distance,
    random_keygrid_file,
    synthetic_cloud,
    table_tf_message,
    table_transform,
)
import numpy as np
import pytest
import yaml

from keygrid_ros import cli
from keygrid_ros.messages import Marker
from keygrid_ros.perception.cloud_io import bag_topics, iter_bag_messages
from keygrid_ros.ros.bag_transport import resolve_topic, run_bag
from keygrid_ros.ros.rosbag_io import BagWriter

from conftest import require

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND
CLOUD_TOPIC = '/camera/depth/points'


def write_synthetic_bag(path, frames=3, storage='mcap', tf_topic='/tf_static', tf_delay_ns=0):
    with BagWriter(path, storage=storage) as bag:
        if tf_topic == '/tf_static':
            bag.write_static_transforms([table_transform(T0)], T0)
        for i in range(frames):
            stamp = T0 + i * SECOND // 10
            bag.write(CLOUD_TOPIC, synthetic_cloud(stamp), stamp)
            if tf_topic == '/tf':  # recorded after the cloud, as a slow TF publisher would
                bag.write('/tf', table_tf_message(stamp), stamp + tf_delay_ns)
    return path


def read_outputs(path):
    out = {}
    for topic, _, message, when in iter_bag_messages(path):
        out.setdefault(topic, []).append((when, message))
    return out


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_replay_writes_every_output_with_input_stamps(tmp_path, storage):
    bag = write_synthetic_bag(tmp_path / 'in', frames=3, storage=storage)
    summary = run_bag(bag, tmp_path / 'out', {'target_frame': TABLE_FRAME, 'max_age_s': 0.5}, storage=storage,
                      model=StubModel())
    assert (summary.clouds, summary.detected) == (3, 3)
    metadata = yaml.safe_load((tmp_path / 'out' / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert metadata['version'] == 8 and metadata['storage_identifier'] == storage
    topics = bag_topics(tmp_path / 'out')
    assert topics['/keypoints'] == 'geometry_msgs/msg/PoseArray'
    assert topics['/garment_pose'] == 'geometry_msgs/msg/PoseStamped'
    assert topics['/keygrid_detector/markers'] == 'visualization_msgs/msg/MarkerArray'
    assert topics['/diagnostics'] == 'diagnostic_msgs/msg/DiagnosticArray'
    assert topics['/tf_static'] == 'tf2_msgs/msg/TFMessage'  # copied: the output bag is self-contained
    out = read_outputs(tmp_path / 'out')
    stamps = [T0 + i * SECOND // 10 for i in range(3)]
    assert [when for when, _ in out['/keypoints']] == stamps
    for when, poses in out['/keypoints']:
        assert poses.header.frame_id == TABLE_FRAME
        assert poses.header.stamp.sec * SECOND + poses.header.stamp.nanosec == when
        keypoints = np.array([[p.position.x, p.position.y, p.position.z] for p in poses.poses])
        assert keypoints.shape == (8, 3) and garment_distance(keypoints).max() < 0.01
    for _, markers in out['/keygrid_detector/markers']:
        assert markers.markers[0].action == Marker.DELETEALL
        spheres = [m for m in markers.markers if m.ns == 'keygrid/keypoints' and m.action == Marker.ADD]
        assert [m.id for m in spheres] == list(range(8))


def test_replay_is_deterministic(tmp_path):
    bag = write_synthetic_bag(tmp_path / 'in', frames=2)
    first = run_bag(bag, tmp_path / 'a', {'target_frame': TABLE_FRAME}, model=StubModel())
    second = run_bag(bag, tmp_path / 'b', {'target_frame': TABLE_FRAME}, model=StubModel())
    assert all(np.array_equal(a, b) for a, b in zip(first.keypoints, second.keypoints, strict=True))


def test_tf_recorded_after_the_cloud_is_waited_for(tmp_path):
    bag = write_synthetic_bag(tmp_path / 'in', frames=2, tf_topic='/tf', tf_delay_ns=50_000_000)
    summary = run_bag(bag, tmp_path / 'out', {'target_frame': TABLE_FRAME, 'tf_timeout_s': 0.1}, model=StubModel())
    assert summary.detected == 2, summary.reasons
    summary = run_bag(bag, tmp_path / 'out0', {'target_frame': TABLE_FRAME, 'tf_timeout_s': 0.0}, model=StubModel())
    assert summary.detected == 0
    for reason in summary.reasons:
        assert f"'{CAMERA_FRAME}'" in reason and f"'{TABLE_FRAME}'" in reason


def test_missing_frame_is_a_reason_and_markers_are_cleared(tmp_path):
    bag = write_synthetic_bag(tmp_path / 'in', frames=2)
    summary = run_bag(bag, tmp_path / 'out', {'target_frame': 'base_link'}, model=StubModel())
    assert summary.detected == 0 and 'base_link' in next(iter(summary.reasons))
    out = read_outputs(tmp_path / 'out')
    assert '/keypoints' not in out
    assert all(m.action == Marker.DELETEALL for _, a in out['/keygrid_detector/markers'] for m in a.markers)
    (_, diagnostics), = out['/diagnostics']
    assert diagnostics.status[0].level == 1 and 'base_link' in diagnostics.status[0].message


def test_resolve_topic():
    assert resolve_topic('keypoints') == '/keypoints'
    assert resolve_topic('~/markers', namespace='robot1') == '/robot1/keygrid_detector/markers'
    assert resolve_topic('/diagnostics', namespace='robot1') == '/diagnostics'


def test_cli_with_a_model_file(tmp_path, capsys):
    bag = write_synthetic_bag(tmp_path / 'in', frames=1)
    model = random_keygrid_file(tmp_path / 'model.safetensors', num_points=256)
    code = cli.main(['detect', '--bag', str(bag), '--out', str(tmp_path / 'out'), '--model', str(model),
                     '--set', 'num_points:=256', '--set', f'target_frame:={TABLE_FRAME}', '--set', 'compile:=false',
                     '--json'])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result['detected'] == 1 and result['written']['/keypoints'] == 1
    assert {'model', 'crop', 'total'} <= set(result['median_ms'])


def test_cli_startup_errors_exit_non_zero(tmp_path, capsys):
    bag = write_synthetic_bag(tmp_path / 'in', frames=1)
    corrupt = tmp_path / 'corrupt.safetensors'
    corrupt.write_bytes(b'\x00' * 64)
    assert cli.main(['detect', '--bag', str(bag), '--out', str(tmp_path / 'o1'), '--model', str(corrupt)]) == 1
    assert 'corrupt.safetensors' in capsys.readouterr().err
    assert cli.main(['detect', '--bag', str(bag), '--out', str(tmp_path / 'o2'), '--set', 'voxel_size:=-1']) == 1
    assert 'voxel_size' in capsys.readouterr().err
    assert cli.main(['detect', '--bag', str(tmp_path / 'nope'), '--out', str(tmp_path / 'o3')]) == 1
    assert cli.main(['detect', '--out', str(tmp_path / 'o4')]) == 2


def test_moveit_kinect_scene_has_no_garment(shared_data, tmp_path):
    bag = require(shared_data / 'moveit' / 'perception_tutorial_ros2_mcap')
    summary = run_bag(bag, tmp_path / 'out', {}, model=StubModel())
    assert summary.clouds == 1 and summary.detected == 0, 'a table with a can is not a garment'
    (reason,) = summary.reasons
    assert 'garment' in reason, reason
    out = read_outputs(tmp_path / 'out')
    assert '/keypoints' not in out and out['/keygrid_detector/markers']
    assert out['/diagnostics'][0][1].status[0].message == reason


def test_clopema_garments_get_keypoints_on_the_garment(shared_data, tmp_path):
    from scipy.spatial import cKDTree

    from keygrid_ros.perception.pointcloud2 import read_xyz

    bag = require(shared_data / 'clopema-research-only' / 'clopema_garment_on_table_points_mcap')
    values = {'crop.min': [-0.8, -0.8, 0.5], 'crop.max': [0.8, 0.8, 1.6]}  # the camera looks down from ~1.2 m
    summary = run_bag(bag, tmp_path / 'out', values, model=StubModel())
    assert (summary.clouds, summary.detected) == (3, 3), summary.reasons
    for (_, _, cloud, _), keypoints in zip(iter_bag_messages(bag), summary.keypoints, strict=True):
        points = read_xyz(cloud)
        assert cKDTree(points).query(keypoints)[0].max() < 0.01  # keypoints are measured points of the scene...
        table = points[::20].astype(np.float64)  # the table dominates the view: least squares, trimmed
        for _ in range(4):  # three times of everything more than 2 sigma off it (the garment)
            centre = table.mean(axis=0)
            normal = np.linalg.svd(table - centre, full_matrices=False)[2][2]
            residual = (table - centre) @ normal
            table = table[np.abs(residual) < 2 * residual.std()]
        normal = normal if normal @ centre < 0 else -normal  # towards the camera at the origin
        heights = (keypoints - centre) @ normal
        # ...on the garment, off the table: the node removes 4 mm around its own plane, which sits within about
        # 0.5 mm of this independent one (the Kinect's noise here is about 3 mm).
        assert np.all(heights > 0.0) and np.median(heights) > 0.003
