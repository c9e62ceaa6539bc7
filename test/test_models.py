"""Every shipped model file loads, says what it is, and runs: a broken model file cannot land."""

from __future__ import annotations

from pathlib import Path
import re

import numpy as np
import pytest
import torch

from keygrid_ros import params as schema
from keygrid_ros.data.dataset import SequenceDataset
from keygrid_ros.model.io import read_metadata
from keygrid_ros.model.student import load_keypoint_model

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / 'models'
#: What ships (issue: a T-shirt and a pants Key-Grid model, K = 8), and the garment each was trained on.
SHIPPED = {'keygrid_tshirt.safetensors': 'tshirt', 'keygrid_pants.safetensors': 'pants'}
SAMPLE_MESH = ROOT / 'data' / 'samples' / 'tshirt_fold_mesh.npz'


def test_the_models_folder_holds_exactly_the_documented_models():
    found = sorted(p.name for p in MODELS.glob('*.safetensors'))
    assert set(SHIPPED) <= set(found), f'missing shipped models: {set(SHIPPED) - set(found)}'
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
