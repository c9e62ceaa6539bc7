"""keygrid align: a rigid turn about z that puts the garment's body axis along +y, physics untouched."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from keygrid_ros.cli import main
from keygrid_ros.data.align import align_sequence, heading
from keygrid_ros.data.sequences import Sequence, load_sequence, save_sequence


def _tshirt(rng, yaw_deg: float) -> Sequence:
    """A fake 3-frame sequence: random cloth points and the two body-axis landmarks, turned by ``yaw_deg``."""
    base = rng.uniform(-0.3, 0.3, (3, 40, 3)) + np.array([0.1, -0.2, 0.0])
    base[..., 2] = np.abs(base[..., 2])
    names = ['hem_centre', 'neck_front', 'sleeve_top_l']
    kp = np.stack([base[:, 0], base[:, 0] + np.array([0.5, 0.0, 0.0]), base[:, 5]], axis=1)  # axis along +x
    a = math.radians(yaw_deg)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    return Sequence(vertices=(base @ rot.T).astype(np.float32), faces=np.array([[0, 1, 2]]), garment='tshirt',
                    keypoints=(kp @ rot.T).astype(np.float32), keypoint_names=names)


@pytest.mark.parametrize('yaw', [0.0, 37.0, -120.0, 179.0])
def test_alignment_turns_the_body_axis_to_plus_y_rigidly(rng, yaw):
    seq = _tshirt(rng, yaw)
    assert math.isclose(math.degrees(heading(seq)), yaw, abs_tol=1e-3)
    aligned = align_sequence(seq)
    assert math.isclose(math.degrees(heading(aligned)), 90.0, abs_tol=1e-3)
    # Rigid: every pairwise distance in every frame is kept, heights above the table exactly.
    for t in range(3):
        before = np.linalg.norm(seq.vertices[t][:, None] - seq.vertices[t][None], axis=-1)
        after = np.linalg.norm(aligned.vertices[t][:, None] - aligned.vertices[t][None], axis=-1)
        np.testing.assert_allclose(after, before, atol=1e-5)
    np.testing.assert_array_equal(aligned.vertices[..., 2], seq.vertices[..., 2])
    # The first frame's centroid stays where it was (the turn is about it).
    np.testing.assert_allclose(aligned.vertices[0].mean(0)[:2], seq.vertices[0].mean(0)[:2], atol=1e-5)
    assert math.isclose(aligned.info['aligned_by_deg'] % 360, (90.0 - yaw) % 360, abs_tol=1e-3)


def test_cli_keeps_the_folder_layout_and_refuses_unknown_garments(tmp_path, rng, capsys):
    save_sequence(tmp_path / 'in' / 'train' / 'a.npz', _tshirt(rng, 30.0))
    assert main(['align', '--data', str(tmp_path / 'in' / 'train'), '--out', str(tmp_path / 'out')]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report['aligned'] == 1
    aligned = load_sequence(tmp_path / 'out' / 'train' / 'a.npz')
    assert math.isclose(math.degrees(heading(aligned)), 90.0, abs_tol=1e-3)
    odd = _tshirt(rng, 0.0)
    odd.garment = 'scarf'
    save_sequence(tmp_path / 'odd.npz', odd)
    assert main(['align', '--data', str(tmp_path / 'odd.npz'), '--out', str(tmp_path / 'o2')]) == 2
    assert 'no body axis known' in capsys.readouterr().err
