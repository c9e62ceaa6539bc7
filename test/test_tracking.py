"""The keypoint tracker: batched Kabsch against per-segment motions, ICP on known rigid motions, a folded flap,
fusion arithmetic, resets, and its use in the detector and the evaluator."""

from __future__ import annotations

import numpy as np
import pytest

from keygrid_ros import params
from keygrid_ros.perception.detector import Detector
from keygrid_ros.perception.tracking import KeypointTracker, TrackerConfig, batched_kabsch
from keygrid_ros.train.evaluate import FramePredictions, track_predictions


def rotation(axis, angle: float) -> np.ndarray:
    """Rodrigues' formula: (3, 3) rotation by ``angle`` about ``axis``."""
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def garment_like(seed: int = 0, count: int = 1500) -> np.ndarray:
    """(count, 3) an L-shaped sheet with a bump: no symmetry, so a registration has one answer."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform([0, 0], [0.5, 0.4], (count * 2, 2))
    xy = xy[(xy[:, 0] < 0.2) | (xy[:, 1] < 0.15)][:count]
    z = 0.03 * np.exp(-((xy[:, 0] - 0.1) ** 2 + (xy[:, 1] - 0.3) ** 2) / 0.002)
    return np.column_stack([xy, z])


def test_batched_kabsch_recovers_each_segments_motion():
    rng = np.random.default_rng(1)
    sizes = [5, 40, 300]
    sources = [rng.normal(size=(n, 3)) for n in sizes]
    motions = [(rotation(rng.normal(size=3), rng.uniform(-3, 3)), rng.normal(size=3)) for _ in sizes]
    targets = [s @ r.T + t for s, (r, t) in zip(sources, motions)]
    starts = np.array([0, 5, 45])
    rot, trans = batched_kabsch(np.concatenate(sources), np.concatenate(targets), starts)
    for j, (r, t) in enumerate(motions):
        np.testing.assert_allclose(rot[j], r, atol=1e-9)
        np.testing.assert_allclose(trans[j], t, atol=1e-9)
    # A mirrored target has no rotation that fits it; the answer must still be a rotation, not a reflection.
    mirrored = sources[2] * np.array([1, 1, -1])
    rot, _ = batched_kabsch(sources[2], mirrored, np.array([0]))
    assert np.linalg.det(rot[0]) == pytest.approx(1.0)


@pytest.mark.parametrize('method', ['cpd', 'icp'])
def test_keypoints_follow_a_rigid_motion_whatever_the_detector_says(method):
    cloud = garment_like()
    keypoints = cloud[[10, 200, 900, 1400]]
    tracker = KeypointTracker(TrackerConfig(method=method, start_frames=1))
    tracker(cloud, keypoints)
    step = rotation([0.2, 0.1, 1.0], np.radians(2.0)), np.array([0.01, -0.005, 0.002])
    r, t = np.eye(3), np.zeros(3)
    rng = np.random.default_rng(3)
    for _ in range(10):
        r, t = step[0] @ r, step[0] @ t + step[1]
        moved = cloud @ r.T + t
        order = rng.permutation(len(moved))  # a sensor gives the points in any order
        state = tracker(moved[order], rng.uniform(-1, 1, keypoints.shape))  # detections far off: ignored
    # icp: exact up to the surface projection, whose local plane misses a point on the bump by under a millimetre.
    # cpd: the nodes a keypoint rides settle onto the mixture's fit of the cloud in the first frames (a bounded
    # offset: 40 frames of this motion stay under 9 mm), then follow the motion.
    np.testing.assert_allclose(state, keypoints @ r.T + t, atol=1e-3 if method == 'icp' else 1e-2)
    assert not tracker.lost.any()


def folding_sheet(angle: float, grid: int = 41) -> np.ndarray:
    """(grid * grid // 2, 3) a 0.4 x 0.2 m sheet whose half x > 0.2 is turned by ``angle`` about the line x = 0.2
    (pi lays it on the other half, 5 mm above it). Point i is the same spot of the cloth at every angle."""
    x, y = np.meshgrid(np.linspace(0, 0.4, grid), np.linspace(0, 0.2, grid // 2))
    points = np.column_stack([x.ravel(), y.ravel(), np.zeros(x.size)])
    flap = points[:, 0] > 0.2
    rel = points[flap] - [0.2, 0, 0]
    lift = 0.005 * np.sin(angle / 2) ** 8
    points[flap] = rel @ rotation([0, -1, 0], angle).T + [0.2, 0, lift]
    return points


@pytest.mark.parametrize('method', ['cpd', 'icp'])
def test_a_folded_flap_keeps_its_keypoint_where_the_outline_does_not(method):
    angles = np.linspace(0, np.pi, 61)
    tracker = KeypointTracker(TrackerConfig(method=method, start_frames=1))
    corner = None
    for angle in angles:
        sheet = folding_sheet(angle)
        rightmost = sheet[np.argmax(sheet[:, 0] + 1e-3 * sheet[:, 1])]  # a per-frame "extreme point" detector
        state = tracker(sheet, rightmost[None])
        if corner is None:
            corner = np.argmax(sheet[:, 0] + 1e-3 * sheet[:, 1])  # the flap's corner, index fixed over frames
    # The tracked keypoint is the flap's corner, now laid over the sheet's left edge; the detector ended on the
    # fold line.
    # icp: within a grid step (1 cm); cpd rides nodes a few centimetres apart, interpolated: within two.
    assert np.linalg.norm(state[0] - sheet[corner]) < (0.01 if method == 'icp' else 0.02)
    assert np.linalg.norm(rightmost - sheet[corner]) > 0.15


def test_the_gate_pulls_by_the_detection_weight_and_ignores_far_detections():
    cloud = garment_like()
    start = cloud[[100, 700]]
    tracker = KeypointTracker(TrackerConfig(method='icp', gate=0.05, detection_weight=0.25, start_frames=1))
    tracker(cloud, start)
    detections = start + np.array([[0.02, 0, 0], [0.2, 0, 0]])  # inside the gate, outside it
    state = tracker(cloud, detections)  # the cloud did not move
    np.testing.assert_allclose(state[0], start[0] + 0.25 * np.array([0.02, 0, 0]), atol=1e-4)
    np.testing.assert_allclose(state[1], start[1], atol=1e-4)  # the surface projection: microns on the bump


def test_a_lost_keypoint_takes_its_detection_and_a_reset_restarts():
    cloud = garment_like()
    tracker = KeypointTracker(TrackerConfig(method='icp', max_residual=1e-4, start_frames=1))
    tracker(cloud, cloud[[5, 50]])
    rng = np.random.default_rng(0)
    other = garment_like(seed=1) + rng.normal(0, 0.01, (1500, 3))  # resampled and noisy: patches do not fit
    detections = other[[9, 99]]
    np.testing.assert_allclose(tracker(other, detections), detections)
    assert tracker.lost.all()
    tracker.reset()
    assert not tracker.tracking
    np.testing.assert_allclose(tracker(cloud, cloud[[1, 2, 3]]), cloud[[1, 2, 3]])  # a new K starts afresh too


@pytest.mark.parametrize('method', ['cpd', 'icp'])
def test_merged_tracks_are_reseeded_from_the_detection_farther_away(method):
    cloud = garment_like()
    tree_order = np.argsort(np.linalg.norm(cloud - cloud[0], axis=1))
    a, b, far = cloud[tree_order[0]], cloud[tree_order[3]], cloud[np.argmax(np.linalg.norm(cloud - cloud[0], axis=1))]
    assert np.linalg.norm(a - b) < 0.03
    tolerance = 1e-4 if method == 'icp' else 3e-3  # cpd's nodes settle onto the mixture's fit of the cloud
    for separation, expected_b in ((0.03, far), (0.0, b)):
        tracker = KeypointTracker(TrackerConfig(method=method, min_separation=separation, start_frames=1))
        tracker(cloud, np.stack([a, b]))  # the detector put two keypoints on the same spot of cloth
        state = tracker(cloud, np.stack([a, far]))  # now it tells them apart; the tracks did not move
        np.testing.assert_allclose(state[0], a, atol=tolerance)
        np.testing.assert_allclose(state[1], expected_b, atol=tolerance)
        assert tracker.lost.tolist() == [False, separation > 0]


def test_cpd_tracks_brought_together_by_a_fold_are_not_merged():
    # Two keypoints on mirror spots of a sheet folded in half: the fold lays one 5 mm over the other. They ride
    # different nodes (different cloth), so neither is re-seeded from the detector, which still reports where
    # they started (a stale detector: taking it would move the flap's keypoint off the cloth).
    start = folding_sheet(0.0)
    on_flap = np.argmin(np.linalg.norm(start - [0.33, 0.1, 0], axis=1))
    under = np.argmin(np.linalg.norm(start - [0.07, 0.1, 0], axis=1))
    tracker = KeypointTracker(TrackerConfig(method='cpd', start_frames=1, min_separation=0.03))
    for angle in np.linspace(0, np.pi, 61):
        sheet = folding_sheet(angle)
        state = tracker(sheet, start[[on_flap, under]])
        assert not tracker.lost.any()
    assert np.linalg.norm(sheet[on_flap] - sheet[under]) < 0.03  # they did come together
    assert np.linalg.norm(state[0] - sheet[on_flap]) < 0.02
    # The keypoint under the flap moves a little (measured: 2 cm; 2.2 before the kernel over the cloth): the
    # nodes around it shuffle along the cloth while the flap's points arrive over them.
    assert np.linalg.norm(state[1] - sheet[under]) < 0.03


@pytest.mark.parametrize('method', ['cpd', 'icp'])
def test_tracks_start_from_steady_detections_only(method):
    cloud = garment_like()
    a, jump = cloud[[100, 700]], cloud[[1400, 300]]
    tracker = KeypointTracker(TrackerConfig(method=method, start_frames=3))
    for detections, tracking_after in ((a, False), (jump, False), (jump, False), (jump, True)):
        np.testing.assert_allclose(tracker(cloud, detections), detections)  # still settling: the detections
        assert tracker.tracking is tracking_after
    # Tracking: the cloth did not move (cpd's nodes settle onto the mixture's fit of the cloud: a millimetre).
    np.testing.assert_allclose(tracker(cloud, a), jump, atol=1e-4 if method == 'icp' else 2e-3)


def test_a_keypoint_whose_cloth_is_covered_waits_under_the_flap():
    x, y = np.meshgrid(np.linspace(0, 0.4, 41), np.linspace(0, 0.2, 21))
    flat = np.column_stack([x.ravel(), y.ravel(), np.zeros(x.size)])
    keypoint = np.array([[0.155, 0.1, 0.0]])
    tracker = KeypointTracker(TrackerConfig(method='icp', start_frames=1, patch_radius=0.1))
    tracker(flat, keypoint)
    for height, hidden in ((0.03, True), (0.02, True), (0.01, False)):
        # One camera above: a 5 cm band of cloth lies over the keypoint's, which it no longer sees; the rest of
        # the patch is seen where it was.
        seen = flat.copy()
        band = (seen[:, 0] > 0.125) & (seen[:, 0] < 0.185)
        seen[band, 2] = height
        state = tracker(seen, keypoint + [0.2, 0, 0])  # the detector jumped elsewhere: not followed
        assert tracker.hidden.tolist() == [hidden]
        expected = [0.155, 0.1, 0.0] if hidden else [0.155, 0.1, height]  # waits, then is on the band, now down
        np.testing.assert_allclose(state[0], expected, atol=3e-3)


@pytest.mark.parametrize('bad', [dict(patch_radius=0), dict(iterations=0), dict(max_residual=-1), dict(gate=-0.1),
                                 dict(detection_weight=1.5), dict(min_separation=-0.01),
                                 dict(hide_distance=0), dict(start_frames=0),
                                 dict(balance=-0.1), dict(balance=11.0)])
def test_settings_out_of_range_are_refused(bad):
    with pytest.raises(ValueError, match='tracking'):
        TrackerConfig(**bad)


def test_malformed_input_is_refused_with_a_clear_error():
    tracker = KeypointTracker()
    with pytest.raises(ValueError, match='points'):
        tracker(np.zeros((3, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match='detections'):
        tracker(garment_like(), np.zeros((2, 2)))


def test_node_parameters_build_the_settings():
    values = params.defaults()
    assert TrackerConfig.from_params(values) is None  # off by default
    values.update({'tracking.enabled': True, 'tracking.patch_radius': 0.08, 'tracking.gate': 0.02})
    config = TrackerConfig.from_params(values)
    assert (config.patch_radius, config.gate, config.max_residual, config.min_separation) == (0.08, 0.02, 0.03, 0.03)


class FixedModel:
    """A model whose keypoint is always the normalised cloud's largest-x point (an outline detector)."""

    def predict(self, points):
        weights = np.zeros((1, len(points)), np.float32)
        weights[0, np.argmax(points[:, 0] + 1e-3 * points[:, 1])] = 1.0
        return points[weights.argmax(1)], weights, np.zeros(0, np.float32)


@pytest.mark.parametrize('method', ['cpd', 'icp'])
def test_the_detector_tracks_the_flap_and_snaps_to_the_cloud(method):
    from keygrid_ros.perception.preprocess import PreprocessConfig

    config = PreprocessConfig(crop_enabled=False, table_enabled=False, cluster_enabled=False, voxel_size=0.0,
                              num_points=820, min_points=16)  # all 820: integration, not resampling
    tracked = Detector(FixedModel(), config, keypoint_mode='snapped', tracking=TrackerConfig(method=method))
    per_frame = Detector(FixedModel(), config, keypoint_mode='snapped')
    for angle in np.linspace(0, np.pi, 61):
        sheet = folding_sheet(angle)
        a, b = tracked(sheet), per_frame(sheet)
    corner = folding_sheet(np.pi)[np.argmax(folding_sheet(0)[:, 0] + 1e-3 * folding_sheet(0)[:, 1])]
    assert np.linalg.norm(a.keypoints[0] - corner) < 0.02
    assert np.linalg.norm(b.keypoints[0] - corner) > 0.15
    assert (np.linalg.norm(a.points - a.keypoints[0], axis=1) < 1e-12).any()  # snapped: a point of the cloud
    tracked.reset()
    assert not tracked.tracker.tracking
    tracked.configure(tracking=None)
    assert tracked.tracker is None


@pytest.mark.parametrize('method', ['cpd', 'icp'])
def test_track_predictions_follows_the_clouds_in_order(method):
    angles = np.linspace(0, np.pi, 61)
    clouds = np.stack([folding_sheet(a) for a in angles])  # (T, N, 3), point i the same cloth throughout
    first = folding_sheet(0)
    corner = int(np.argmax(first[:, 0] + 1e-3 * first[:, 1]))
    detections = clouds[np.arange(len(angles)), np.argmax(clouds[..., 0] + 1e-3 * clouds[..., 1], axis=1)][:, None]
    samples = np.tile(np.arange(clouds.shape[1]), (len(angles), 1))
    pred = FramePredictions(np.arange(len(angles)), detections, np.zeros((len(angles), 1), np.int64), samples,
                            clouds)
    tracked = track_predictions(pred, TrackerConfig(method=method))
    # On the corner's own point (icp) or within two grid steps of it (cpd) nearly throughout.
    off = np.linalg.norm(clouds[np.arange(len(angles)), tracked.vertex_indices[:, 0]] - clouds[:, corner], axis=1)
    assert (off < (1e-9 if method == 'icp' else 0.02)).mean() > 0.9
    with pytest.raises(ValueError, match='clouds'):
        track_predictions(pred._replace(clouds=None), TrackerConfig(method=method))
