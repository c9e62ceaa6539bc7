"""Naming learned keypoints after the landmarks they track: votes, one-to-one matching, thresholds."""

from __future__ import annotations

import json

import numpy as np

from keygrid_ros.cli import main
from keygrid_ros.data.sequences import Sequence, save_sequence
from keygrid_ros.model.config import KeyGridConfig
from keygrid_ros.model.io import load_model, read_metadata, save_model
from keygrid_ros.model.keygrid import KeyGrid
from keygrid_ros.train.name_keypoints import assign_names, landmark_votes


def test_votes_count_the_nearest_landmark_per_frame(rng):
    landmarks = rng.uniform(-1, 1, (10, 4, 3))
    # keypoint 0 sits on landmark 2 always; keypoint 1 on landmark 0 in 7 frames, landmark 3 in 3.
    kp = np.stack([landmarks[:, 2], np.concatenate([landmarks[:7, 0], landmarks[7:, 3]])], axis=1) + 1e-4
    votes, distances = landmark_votes(kp, landmarks)
    np.testing.assert_array_equal(votes, [[0, 0, 10, 0], [7, 0, 0, 3]])
    assert distances.shape == (10, 2, 4)


def test_names_are_one_to_one_and_only_where_the_votes_agree():
    names = ['a', 'b', 'c']
    # Keypoints 0 and 1 both prefer landmark 'a'; 0 more strongly, so 1 gets its second choice 'b' (70%).
    votes = np.array([[9, 1, 0], [8, 7, 0], [0, 1, 4]])
    # The matching maximises the total agreement: a-b-c (0.9 + 0.467 + 0.8) beats b-a-c (0.1 + 0.533 + 0.8).
    got, report = assign_names(votes, names, min_agreement=0.45)
    assert got == ['a', 'b', 'c']
    got, report = assign_names(votes, names, min_agreement=0.5)
    assert got == ['a', 'kp1', 'c']  # 7/15 < 0.5: no name is better than a wrong one
    assert report[1] == {'keypoint': 1, 'landmark': 'b', 'agreement': 0.467, 'named': False}
    far = np.array([[0.01, 1, 1], [1, 1, 1], [1, 1, 0.2]])
    got, _ = assign_names(votes, names, min_agreement=0.4, median_distance=far, max_distance=0.05)
    assert got == ['a', 'kp1', 'kp2']  # agreeing, but too far from the landmark to carry its name


def test_cli_writes_the_same_weights_with_names(tmp_path, rng, capsys):
    torch_model = KeyGrid(KeyGridConfig(num_keypoints=3, num_points=64, sa_npoints=[32, 16, 8, 4]))
    model_path = save_model(tmp_path / 'm.safetensors', torch_model, training_data={'train': [str(tmp_path)]})
    vertices = rng.uniform(-0.3, 0.3, (4, 80, 3)).astype(np.float32)
    landmarks = vertices[:, [0, 1]]
    save_sequence(tmp_path / 's.npz', Sequence(vertices=vertices, keypoints=landmarks, keypoint_names=['x', 'y']))
    out = tmp_path / 'named.safetensors'
    assert main(['name-keypoints', '--model', str(model_path), '--data', str(tmp_path / 's.npz'), '--out', str(out),
                 '--min-agreement', '0.01', '--max-distance', '10']) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    meta = read_metadata(out)
    assert meta['keypoint_names'] == report['keypoint_names']
    assert sorted(n for n in meta['keypoint_names'] if not n.startswith('kp')) == ['x', 'y']  # 3 keypoints, 2 names
    assert meta['metrics']['keypoint_naming']['keypoints'] == report['keypoints']
    assert meta['weights_sha256'] == read_metadata(model_path)['weights_sha256']
    load_model(out)  # loads and checks
    assert main(['name-keypoints', '--model', str(model_path), '--data', str(tmp_path / 'nothing'),
                 '--out', str(out)]) == 2
