"""Every shipped model file loads, says what it is, and runs: a broken model file cannot land."""

from __future__ import annotations

from pathlib import Path
import re

import numpy as np
import pytest
import torch

from keygrid_ros import ops
from keygrid_ros import params as schema
from keygrid_ros.data.dataset import SequenceDataset
from keygrid_ros.model.io import read_metadata
from keygrid_ros.model.student import load_keypoint_model

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / 'models'
#: What ships (issue: a T-shirt and a pants Key-Grid model, K = 8), and the garment each was trained on.
SHIPPED = {'keygrid_tshirt.safetensors': 'tshirt', 'keygrid_pants.safetensors': 'pants'}
#: USEEK students: file -> the shipped teacher it was distilled from.
STUDENTS = {'useek_tshirt.safetensors': 'keygrid_tshirt.safetensors',
            'useek_pants.safetensors': 'keygrid_pants.safetensors'}
SAMPLE_MESH = ROOT / 'data' / 'samples' / 'tshirt_fold_mesh.npz'


def test_the_models_folder_holds_exactly_the_documented_models():
    found = sorted(p.name for p in MODELS.glob('*.safetensors'))
    expected = set(SHIPPED) | set(STUDENTS)
    assert expected <= set(found), f'missing shipped models: {expected - set(found)}'
    card = (MODELS / 'README.md').read_text()
    for name in found:
        assert f'`{name}`' in card, f'{name} has no model card in models/README.md'


def test_the_node_default_points_at_a_shipped_model():
    default = schema.defaults()['model_path']
    assert (ROOT / default).is_file() and Path(default).name in SHIPPED


@pytest.mark.parametrize('name', sorted(SHIPPED))
def test_shipped_model_metadata(name):
    meta = read_metadata(MODELS / name)
    assert meta['format'] == 'keygrid_ros.keygrid'
    assert int(meta['num_keypoints']) == 8 and int(meta['num_points']) == 2048
    names = meta['keypoint_names']
    assert len(names) == 8 and len(set(names)) == 8
    assert all(re.fullmatch(r'[a-z][a-z0-9_]*', n) for n in names)
    garment = SHIPPED[name]
    train = meta['training_data']['train']
    assert train and all(garment in Path(p).name for p in train), train
    assert not any(Path(p).is_absolute() for p in train + meta['training_data']['val'])
    metrics = meta['metrics']
    assert {'drop', 'drag', 'fold'} <= set(metrics['val_by_motion'])
    assert 0.0 <= metrics['val_das'] <= 100.0
    assert (MODELS / name).stat().st_size < 20e6


@pytest.mark.parametrize('name', sorted(SHIPPED))
def test_shipped_model_runs_and_puts_keypoints_on_the_input(name):
    model = load_keypoint_model(MODELS / name, device='cpu', compile=False)
    dataset = SequenceDataset([SAMPLE_MESH], num_points=2048, keypoints=False)
    points = torch.stack([dataset[i]['points'] for i in (0, 11, 21)])  # (3, 2048, 3) normalised
    prediction = model.predict(points.numpy())
    keypoints = prediction.keypoints
    assert keypoints.shape == (3, 8, 3) and np.isfinite(keypoints).all()
    assert prediction.strengths.shape == (3, 28)  # the learned skeleton: one strength per keypoint pair
    # Hard keypoints (the shipped setting) are input points.
    gaps = np.linalg.norm(keypoints[:, :, None] - points.numpy()[:, None], axis=-1).min(axis=-1)
    assert gaps.max() < 1e-5


@pytest.mark.parametrize('name', sorted(STUDENTS))
def test_shipped_student_metadata_names_its_shipped_teacher(name):
    from keygrid_ros.model.student import read_student_metadata

    meta = read_student_metadata(MODELS / name)
    assert (meta['format'], meta['model_type'], meta['role']) == ('keygrid_ros.useek', 'useek', 'student')
    assert int(meta['num_keypoints']) == 8 and meta['weights_dtype'] == 'float16'
    teacher = read_metadata(MODELS / STUDENTS[name])
    # The very teacher that ships next to it (same weights), so the card's comparison is reproducible.
    assert meta['teacher']['file'] == STUDENTS[name]
    assert meta['teacher']['weights_sha256'] == teacher['weights_sha256']
    train = meta['training_data']['train']
    assert train and not any(Path(p).is_absolute() for p in train + meta['training_data']['val'])
    assert (MODELS / name).stat().st_size < 60e6
    # What its card promises (session 6): distilled on aligned sequences, with the relief's up and a sharper
    # softmax than the released 1.
    assert meta['config'].up_cue and 0 < meta['softmax_temperature'] < 1
    # The card's commands write aligned sequences to out/aligned (session 6) and out/aligned_medium (session 7).
    assert all(Path(p).parent.parent.name in ('aligned', 'aligned_medium') for p in train), train[:2]
    if 'init' in meta['training_data']:  # fine-tuned: from a student of the same teacher, as the card says
        assert meta['training_data']['init']['file'] == name


@pytest.mark.parametrize('name', sorted(STUDENTS))
def test_shipped_student_keypoints_move_with_the_garment(name):
    """On the sample's real garment frames: a random rotation and shift of the input moves the student's
    keypoints with it (SE(3) equivariance of the shipped weights, to float32 tolerance)."""
    model = load_keypoint_model(MODELS / name, device='cpu', model_type='useek')
    dataset = SequenceDataset([SAMPLE_MESH], num_points=2048, keypoints=False)
    # Frames with relief: frame 0 lies perfectly flat, where the relief's up (model/canonical.py), which the
    # up-cue students read, has no sign, and a rotation's float32 rounding may pick the other mirror answer.
    points = torch.stack([dataset[i]['points'] for i in (10, 21)]).double()  # (2, 2048, 3) normalised
    rotation = ops.random_rotations(1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)[0]
    shift = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    reference = model.predict(points.float().numpy()).keypoints
    moved = model.predict((points @ rotation.T + shift).float().numpy()).keypoints
    back = (torch.from_numpy(moved).double() - shift) @ rotation
    assert reference.shape == (2, 8, 3) and np.isfinite(reference).all()
    # Normalised units (the garment spans about 2). Exact in float64; in float32 a near-tie between two
    # neighbour distances can flip under the rotation and move a keypoint by a few millimetres of cloth.
    # A network that is not equivariant (the Key-Grid teacher) is off by tenths.
    assert (back - torch.from_numpy(reference).double()).norm(dim=-1).max() < 0.02


def test_model_shortcut_reads_the_model_type_from_the_file(tmp_path):
    """``keygrid detect/demo --model FILE`` runs a student without a second flag; a bad path is left to the node."""
    from keygrid_ros.ros.detect_cli import model_overrides

    for name, kind in [*((n, 'keygrid') for n in SHIPPED), *((n, 'useek') for n in STUDENTS)]:
        path = str(MODELS / name)
        assert model_overrides(path) == [f'model_path:={path}', f'model_type:={kind}']
    missing = str(tmp_path / 'none.safetensors')
    assert model_overrides(missing) == [f'model_path:={missing}']
