"""The shape's own "up" and principal frame (model/canonical.py) and canonicalised Key-Grid inference."""

from __future__ import annotations

import math

import pytest
import torch

from keygrid_ros import ops
from keygrid_ros.model import KeyGrid, KeyGridConfig, KeypointModel, save_model
from keygrid_ros.model.canonical import canonicalize, principal_frame, rotation_to_z, up_direction
from keygrid_ros.normalize import Normalization

TINY = KeyGridConfig(
    num_keypoints=4, num_points=256, sa_npoints=(128, 64, 16, 8), sa_nsamples=((8, 16),) * 4,
    sa_mlps=(((8, 8, 16), (8, 8, 16)), ((16, 16, 32), (16, 16, 32)), ((32, 32, 64), (32, 32, 64)),
             ((64, 64, 64), (64, 64, 64))),
    grid_resolution=(8, 8, 4), use_decoder=False,
)


def cloth_on_table(n: int = 400, seed: int = 0) -> torch.Tensor:
    """(n, 3) float64: a 0.6 x 0.3 m tapering sheet at z = 0 with two folds standing up from it (z >= 0),
    longer than wide, one end wider than the other: a clear up, a clear longest axis with a skewed spread."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    v = torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1
    x = 0.6 * u ** 1.5  # points crowd at one end: the spread along x is skewed
    y = 0.15 * v * (1.2 - 0.6 * u)
    z = 0.06 * torch.exp(-((x - 0.2) / 0.04) ** 2) + 0.04 * torch.exp(-((y - 0.05) / 0.03) ** 2)
    return torch.stack([x, y, z], -1)


def random_rigid(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rotation = ops.random_rotations(1, generator=g, dtype=torch.float64)[0]
    return rotation, torch.rand(3, generator=g, dtype=torch.float64) * 4 - 2


def test_up_points_away_from_the_table_and_turns_with_the_cloud():
    cloth = cloth_on_table()[None]
    up = up_direction(cloth)[0]
    assert up[2] > 0.99  # the folds stand up from the table
    upside_down = cloth * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)  # half turn about x
    assert up_direction(upside_down)[0, 2] < -0.99
    for seed in range(5):
        rotation, translation = random_rigid(seed)
        moved = up_direction(cloth @ rotation.T + translation)[0]
        torch.testing.assert_close(moved, rotation @ up, rtol=0, atol=1e-9)


def test_rotation_to_z_is_a_proper_rotation_taking_the_vector_to_z():
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(64, 3, generator=g, dtype=torch.float64)
    vectors = torch.cat([vectors, torch.tensor([[0.0, 0, 1], [0, 0, -1], [1e-12, 0, -1]], dtype=torch.float64)])
    vectors = vectors / vectors.norm(dim=-1, keepdim=True)
    rotation = rotation_to_z(vectors)
    eye = torch.eye(3, dtype=torch.float64).expand_as(rotation)
    torch.testing.assert_close(rotation @ rotation.transpose(1, 2), eye, rtol=0, atol=1e-9)
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(len(vectors), dtype=torch.float64),
                               rtol=0, atol=1e-9)
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(vectors)
    torch.testing.assert_close((rotation @ vectors.unsqueeze(-1)).squeeze(-1), z, rtol=0, atol=1e-9)
    torch.testing.assert_close(rotation[-3], torch.eye(3, dtype=torch.float64))  # already up: no turn


def test_principal_frame_is_right_handed_and_makes_the_canonical_pose_invariant():
    cloth = cloth_on_table()[None]
    frame = principal_frame(cloth)[0]
    torch.testing.assert_close(frame @ frame.T, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-9)
    assert torch.linalg.det(frame) > 0
    assert abs(frame[0, 0]) > 0.99 and frame[2, 2] > 0.99  # longest axis ~x, up ~z for this cloth
    reference, _, _ = canonicalize(cloth, 'frame')
    for seed in range(5):
        rotation, translation = random_rigid(seed)
        turned, back, centre = canonicalize(cloth @ rotation.T + translation, 'frame')
        torch.testing.assert_close(turned, reference, rtol=0, atol=1e-9)  # same pose whatever the input's
        torch.testing.assert_close(turned @ back + centre, cloth @ rotation.T + translation, rtol=0, atol=1e-9)


def test_up_canonicalisation_keeps_the_yaw():
    cloth = cloth_on_table()[None]
    yaw = torch.tensor([[math.cos(0.7), -math.sin(0.7), 0], [math.sin(0.7), math.cos(0.7), 0], [0, 0, 1]],
                       dtype=torch.float64)
    tilt = torch.tensor([[1, 0, 0], [0, math.cos(1.2), -math.sin(1.2)], [0, math.sin(1.2), math.cos(1.2)]],
                        dtype=torch.float64)
    plain, _, _ = canonicalize(cloth @ yaw.T, 'up')
    tilted, _, _ = canonicalize(cloth @ yaw.T @ tilt.T, 'up')
    # The shortest turn back undoes a tilt about x exactly when the cloth's up is +z; the yaw is left alone.
    torch.testing.assert_close(up_direction(tilted)[0], torch.tensor([0.0, 0, 1], dtype=torch.float64),
                               rtol=0, atol=1e-9)
    assert (tilted - plain).abs().max() < 0.02  # (up is ~z, not exactly: a small residual turn)
    with pytest.raises(ValueError, match='up.*frame'):
        canonicalize(cloth, 'gravity')


def test_canonicalised_key_grid_keypoints_move_with_the_input(tmp_path):
    """With ``canonicalize='frame'`` the Key-Grid model sees one pose whatever the input's, so its (hard) keypoints
    are equivariant to SE(3) through the node's min/max normalisation; without it they are not."""
    torch.manual_seed(0)
    model = KeyGrid(TINY).train()
    with torch.no_grad():  # BatchNorm statistics that are not the defaults: keypoints that differ from each other
        for _ in range(2):
            model(torch.rand(2, 256, 3) * 2 - 1)
    path = save_model(tmp_path / 'tiny.safetensors', model.eval())
    cloth = cloth_on_table(256)
    cloth = cloth[ops.farthest_point_sample(cloth[None], 256, start=0)[1][0]]  # the input order the model expects
    canonical = KeypointModel.load(path, device='cpu', hard=True, canonicalize='frame')
    plain = KeypointModel.load(path, device='cpu', hard=True)

    def keypoints(model, points):  # (N, 3) metres -> (K, 3) metres, through the normalisation
        norm = Normalization.fit(points.numpy())
        normalised = torch.from_numpy(norm.apply(points.numpy())).float()
        return torch.from_numpy(norm.invert(model.predict(normalised).keypoints[0].double().numpy()))

    reference, reference_plain = keypoints(canonical, cloth), keypoints(plain, cloth)
    assert torch.cdist(reference, reference).max() > 0.01  # not K copies of the centroid
    rotation, translation = random_rigid(3)
    moved = keypoints(canonical, cloth @ rotation.T + translation)
    torch.testing.assert_close(moved, reference @ rotation.T + translation, rtol=0, atol=1e-4)
    moved_plain = keypoints(plain, cloth @ rotation.T + translation)
    assert (moved_plain - (reference_plain @ rotation.T + translation)).abs().max() > 1e-2
    with pytest.raises(ValueError, match='canonicalize'):
        KeypointModel.load(path, device='cpu', canonicalize='gravity')
