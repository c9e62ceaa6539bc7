"""Output builders: PoseArray order, pose, MarkerArray contract (DELETEALL first, stable ids), TF, diagnostics."""

from __future__ import annotations

import numpy as np
import pytest

from keygrid_ros.messages import DiagnosticStatus, Header, Marker, Time
from keygrid_ros.perception import outputs
from keygrid_ros.perception.detector import Detection, segment_pairs
from keygrid_ros.perception.pointcloud2 import read_xyz


@pytest.fixture
def detection():
    keypoints = np.arange(24, dtype=np.float64).reshape(8, 3) / 100
    strengths = np.zeros(28)
    strengths[[0, 5, 27]] = (0.9, 0.3, 0.1)  # two drawn, one below MIN_SEGMENT_STRENGTH
    return Detection(reason=None, names=tuple(f'n{i}' for i in range(8)), keypoints=keypoints,
                     confidence=np.linspace(0, 1, 8), strengths=strengths, pairs=segment_pairs(8),
                     position=np.array([0.1, 0.2, 0.3]), orientation=np.array([0.0, 0.0, 0.0, 1.0]),
                     pose_method='kabsch', points=np.ones((50, 3), np.float32), ms={'model': 3.0, 'total': 9.0},
                     stage_points={'crop': 100})


@pytest.fixture
def header():
    return outputs.output_header(Header(stamp=Time(sec=12, nanosec=34), frame_id='camera'), 'base_link')


def test_header_keeps_the_input_stamp_and_takes_the_output_frame(header):
    assert (header.stamp.sec, header.stamp.nanosec, header.frame_id) == (12, 34, 'base_link')


def test_pose_array_index_is_the_keypoint_id(header, detection):
    poses = outputs.keypoints_pose_array(header, detection)
    assert poses.header is header
    assert [(p.position.x, p.position.y, p.position.z) for p in poses.poses] == [tuple(k) for k in
                                                                                  detection.keypoints]
    assert all(p.orientation.w == 1.0 for p in poses.poses)
    pose = outputs.garment_pose_stamped(header, detection)
    assert (pose.pose.position.x, pose.pose.position.z, pose.pose.orientation.w) == (0.1, 0.3, 1.0)


def test_markers_delete_all_first_then_stable_ids(header, detection):
    markers = outputs.marker_array(header, detection).markers
    head = markers[:len(outputs.NAMESPACES)]
    assert all(m.action == Marker.DELETEALL for m in head)
    assert {m.ns for m in head} == set(outputs.NAMESPACES)
    rest = markers[len(head):]
    assert all(m.action == Marker.ADD and m.header is header for m in rest)
    spheres = [m for m in rest if m.ns == outputs.NS_KEYPOINTS]
    labels = [m for m in rest if m.ns == outputs.NS_LABELS]
    assert [m.id for m in spheres] == list(range(8)) and all(m.type == Marker.SPHERE for m in spheres)
    assert [m.text for m in labels] == [f'{i} n{i}' for i in range(8)]
    assert len({(m.r, m.g, m.b) for m in (s.color for s in spheres)}) == 8  # coloured by id
    assert spheres[7].color.a > spheres[0].color.a  # more confident = more opaque
    (skeleton,) = [m for m in rest if m.ns == outputs.NS_SKELETON]
    assert skeleton.type == Marker.LINE_LIST and len(skeleton.points) == 4 and len(skeleton.colors) == 4
    assert [c.a for c in skeleton.colors] == [0.9, 0.9, 0.3, 0.3]
    # ids unique per namespace (RViz keys markers by (ns, id))
    keys = [(m.ns, m.id) for m in rest]
    assert len(keys) == len(set(keys))
    # same detection -> same ids next frame
    assert keys == [(m.ns, m.id) for m in outputs.marker_array(header, detection).markers[len(head):]]


def test_failed_frame_gives_only_delete_all(header):
    failed = Detection(reason='no garment', names=())
    markers = outputs.marker_array(header, failed).markers
    assert markers and all(m.action == Marker.DELETEALL for m in markers)
    assert outputs.keypoints_pose_array(header, failed).poses == []
    assert outputs.garment_pose_stamped(header, failed) is None
    assert outputs.keypoint_transforms(header, failed).transforms == []


def test_tf_frames_and_cropped_cloud(header, detection):
    tf = outputs.keypoint_transforms(header, detection).transforms
    assert [t.child_frame_id for t in tf] == [f'keygrid_kp_{i}' for i in range(8)]
    assert all(t.header.frame_id == 'base_link' for t in tf)
    assert tf[2].transform.translation.y == detection.keypoints[2, 1]
    cloud = outputs.cropped_cloud(header, detection)
    assert cloud.header is header and read_xyz(cloud).shape == (50, 3)


def test_diagnostics_values_are_strings(header, detection):
    values = outputs.detection_values(detection)
    array = outputs.diagnostic_array(header, 'keygrid_detector: detection', DiagnosticStatus.OK, 'ok',
                                     dict(values, rate=float('nan')))
    (status,) = array.status
    kv = {v.key: v.value for v in status.values}
    assert kv['ms.model'] == '3.000' and kv['points.crop'] == '100' and kv['rate'] == 'nan'
    assert kv['pose_method'] == 'kabsch'


def test_rviz_config_shows_the_node_topics_and_namespaces():
    from pathlib import Path

    import yaml

    from keygrid_ros.ros.bag_transport import resolve_topic
    from keygrid_ros.ros.node import OUTPUTS

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / 'config' / 'keygrid.rviz').read_text())
    displays = config['Visualization Manager']['Displays']
    topics = {d['Topic']['Value'] for d in displays if isinstance(d.get('Topic'), dict)}
    for output in OUTPUTS:
        if output.name not in ('/tf', '/diagnostics'):
            assert resolve_topic(output.name) in topics, output.name
    (markers,) = [d for d in displays if d['Class'] == 'rviz_default_plugins/MarkerArray']
    assert set(markers['Namespaces']) == set(outputs.NAMESPACES)
