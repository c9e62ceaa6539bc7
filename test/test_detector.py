"""Detector: cloud + transform in, keypoints on the garment in the target frame out; failures named."""

from __future__ import annotations

from node_fixtures import StubModel, garment_distance, random_keygrid_file, synthetic_cloud, table_from_camera
import numpy as np
import pytest

from keygrid_ros.perception.detector import (
    Detector,
    ModelLoadError,
    load_model,
    resolve_device,
    segment_pairs,
)
from keygrid_ros.perception.pointcloud2 import read_xyz
from keygrid_ros.perception.preprocess import PreprocessConfig


@pytest.fixture(scope='module')
def points():
    return read_xyz(synthetic_cloud(), skip_nans=False)


@pytest.mark.parametrize('mode', ['snapped', 'hard'])
def test_keypoints_lie_on_the_garment_in_the_target_frame(points, mode):
    detection = Detector(StubModel(), keypoint_mode=mode)(points, table_from_camera())
    assert detection.ok, detection.reason
    assert detection.keypoints.shape == (8, 3)
    # Snapped and hard modes: keypoints are input points of the isolated garment...
    gaps = np.linalg.norm(detection.keypoints[:, None] - detection.points[None], axis=-1).min(axis=1)
    assert gaps.max() < 1e-6
    # ...which lie on the cloth, except the synthetic camera's flying pixels at the garment border (up to 5 %
    # of the depth behind it; the stub's FPS keypoints like such extremes).
    distance = garment_distance(detection.keypoints)
    assert np.median(distance) < 0.005 and distance.max() < 0.02
    assert detection.names == tuple(f'stub_{i}' for i in range(8))
    assert ((0 <= detection.confidence) & (detection.confidence <= 1)).all()
    assert detection.pairs.shape == (28, 2) and detection.strengths.shape == (28,)
    assert np.isclose(np.linalg.norm(detection.orientation), 1.0)
    assert abs(detection.position[2]) < 0.05  # centroid of a garment lying on the table (z = 0)
    for stage in ('crop', 'voxel', 'table', 'cluster', 'sample', 'model', 'postprocess', 'total'):
        assert stage in detection.ms


def test_soft_mode_denormalises_the_model_answer(points):
    class Centre(StubModel):
        def predict(self, pts):
            keypoints, weights, strengths = super().predict(pts)
            return np.zeros_like(keypoints), weights, strengths  # the centre of the normalised cube

    detection = Detector(Centre(), keypoint_mode='soft')(points, table_from_camera())
    lo, hi = detection.points.min(), detection.points.max()
    assert np.allclose(detection.keypoints, (lo + hi) / 2, atol=1e-5)  # scalar min/max normalisation


def test_keypoint_modes_read_the_weights_as_documented(points):
    """Weights peak on input point 5 while the weighted mean sits between input points 0 and 1."""
    class Split(StubModel):
        def predict(self, pts):
            _, weights, strengths = super().predict(pts)
            keypoints = np.repeat(0.5 * (pts[:1] + pts[1:2]), self.num_keypoints, axis=0)  # (K, 3) normalised
            weights = np.zeros_like(weights)
            weights[:, 5] = 1.0
            return keypoints, weights, strengths

    cloud = {mode: Detector(Split(), keypoint_mode=mode)(points, table_from_camera())
             for mode in ('hard', 'soft', 'snapped')}
    model_input = cloud['hard'].points  # (N, 3) target frame, the model's input in its order
    np.testing.assert_allclose(cloud['hard'].keypoints, np.repeat(model_input[5:6], 8, 0), atol=1e-6)
    np.testing.assert_allclose(cloud['soft'].keypoints, np.repeat(0.5 * (model_input[:1] + model_input[1:2]), 8, 0),
                               atol=1e-5)
    # Snapped: the input point nearest to the weighted mean, by brute force.
    nearest = min(range(len(model_input)), key=lambda i: np.linalg.norm(model_input[i] - cloud['soft'].keypoints[0]))
    np.testing.assert_allclose(cloud['snapped'].keypoints, np.repeat(model_input[nearest:nearest + 1], 8, 0))
    with pytest.raises(ValueError, match='keypoint_mode'):
        Detector(StubModel(), keypoint_mode='argmax')


def test_smoothing_and_reset_when_the_garment_is_lost(points):
    detector = Detector(StubModel(), smoothing=0.5)
    first = detector(points, table_from_camera()).keypoints
    moved = np.array(points, copy=True)
    moved[:, 0] += 0.02  # camera x: shifts the garment in the table frame
    second = detector(moved, table_from_camera()).keypoints
    raw = Detector(StubModel())(moved, table_from_camera()).keypoints
    assert np.allclose(second, 0.5 * first + 0.5 * raw, atol=1e-6)
    assert not detector(points[:10], table_from_camera()).ok  # lost: smoother resets
    assert np.allclose(detector(moved, table_from_camera()).keypoints, raw)


def test_each_frame_hands_its_garment_to_the_next_and_a_reset_forgets_it(points, monkeypatch):
    detector = Detector(StubModel())
    handed = []
    call = type(detector.preprocess).__call__
    monkeypatch.setattr(type(detector.preprocess), '__call__',
                        lambda self, cloud, transform=None, previous=None, robot=None: (
                            handed.append(previous), call(self, cloud, transform, previous, robot))[1])
    first = detector.preprocess(points, table_from_camera())  # what the detector's first frame will see
    detector(points, table_from_camera())
    detector(points, table_from_camera())
    assert handed[1] is None and np.array_equal(handed[2], first.garment)
    assert len(first.garment) == first.report.points['cluster'] > len(first.points)  # all of it, not the sample
    detector.reset()
    detector(points, table_from_camera())
    assert handed[3] is None
    assert not detector(points[:10], table_from_camera()).ok  # a lost garment is forgotten too
    detector(points, table_from_camera())
    assert handed[5] is None


def test_failures_are_reasons_not_exceptions(points):
    detector = Detector(StubModel())
    empty = detector(np.full((100, 3), np.nan, np.float32), None)
    assert not empty.ok and 'crop box' in empty.reason
    no_table = Detector(StubModel(), PreprocessConfig(table_min_inlier_ratio=0.99))(points, table_from_camera())
    assert not no_table.ok and 'table' in no_table.reason
    broken = Detector(StubModel(fail=True))(points, table_from_camera())
    assert not broken.ok and 'model failed' in broken.reason and 'stub model failure' in broken.reason


def test_live_reconfiguration_takes_effect_next_frame(points):
    detector = Detector(StubModel())
    assert detector(points, table_from_camera()).ok
    detector.configure(PreprocessConfig(crop_min=(2.0, 2.0, 2.0), crop_max=(3.0, 3.0, 3.0)))
    assert 'crop box' in detector(points, table_from_camera()).reason


def test_random_keygrid_model_file_end_to_end(points, tmp_path):
    model = load_model(random_keygrid_file(tmp_path / 'random.safetensors'), device='cpu')
    detection = Detector(model, PreprocessConfig(num_points=512))(points, table_from_camera())
    assert detection.ok, detection.reason
    assert detection.keypoints.shape == (8, 3)
    assert garment_distance(detection.keypoints).max() < 0.01
    assert detection.names == ('kp0', 'kp1', 'kp2', 'kp3', 'kp4', 'kp5', 'kp6', 'kp7')
    assert 0 < detection.confidence.max() < 1  # soft weights reached the confidence


def test_canonicalize_reaches_the_key_grid_model_and_is_validated(points, tmp_path):
    path = random_keygrid_file(tmp_path / 'random.safetensors')
    model = load_model(path, device='cpu', canonicalize='frame')
    assert model.model.canonicalize == 'frame'  # the wrapper turns clouds itself (test_canonical.py)
    assert Detector(model, PreprocessConfig(num_points=512))(points, table_from_camera()).ok
    with pytest.raises(ModelLoadError, match='canonicalize'):
        load_model(path, device='cpu', canonicalize='gravity')


def test_model_loading_errors_name_the_file(tmp_path):
    with pytest.raises(ModelLoadError, match='not found'):
        load_model(tmp_path / 'missing.safetensors')
    corrupt = tmp_path / 'corrupt.safetensors'
    corrupt.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00not json at all')
    with pytest.raises(ModelLoadError, match='corrupt.safetensors'):
        load_model(corrupt)
    with pytest.raises(ModelLoadError, match='model_type'):
        load_model(corrupt, model_type='pointnet')


def test_device_resolution():
    device, warning = resolve_device('auto')
    assert device in ('cpu', 'cuda')
    assert (warning is None) == (device == 'cuda')
    assert resolve_device('cpu') == ('cpu', None)
    with pytest.raises(ValueError):
        resolve_device('tpu:7')


def test_segment_pairs_follow_triu_order():
    assert segment_pairs(4).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]


def test_useek_student_file_through_the_same_detector(points, tmp_path):
    import torch

    from keygrid_ros.model.sprin import SPRINConfig, SPRINSeg
    from keygrid_ros.model.student import save_student

    torch.manual_seed(0)
    path = save_student(tmp_path / 'student.safetensors', SPRINSeg(SPRINConfig.tiny(num_keypoints=4)),
                        teacher={'file': 'teacher.safetensors'})
    with pytest.raises(ModelLoadError, match='model_type'):
        load_model(path, model_type='keygrid')
    model = load_model(path, model_type='useek')
    detection = Detector(model, PreprocessConfig(num_points=256))(points, table_from_camera())
    assert detection.ok, detection.reason
    assert detection.keypoints.shape == (4, 3) and garment_distance(detection.keypoints).max() < 0.01
    assert detection.strengths.shape == (6,)
