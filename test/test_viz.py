"""``keygrid viz``: it reads back exactly what the node published, and draws it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from keygrid_ros.cli import main
from keygrid_ros.data.sequences import Sequence, save_sequence
from keygrid_ros.messages import Header, MarkerArray, Time
from keygrid_ros.perception import outputs
from keygrid_ros.perception.detector import Detection
from keygrid_ros.perception.pointcloud2 import create_cloud_xyz32
from keygrid_ros.ros.rosbag_io import BagWriter
from keygrid_ros.viz import choose, draw_strip, frames_from_bag, frames_from_predict

K = 5


def _detection(rng: np.random.Generator, ok: bool = True) -> Detection:
    if not ok:
        return Detection(reason='no garment: test', names=())
    keypoints = rng.uniform(-0.3, 0.3, (K, 3))
    pairs = np.array([(i, j) for i in range(K) for j in range(i + 1, K)])
    strengths = np.linspace(0.0, 1.0, len(pairs))  # the weakest are below the drawing threshold
    return Detection(reason=None, names=tuple(f'name{i}' for i in range(K)), keypoints=keypoints,
                     confidence=np.linspace(0.2, 1.0, K), strengths=strengths, pairs=pairs,
                     position=keypoints.mean(axis=0), orientation=np.array([0.0, 0.0, 0.0, 1.0]),
                     points=rng.uniform(-0.3, 0.3, (300, 3)))


@pytest.fixture
def output_bag(tmp_path, rng):
    """A bag as the node writes it: markers for every frame, cropped points for the detected ones."""
    path = tmp_path / 'out_bag'
    detections = [_detection(rng, ok=(i != 2)) for i in range(5)]
    with BagWriter(path) as bag:
        for i, det in enumerate(detections):
            stamp = 1_700_000_000_000_000_000 + i * 100_000_000
            header = Header(Time.from_ns(stamp), 'table')
            bag.write('/keygrid_detector/markers', outputs.marker_array(header, det), stamp)
            if det.ok:
                bag.write('/keygrid_detector/cropped_points', outputs.cropped_cloud(header, det), stamp)
                bag.write('/keypoints', outputs.keypoints_pose_array(header, det), stamp)
    return path, detections


def test_frames_from_bag_returns_the_published_keypoints_colours_and_skeleton(output_bag):
    path, detections = output_bag
    views = frames_from_bag(path)
    found = [d for d in detections if d.ok]
    assert len(views) == len(found)  # the failed frame carried only DELETEALLs
    for view, det in zip(views, found):
        np.testing.assert_allclose(view.keypoints, det.keypoints, atol=1e-9)
        np.testing.assert_allclose(view.points, det.points, atol=1e-6)  # float32 on the wire
        np.testing.assert_allclose(view.colors[:, :3], outputs.PALETTE[:K], atol=1e-6)
        np.testing.assert_allclose(view.colors[:, 3], 0.35 + 0.65 * det.confidence, atol=1e-6)
        strong = det.strengths >= outputs.MIN_SEGMENT_STRENGTH
        assert len(view.segments) == int(strong.sum())
        np.testing.assert_allclose(view.segment_alpha, det.strengths[strong], atol=1e-6)
        first = det.pairs[np.flatnonzero(strong)[0]]
        np.testing.assert_allclose(view.segments[0], det.keypoints[first], atol=1e-9)
        assert view.names == [f'name{i}' for i in range(K)]
        assert view.frame_id == 'table'
    assert [v.stamp_ns for v in views] == sorted(v.stamp_ns for v in views)


def test_viz_cli_writes_a_png_from_an_output_bag(output_bag, tmp_path, capsys):
    path, _ = output_bag
    png = tmp_path / 'strip.png'
    assert main(['viz', '--bag', str(path), '--png', str(png), '--frames', '3']) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report == {'png': str(png), 'frames_with_keypoints': 4, 'drawn': 3, 'drawn_with_points': 3}
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_viz_reads_predict_files_against_their_sequence(tmp_path, rng):
    vertices = rng.uniform(-0.3, 0.3, (6, 50, 3)).astype(np.float32)
    save_sequence(tmp_path / 'seq.npz', Sequence(vertices=vertices))
    keypoints = vertices[:, :K]
    np.savez(tmp_path / 'kp.npz', keypoints=keypoints, keypoint_names=np.array([f'k{i}' for i in range(K)]),
             vertex_indices=np.tile(np.arange(K), (6, 1)), frames=np.arange(6))
    views = frames_from_predict(tmp_path / 'kp.npz', tmp_path / 'seq.npz')
    assert [v.stamp_ns for v in views] == list(range(6))
    np.testing.assert_allclose(views[4].points, vertices[4], atol=1e-7)
    np.testing.assert_allclose(views[4].keypoints, keypoints[4], atol=1e-7)
    assert [v.stamp_ns for v in choose(views, 3)] == [0, 2, 5]  # round(2.5) = 2
    assert draw_strip(choose(views, 3), tmp_path / 'p.png').stat().st_size > 1000
    short = tmp_path / 'short.npz'
    np.savez(short, keypoints=np.zeros((1, K, 3)), frames=np.array([9]))
    with pytest.raises(ValueError, match='only 6 frames'):
        frames_from_predict(short, tmp_path / 'seq.npz')


def test_choose_spreads_evenly_and_keeps_the_ends():
    views = list(range(22))
    picked = choose(views, 6)
    assert picked[0] == 0 and picked[-1] == 21 and len(picked) == 6
    assert np.all(np.diff(picked) >= 4)
    assert choose(views[:3], 6) == [0, 1, 2]


def test_viz_cli_errors_are_clear(tmp_path, capsys):
    assert main(['viz', '--predict', 'kp.npz', '--png', str(tmp_path / 'x.png')]) == 2
    assert '--data' in capsys.readouterr().err
    empty = tmp_path / 'empty_bag'
    with BagWriter(empty) as bag:
        header = Header(Time.from_ns(1), 'cam')
        bag.write('/camera/points', create_cloud_xyz32(header, np.zeros((4, 3), np.float32)), 1)
    assert main(['viz', '--bag', str(empty), '--png', str(tmp_path / 'x.png')]) == 1
    assert 'no keygrid output topics' in capsys.readouterr().err
    markers_only_failures = tmp_path / 'failed_bag'
    with BagWriter(markers_only_failures) as bag:
        header = Header(Time.from_ns(1), 'table')
        bag.write('/keygrid_detector/markers', MarkerArray(markers=outputs.delete_all_markers(header)), 1)
    assert main(['viz', '--bag', str(markers_only_failures), '--png', str(tmp_path / 'x.png')]) == 1
    assert 'no frame has keypoints' in capsys.readouterr().err
