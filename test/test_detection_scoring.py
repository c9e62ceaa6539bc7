"""``keygrid evaluate --detections``: the node's published keypoints scored against rendered ground truth.

The expectations are independent of the metric code: keypoints riding their cloth through a rigid motion keep
every nearest-neighbour relation, so both DAS parts are 100; a pair of keypoints swapped in half the frames
gives those two keypoints (and the two ground-truth points they sit on) an agreement of 1/2 over ordered frame
pairs, so DAS = (6 + 2 * 0.5) / 8 = 87.5 with K = 8.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from keygrid_ros.cli import main
from keygrid_ros.data.sequences import Sequence, save_sequence
from keygrid_ros.messages import Header, Time
from keygrid_ros.perception import outputs
from keygrid_ros.perception.detector import Detection
from keygrid_ros.ros.rosbag_io import BagWriter
from keygrid_ros.train.detection_scoring import DetectionMatchError, evaluate_detections, match_detections
from keygrid_ros.viz import frames_from_bag

K = 8
T = 6
START_NS = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000


def brute_force_fps(points: np.ndarray, count: int) -> np.ndarray:
    """Farthest point sampling from the point farthest from the centroid, written out as a loop."""
    centroid = points.mean(axis=0)
    chosen = [max(range(len(points)), key=lambda i: np.linalg.norm(points[i] - centroid))]
    while len(chosen) < count:
        chosen.append(max(range(len(points)), key=lambda i: min(np.linalg.norm(points[i] - points[j])
                                                                 for j in chosen)))
    return np.array(chosen)


def moving_cloth(rng: np.random.Generator) -> Sequence:
    """Irregular flat cloth (no distance ties) turned and shifted rigidly over T frames, with render stamps."""
    flat = np.column_stack([rng.uniform(0.0, 0.5, (200, 2)), np.zeros(200)])
    frames = []
    for t in range(T):
        angle = 0.2 * t
        turn = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        frames.append(flat @ turn.T + np.array([0.03 * t, -0.02 * t, 0.01]))
    return Sequence(vertices=np.stack(frames).astype(np.float32), garment='tshirt', motion='drag',
                    info={'stamps_ns': [START_NS + t * PERIOD_NS for t in range(T)], 'frame_id': 'table'})


def detection(keypoints: np.ndarray) -> Detection:
    pairs = np.array([(0, 1), (1, 2)])
    return Detection(reason=None, names=tuple(f'kp{i}' for i in range(len(keypoints))), keypoints=keypoints,
                     confidence=np.ones(len(keypoints)), strengths=np.ones(len(pairs)), pairs=pairs,
                     position=keypoints.mean(axis=0), orientation=np.array([0.0, 0.0, 0.0, 1.0]))


def write_bag(path, keypoints_per_frame, frame_id='table', stamps=None, markers=False):
    """An output bag as the node writes it: ``keypoints_per_frame`` (K, 3) arrays or None (no garment)."""
    with BagWriter(path) as bag:
        for t, keypoints in enumerate(keypoints_per_frame):
            stamp = stamps[t] if stamps is not None else START_NS + t * PERIOD_NS
            header = Header(Time.from_ns(stamp), frame_id)
            det = detection(keypoints) if keypoints is not None else Detection(reason='no garment', names=())
            if markers:
                bag.write('/keygrid_detector/markers', outputs.marker_array(header, det), stamp)
            else:
                bag.write('/keypoints', outputs.keypoints_pose_array(header, det), stamp)
    return path


@pytest.fixture
def cloth(tmp_path, rng):
    seq = moving_cloth(rng)
    path = save_sequence(tmp_path / 'truth.npz', seq)
    ground_truth = brute_force_fps(seq.vertices[0].astype(np.float64), K)
    return seq, path, ground_truth


def test_keypoints_riding_their_cloth_score_100_with_full_coverage(tmp_path, cloth):
    seq, truth, gt = cloth
    bag = write_bag(tmp_path / 'riding', [seq.vertices[t, gt[::-1]] for t in range(T)])  # any keypoint order
    report = evaluate_detections([bag], [truth])
    assert report['das'] == pytest.approx(100.0)
    assert report['coverage'] == pytest.approx(1.0)
    assert (report['scored'], report['missed']) == (T, 0)
    assert report['sequences'][0]['ground_truth_vertices'] == gt.tolist()  # protocol B's FPS, chosen alike


def test_a_pair_swapped_in_half_the_frames_scores_87_5_through_the_markers(tmp_path, cloth):
    seq, truth, gt = cloth
    frames = []
    for t in range(T):
        keypoints = seq.vertices[t, gt].astype(np.float64)
        if t >= T // 2:
            keypoints[[0, 1]] = keypoints[[1, 0]]
        frames.append(keypoints)
    bag = write_bag(tmp_path / 'swapped', frames, markers=True)
    report = evaluate_detections([bag], [truth])
    assert report['das_forward'] == pytest.approx(87.5)
    assert report['das_backward'] == pytest.approx(87.5)
    assert report['das'] == pytest.approx(87.5)
    assert report['sequences'][0]['switches'][:2] == [1, 1]


def test_frames_without_a_garment_are_counted_and_not_scored(tmp_path, cloth):
    seq, truth, gt = cloth
    frames = [seq.vertices[t, gt] if t not in (0, 3) else None for t in range(T)]
    report = evaluate_detections([write_bag(tmp_path / 'gaps', frames)], [truth])
    assert (report['scored'], report['missed']) == (T - 2, 2)
    assert report['sequences'][0]['timeline'][0][0][1:] == [1, 5]  # first and last scored frame numbers
    assert report['das'] == pytest.approx(100.0)  # the ground truth is chosen on the first scored frame


def test_messages_out_of_order_are_put_back_in_frame_order(tmp_path, cloth):
    seq, truth, gt = cloth
    order = [3, 0, 5, 1, 4, 2]
    stamps = [START_NS + t * PERIOD_NS for t in order]
    views = frames_from_bag(write_bag(tmp_path / 'shuffled', [seq.vertices[t, gt] for t in order], stamps=stamps))
    assert [v.stamp_ns for v in views] == sorted(stamps)  # the bag reader sorts by stamp...
    pred = match_detections(views[::-1], seq)  # ...and so does the matcher, for views from anywhere else
    assert pred.frames.tolist() == list(range(T))
    np.testing.assert_allclose(pred.keypoints, seq.vertices[:, gt], atol=1e-6)
    assert (pred.vertex_indices == gt).all()


@pytest.mark.parametrize('case, message', [
    ('camera_frame', "target_frame:=table"),
    ('other_recording', 'not frame stamps of'),
    ('no_stamps', 'has no message stamps'),
    ('far_away', 'from the garment of'),
    ('nothing_found', 'no keypoints'),
])
def test_pairings_that_cannot_be_scored_are_refused_with_what_to_do(tmp_path, cloth, case, message):
    seq, truth, gt = cloth
    keypoints = [seq.vertices[t, gt] for t in range(T)]
    if case == 'camera_frame':
        bag = write_bag(tmp_path / case, keypoints, frame_id='camera_depth_optical_frame')
    elif case == 'other_recording':
        bag = write_bag(tmp_path / case, keypoints, stamps=[START_NS + t * 33_333_333 for t in range(T)])
    elif case == 'no_stamps':
        bag = write_bag(tmp_path / case, keypoints)
        seq.info.pop('stamps_ns')
        truth = save_sequence(tmp_path / 'no_stamps.npz', seq)
    elif case == 'far_away':
        bag = write_bag(tmp_path / case, [k + np.array([0.0, 0.0, 0.2]) for k in keypoints])
    else:
        bag = write_bag(tmp_path / case, [None] * T)
    with pytest.raises(DetectionMatchError, match=message):
        evaluate_detections([bag], [truth])


def test_views_that_repeat_a_stamp_or_hold_nan_are_refused(tmp_path, cloth):
    seq, truth, gt = cloth
    views = frames_from_bag(write_bag(tmp_path / 'riding', [seq.vertices[t, gt] for t in range(T)]))
    with pytest.raises(DetectionMatchError, match='share a stamp'):
        match_detections(views + views[:1], seq)
    views[2].keypoints[4] = np.nan
    with pytest.raises(DetectionMatchError, match=f'non-finite keypoints .first at stamp {START_NS + 2 * PERIOD_NS}'):
        match_detections(views, seq)


def test_the_cli_scores_bags_and_refuses_what_does_not_apply(tmp_path, cloth, capsys):
    seq, truth, gt = cloth
    bag = write_bag(tmp_path / 'riding', [seq.vertices[t, gt] for t in range(T)])
    assert main(['evaluate', '--detections', str(bag), '--data', str(truth), '--json']) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report['das'] == pytest.approx(100.0) and report['model'] == 'detections' and report['scored'] == T
    assert report['by_motion']['drag']['sequences'] == 1
    assert main(['evaluate', '--detections', str(bag), str(bag), '--data', str(truth)]) == 2
    assert 'one ground-truth file per bag' in capsys.readouterr().err
    assert main(['evaluate', '--detections', str(bag), '--data', str(truth), '--tracking', '--noise', '0.02']) == 2
    assert '--noise, --tracking do not apply' in capsys.readouterr().err
    assert main(['evaluate', '--detections', str(bag), '--data', str(truth), '--max-frames', '3']) == 2
    assert '--max-frames do not apply' in capsys.readouterr().err
    assert main(['evaluate', '--detections', str(tmp_path / 'missing'), '--data', str(truth)]) == 2
    assert 'no such bag' in capsys.readouterr().err
