"""Post-processing math against independent expectations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from keygrid_ros.perception.postprocess import (
    KeypointSmoother,
    garment_pose,
    kabsch,
    keypoint_confidence,
    principal_axes,
    quaternion_from_matrix,
)


def test_confidence_is_one_for_one_hot_and_zero_for_uniform():
    weights = np.zeros((3, 100))
    weights[0, 7] = 1.0
    weights[1] = 1.0 / 100
    weights[2, :2] = 0.5
    confidence = keypoint_confidence(weights)
    assert confidence[0] == pytest.approx(1.0)
    assert confidence[1] == pytest.approx(0.0, abs=1e-6)
    assert confidence[2] == pytest.approx(1 - np.log(2) / np.log(100), rel=1e-5)


def test_kabsch_recovers_a_known_rotation(rng):
    source = rng.normal(size=(8, 3))
    rotation = Rotation.random(random_state=3).as_matrix()
    target = source @ rotation.T + np.array([0.3, -1.0, 2.0])
    np.testing.assert_allclose(kabsch(source, target), rotation, atol=1e-9)


def test_kabsch_never_returns_a_reflection(rng):
    source = rng.normal(size=(6, 3))
    mirrored = source * np.array([1.0, 1.0, -1.0])
    result = kabsch(source, mirrored)
    assert np.linalg.det(result) == pytest.approx(1.0)


def test_kabsch_refuses_collinear_points():
    line = np.outer(np.arange(5.0), [1.0, 2.0, 3.0])
    assert kabsch(line, line) is None
    assert kabsch(line[:2], line[:2]) is None


def test_quaternion_matches_scipy_for_random_rotations():
    for seed in range(50):
        rotation = Rotation.random(random_state=seed)
        q = quaternion_from_matrix(rotation.as_matrix())
        expected = rotation.as_quat()  # (x, y, z, w)
        expected = expected if expected[3] >= 0 else -expected
        np.testing.assert_allclose(q, expected, atol=1e-9)
    # the trace <= 0 branches: 180 degree turns about each axis
    for axis in np.eye(3):
        q = quaternion_from_matrix(Rotation.from_rotvec(np.pi * axis).as_matrix())
        np.testing.assert_allclose(np.abs(q), np.append(axis, 0.0), atol=1e-9)


def test_principal_axes_of_a_flat_rectangle(rng):
    points = np.column_stack([rng.uniform(-0.4, 0.4, 3000), rng.uniform(-0.1, 0.1, 3000), np.zeros(3000)])
    rotated = points @ Rotation.from_euler('z', 30, degrees=True).as_matrix().T
    axes = principal_axes(rotated)
    assert np.linalg.det(axes) == pytest.approx(1.0)
    np.testing.assert_allclose(axes[:, 2], [0, 0, 1], atol=1e-6)  # normal up
    assert np.degrees(np.arccos(abs(axes[0, 0]))) == pytest.approx(30, abs=1.0)  # major axis at 30 degrees


def test_garment_pose_uses_the_reference_layout_when_it_can(rng):
    reference = rng.normal(size=(8, 3))
    rotation = Rotation.random(random_state=11).as_matrix()
    keypoints = reference @ rotation.T + 1.0
    points = rng.normal(size=(500, 3))
    position, quaternion, method = garment_pose(points, keypoints, reference)
    assert method == 'kabsch'
    np.testing.assert_allclose(position, points.mean(axis=0))
    np.testing.assert_allclose(Rotation.from_quat(quaternion).as_matrix(), rotation, atol=1e-9)
    _, _, fallback = garment_pose(points, keypoints, None)
    assert fallback == 'principal_axes'


def test_smoother_passes_through_then_smooths_then_resets():
    smoother = KeypointSmoother(0.5)
    first = np.zeros((2, 3))
    np.testing.assert_array_equal(smoother(first), first)
    np.testing.assert_allclose(smoother(np.ones((2, 3))), 0.5)
    smoother.reset()
    np.testing.assert_array_equal(smoother(np.full((2, 3), 4.0)), 4.0)
    with pytest.raises(ValueError):
        KeypointSmoother(1.0)
