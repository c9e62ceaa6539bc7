"""The tracked-target loss: the teacher's reference vertices, their positions in every training item, the
loss against its definition, and a training run with it on."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from test_trainer import data_dir, tiny_config  # noqa: F401  (data_dir is a fixture)
import torch

from keygrid_ros.data.dataset import Augment, SequenceDataset
from keygrid_ros.data.garments import make_garment
from keygrid_ros.data.sequences import Sequence, save_sequence
from keygrid_ros.train import trainer
from keygrid_ros.train.config import TrainConfig
from keygrid_ros.train.tracked_targets import reference_vertices, tracked_target_loss

AXES = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])


class ExtremePointTeacher(torch.nn.Module):
    """A stand-in teacher whose keypoint k is the input point farthest along axis k (a vertex of the cloud)."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))  # model_keypoint_fn asks for the model's device

    def forward(self, points, reconstruct=False, hard=False):
        best = (points @ AXES.T).argmax(dim=1)  # (B, K)
        keypoints = torch.gather(points, 1, best.unsqueeze(-1).expand(-1, -1, 3))
        return type('Output', (), {'keypoints': keypoints})()


def turning_sheet(frames: int = 6, n: int = 12) -> Sequence:
    """An n x n sheet turning about z by 15 degrees a frame: each frame has other extreme vertices."""
    u, v = np.meshgrid(np.linspace(0, 0.5, n), np.linspace(0, 0.3, n), indexing='ij')
    base = np.stack([u.ravel(), v.ravel(), 0.02 * np.sin(7 * u.ravel())], -1)
    faces = [[i * n + j, (i + 1) * n + j, i * n + j + 1] for i in range(n - 1) for j in range(n - 1)]
    verts = []
    for t in range(frames):
        a = np.radians(15.0 * t + 5.0)
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        verts.append(base @ rot.T)
    return Sequence(np.asarray(verts, np.float32), np.asarray(faces, np.int32), 'sheet', 'drag')


@pytest.mark.parametrize('frame', [0, 3, 99])
def test_reference_vertices_are_the_vertices_under_the_teachers_keypoints_on_that_frame(tmp_path, frame):
    save_sequence(tmp_path / 'a.npz', turning_sheet())
    save_sequence(tmp_path / 'b.npz', turning_sheet(frames=4))
    dataset = SequenceDataset(tmp_path, num_points=144, keypoints=False)  # every vertex of the 12 x 12 sheet
    chosen = reference_vertices(ExtremePointTeacher(), dataset, reference_frame=frame)
    assert chosen.shape == (2, 4) and chosen.dtype == np.int64
    for s, path in enumerate(dataset.files):
        verts = np.load(path)['vertices']
        used = min(frame, len(verts) - 1)  # the last frame of a shorter sequence
        # The normalisation scales each axis by a positive factor, so the extreme point along an axis is the
        # extreme vertex of the mesh itself: computed here without the model, the dataset or the normalisation.
        along = verts[used] @ AXES.numpy().T  # (V, K)
        assert np.allclose(along[chosen[s], range(4)], along.max(axis=0), atol=1e-6)
    with pytest.raises(ValueError, match='reference_frame'):
        reference_vertices(ExtremePointTeacher(), dataset, reference_frame=-1)


@pytest.mark.parametrize('augment', [Augment(), Augment(se3=True, stretch=0.2)])
def test_targets_are_the_reference_vertices_transformed_like_the_cloud(tmp_path, augment):
    save_sequence(tmp_path / 'a.npz', turning_sheet())
    dataset = SequenceDataset(tmp_path, num_points=100, augment=augment, keypoints=False)
    ids = np.array([[0, 11, 70, 143, 5]])
    dataset.set_target_vertices(ids)
    found = 0
    for index in range(len(dataset)):
        item = dataset[index]
        assert item['targets'].shape == (5, 3) and item['targets_seen'].all()
        where = {int(v): n for n, v in enumerate(item['indices'])}
        for k, vertex in enumerate(ids[0]):
            if int(vertex) in where:  # the vertex was sampled: its target is exactly that point of the cloud
                assert torch.allclose(item['targets'][k], item['points'][where[int(vertex)]], atol=1e-5)
                found += 1
    assert found >= 10
    dataset.set_target_vertices(None)
    assert 'targets' not in dataset[0]
    with pytest.raises(ValueError, match='target vertices'):
        dataset.set_target_vertices(np.zeros((2, 5)))


def test_a_partial_view_marks_the_targets_it_hides(tmp_path):
    garment = make_garment('tshirt', seed=2, layers=2)  # two layers: a view from above hides the lower one
    verts = garment.vertices[None].astype(np.float32)
    save_sequence(tmp_path / 'tee.npz', Sequence(verts, garment.faces, 'tshirt', 'drop'))
    dataset = SequenceDataset(tmp_path, num_points=256, keypoints=False,
                              augment=Augment(partial=True, partial_elevation_deg=(89.0, 90.0)))
    ids = np.arange(0, garment.vertices.shape[0], 7)[None]
    dataset.set_target_vertices(ids)
    item = dataset[0]
    seen = item['targets_seen'].numpy()
    assert 0 < seen.sum() < len(ids[0])
    assert seen[np.isin(ids[0], item['indices'].numpy())].all()  # what the cloud holds, the view sees


def test_the_loss_is_the_mean_squared_distance_over_the_targets_seen():
    rng = np.random.default_rng(0)
    keypoints = torch.tensor(rng.normal(size=(3, 4, 3)), requires_grad=True)
    targets = torch.tensor(rng.normal(size=(3, 4, 3)))
    seen = torch.tensor(rng.random((3, 4)) < 0.6)
    seen[0, 0] = True
    loss = tracked_target_loss(keypoints, targets, seen)
    expected = np.mean([np.sum((keypoints[b, k].detach().numpy() - targets[b, k].numpy()) ** 2)
                        for b in range(3) for k in range(4) if seen[b, k]])
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert torch.all(keypoints.grad[~seen] == 0) and torch.all(keypoints.grad[seen].abs().sum(-1) > 0)
    assert tracked_target_loss(targets, targets, seen).item() == 0.0
    assert tracked_target_loss(keypoints, targets, torch.zeros(3, 4, dtype=torch.bool)).item() == 0.0


def test_training_with_tracked_targets_pulls_keypoints_to_them_and_records_it(data_dir, tmp_path,  # noqa: F811
                                                                            monkeypatch):
    first = trainer.train(TrainConfig(**tiny_config(data_dir, tmp_path, epochs=1, run_name='teacher', val_every=0)))
    teacher = first.run_dir / trainer.MODEL_LAST
    tracked = []
    original = trainer._train_step

    def recording_step(*args):
        stats = original(*args)
        tracked.append((args[6] is not None, stats['track']))  # args[6]: the (targets, seen) pair
        return stats

    monkeypatch.setattr(trainer, '_train_step', recording_step)
    # Always the same 4 late frames (far from frame 0, where the teacher chose), a strong weight, Adam: the
    # pull towards the targets must show within 40 steps.
    monkeypatch.setattr(trainer, 'epoch_batches', lambda n, cfg, epoch, ddp: [[6, 9, 16, 19]])
    result = trainer.train(TrainConfig(**tiny_config(
        data_dir, tmp_path, epochs=40, batch_size=4, val_every=0, run_name='student', init=str(teacher),
        track_weight=100.0, optimizer='adam', lr=1e-3, model={**tiny_config(data_dir, tmp_path)['model'],
                                                              'warmup_epochs': 100})))
    values = [value for on, value in tracked]
    assert all(on for on, _ in tracked) and len(values) == 40
    assert np.mean(values[-5:]) < 0.5 * np.mean(values[:5]), values
    with safe_open(str(result.run_dir / trainer.MODEL_LAST), 'pt') as f:
        record = json.loads(f.metadata()['training_data'])['tracked_targets']
    assert record == {'weight': 100.0, 'teacher': str(teacher), 'reference_frame': 0}

    with pytest.raises(ValueError, match='needs a teacher'):
        TrainConfig(**tiny_config(data_dir, tmp_path, track_weight=1.0))
    with pytest.raises(ValueError, match='track_weight'):
        TrainConfig(**tiny_config(data_dir, tmp_path, track_weight=-1.0, init=str(teacher)))
    wider = dict(tiny_config(data_dir, tmp_path)['model'], num_keypoints=6)
    with pytest.raises(ValueError, match='6'):
        trainer.train(TrainConfig(**tiny_config(data_dir, tmp_path, epochs=1, run_name='bad', track_weight=1.0,
                                                track_teacher=str(teacher), model=wider)))
