"""USEEK distillation: the pseudo-label rule, the loss, learning from a teacher, exact resume, the CLI, DDP.

Tiny student (``SPRINConfig.tiny``), 128 points, tiny synthetic sequences of a tapering sheet that bends (its
ends and its top are told apart by shape alone, which a rotation-invariant student needs). The teacher is a
fixed geometric one (aligned extremes along +x, -x and +z: like Key-Grid, it depends on the pose), except in
the CLI test, which distils a (random) Key-Grid model file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
import socket
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file
import torch
import yaml

from keygrid_ros.data.dataset import SequenceDataset
from keygrid_ros.data.sequences import Sequence, save_sequence
from keygrid_ros.model.config import KeyGridConfig
from keygrid_ros.model.io import ModelFileError, save_model
from keygrid_ros.model.keygrid import KeyGrid
from keygrid_ros.model.sprin import SPRINConfig, SPRINSeg, normalize_input
from keygrid_ros.model.student import StudentModel, read_student_metadata
from keygrid_ros.train import distill as distill_module
from keygrid_ros.train.checkpoint import load_checkpoint
from keygrid_ros.train.distill import (
    DistillConfig,
    distill,
    keypoint_error,
    load_config,
    negative_sampled_bce,
    pseudo_labels,
)

REPO = Path(__file__).resolve().parents[1]


def taper_sequence(frames: int = 10, phase: float = 0.0, n: int = 16) -> Sequence:
    """A sheet 0.6 m long, 0.4 m wide at x = 0 narrowing to 0.16 m at x = 0.6, bending up more each frame."""
    u, v = np.meshgrid(np.linspace(0, 1, n), np.linspace(-1, 1, n), indexing='ij')
    base = np.stack([0.6 * u.ravel(), (0.2 * v * (1 - 0.6 * u)).ravel(), np.zeros(u.size)], -1)
    faces = [[i * n + j, (i + 1) * n + j, i * n + j + 1] for i in range(n - 1) for j in range(n - 1)]
    verts = []
    for t in range(frames):
        frame = base.copy()
        frame[:, 2] = (0.08 + 0.05 * (t / frames + phase)) * np.sin(np.pi * frame[:, 0] / 0.6)
        verts.append(frame)
    return Sequence(np.asarray(verts, np.float32), np.asarray(faces, np.int32), 'taper', 'drop')


class GeometricTeacher:
    """Soft extremes of the aligned cloud along +x (the narrow tip), -x (the wide end) and +z (the top)."""

    num_keypoints = 3
    keypoint_names = ['tip', 'base', 'top']
    info = {'model_type': 'geometric', 'file': 'none'}
    directions = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])

    def __call__(self, points: torch.Tensor, hard: bool = False):
        weights = torch.softmax(20.0 * points @ self.directions.T, dim=1).transpose(1, 2)
        return weights @ points, None


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp('tapers')
    for i in range(2):
        save_sequence(folder / 'train' / f'taper{i}.npz', taper_sequence(phase=0.3 * i))
    save_sequence(folder / 'val' / 'taper_val.npz', taper_sequence(phase=0.15))
    return folder


def tiny_config(data_dir: Path, out_dir: Path, **overrides) -> DistillConfig:
    values = dict(train=[str(data_dir / 'train')], val=[str(data_dir / 'val')], num_points=128, batch_size=4,
                  lr=3e-3, epochs=12, threads=1, student={'preset': 'tiny'}, out_dir=str(out_dir), run_name='run',
                  progress=False, log_every=1, val_every=0)
    values.update(overrides)
    return DistillConfig(**values)


# ----------------------------------------------------------------------------------------------------------
# the rule and the loss


def test_unaligned_simulations_are_found_from_the_info_alone(tmp_path):
    from keygrid_ros.train.distill import unaligned_simulations

    simulated = {'garment': 'tshirt', 'seed': 3, 'pattern': {'width': 0.5}}
    for name, info in [('random_yaw', simulated), ('aligned', {**simulated, 'aligned_by_deg': 12.0}),
                       ('clothesnet', {'units': 'm'}), ('bare', {})]:
        seq = taper_sequence(phase=0.1)
        seq.info = info
        save_sequence(tmp_path / f'{name}.npz', seq)
    files = sorted(tmp_path.glob('*.npz'))
    assert unaligned_simulations(files) == [str(tmp_path / 'random_yaw.npz')]


def test_student_metadata_counts_unaligned_simulations(data_dir, tmp_path):
    # A simulator file at random yaw among the training data: the distiller warns and the student file says so.
    seq = taper_sequence(phase=0.2)
    seq.info = {'garment': 'tshirt', 'seed': 3, 'pattern': {'width': 0.5}}
    save_sequence(tmp_path / 'data' / 'simulated.npz', seq)
    config = tiny_config(data_dir, tmp_path, train=[str(data_dir / 'train'), str(tmp_path / 'data')], max_steps=1,
                         val_das=False, val_se3=False, val_teacher=False)
    result = distill(config, teacher=GeometricTeacher())
    meta = read_student_metadata(result.run_dir / 'model_last.safetensors')
    assert meta['training_data']['unaligned_simulations'] == 1


def test_pseudo_labels_on_a_hand_made_case():
    # Points on a line at x = 0, 0.1, ..., 1. Keypoint 0 at x = 0.5 is scaled to 0.6; distances |x - 0.6| span
    # [0, 0.6], so normalised < 0.1 means |x - 0.6| < 0.06: only x = 0.6. Keypoint 1 at x = 0.8 goes to 0.96;
    # distances span [0.04, 0.96]: (d - 0.04) / 0.92 < 0.1 means d < 0.132: x = 0.9 and 1.0.
    points = torch.zeros(1, 11, 3)
    points[0, :, 0] = torch.linspace(0, 1, 11)
    keypoints = torch.tensor([[[0.5, 0.0, 0.0], [0.8, 0.0, 0.0]]])
    labels = pseudo_labels(points, keypoints)
    assert labels.shape == (1, 11, 2) and labels.dtype == torch.bool
    assert torch.nonzero(labels[0, :, 0]).flatten().tolist() == [6]
    assert torch.nonzero(labels[0, :, 1]).flatten().tolist() == [9, 10]
    # Without the expansion the nearest points are the keypoints' own; a wider threshold takes more.
    assert torch.nonzero(pseudo_labels(points, keypoints, expand=1.0)[0, :, 1]).flatten().tolist() == [8]
    assert pseudo_labels(points, keypoints, threshold=0.35)[0, :, 0].sum() == 5  # |x - 0.6| < 0.21


def test_negative_sampled_bce_counts_and_value():
    n, n_pos = 50, 4
    labels = torch.zeros(2, n, 3, dtype=torch.bool)
    labels[:, :n_pos] = True
    labels[1, :, 2] = False
    labels[1, :40, 2] = True  # 40 positives: only 10 negatives exist, all of them are taken
    a = 2.0
    logits = torch.where(labels, torch.zeros(()), torch.full((), a))  # BCE ln 2 on positives, softplus(a) on negatives
    loss = negative_sampled_bce(logits, labels, factor=3.0, generator=torch.Generator().manual_seed(0))
    softplus = math.log1p(math.exp(a))
    few = (n_pos * math.log(2) + 3 * n_pos * softplus) / (4 * n_pos)  # 4 positives + 12 negatives
    many = (40 * math.log(2) + 10 * softplus) / 50
    assert loss.item() == pytest.approx((5 * few + many) / 6, rel=1e-6)
    # factor 0: positives only.
    assert negative_sampled_bce(logits, labels, factor=0.0).item() == pytest.approx(math.log(2), rel=1e-6)
    # The negatives are a seeded random choice: which ones varies with the seed, the count does not.
    varied = torch.randn(2, n, 3, generator=torch.Generator().manual_seed(1))
    first = negative_sampled_bce(varied, labels, generator=torch.Generator().manual_seed(5))
    assert first == negative_sampled_bce(varied, labels, generator=torch.Generator().manual_seed(5))
    assert first != negative_sampled_bce(varied, labels, generator=torch.Generator().manual_seed(6))


def test_config_defaults_and_yaml(tmp_path):
    defaults = DistillConfig()
    assert (defaults.optimizer, defaults.lr, defaults.batch_size, defaults.epochs, defaults.shuffle) == \
        ('adam', 1e-4, 8, 30, True)
    assert (defaults.expand, defaults.dist_threshold, defaults.negative_sampling_factor) == (1.2, 0.10, 3.0)
    student = defaults.student_config(8)
    assert student == SPRINConfig(num_keypoints=8, num_points=2048)
    path = tmp_path / 'd.yaml'
    path.write_text(yaml.safe_dump({'teacher': 'models/t.safetensors', 'train': ['data'],
                                    'student': {'preset': 'tiny'}}))
    config = load_config(path, ['epochs=2', 'student.fps_points=[16,4]'])
    assert config.teacher == str(tmp_path / 'models' / 't.safetensors') and config.train == [str(tmp_path / 'data')]
    assert config.student_config(3).fps_points == (16, 4) and config.epochs == 2
    assert load_config(path, teacher='other.safetensors').teacher == 'other.safetensors'
    with pytest.raises(ValueError, match='unknown distillation settings: epoch'):
        load_config(path, ['epoch=3'])
    with pytest.raises(ValueError, match='unknown SPRINConfig fields'):
        load_config(path, ['student.width=3'])
    # The teacher labels what it sees: a rotated cloud would get wrong labels, so SE(3) augmentation is refused.
    assert load_config(path, ['augment={stretch: 0.2, noise: 0.01}']).augment == {'stretch': 0.2, 'noise': 0.01}
    with pytest.raises(ValueError, match='not rotation invariant'):
        load_config(path, ['augment={se3: true}'])
    with pytest.raises(ValueError, match='twist.*known: noise'):
        load_config(path, ['augment={twist: 1}'])
    shipped = load_config(REPO / 'config' / 'distill_useek.yaml')
    assert shipped.student_config(8) == SPRINConfig(num_keypoints=8)
    assert (shipped.lr, shipped.expand, shipped.dist_threshold, shipped.negative_sampling_factor) == (1e-4, 1.2, 0.1, 3)


# ----------------------------------------------------------------------------------------------------------
# learning


def _held_out_scores(net: SPRINSeg, data_dir: Path) -> tuple[float, float]:
    """(BCE with a fixed negative sample, mean student-teacher keypoint distance) on the aligned held-out frames."""
    dataset = SequenceDataset([data_dir / 'val'], num_points=128, seed=0, keypoints=False)
    points = torch.stack([dataset[i]['points'] for i in range(len(dataset))])
    teacher_kp, _ = GeometricTeacher()(points)
    labels = pseudo_labels(points, teacher_kp)
    net.eval()
    with torch.no_grad():
        logits = net(normalize_input(points)[0])
    bce = negative_sampled_bce(logits, labels, generator=torch.Generator().manual_seed(0)).item()
    return bce, keypoint_error(points, logits, teacher_kp).item()


@pytest.fixture(scope='module')
def distilled(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('runs')
    config = tiny_config(data_dir, out)
    return config, distill(config, teacher=GeometricTeacher())


def test_distillation_lowers_the_bce_and_follows_the_teacher(distilled, data_dir):
    config, result = distilled
    assert result.step == 12 * 5 and result.epoch == 12 and result.clouds_seen == 240
    torch.manual_seed(config.seed)  # the distiller draws the initial weights the same way
    initial = SPRINSeg(config.student_config(3))
    bce0, err0 = _held_out_scores(initial, data_dir)
    bce1, err1 = _held_out_scores(result.student, data_dir)
    assert bce1 < 0.75 * bce0, (bce0, bce1)
    assert err1 < 0.85 * err0, (err0, err1)

    report = result.last_report
    assert report['bce'] == pytest.approx(result.best_bce) or report['bce'] > result.best_bce
    # The student is as consistent under SE(3) as aligned; the pose-dependent teacher is not.
    teacher = result.teacher_das
    assert teacher['das']['das'] > teacher['das_se3']['das'] + 20
    assert abs(report['das']['das'] - report['das_se3']['das']) < 5
    lines = (result.run_dir / 'metrics.jsonl').read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])['teacher']['das_se3'] is not None


def test_model_files_are_students_of_their_teacher(distilled):
    config, result = distilled
    for name in ('model_best.safetensors', 'model_last.safetensors'):
        meta = read_student_metadata(result.run_dir / name)
        assert (meta['model_type'], meta['role']) == ('useek', 'student')
        assert meta['teacher'] == GeometricTeacher.info and meta['keypoint_names'] == GeometricTeacher.keypoint_names
        assert meta['training_data']['pseudo_labels'] == {'expand': 1.2, 'dist_threshold': 0.1,
                                                          'negative_sampling_factor': 3.0}
        assert meta['training_data']['unaligned_simulations'] == 0  # tapers are not simulator files
    model = StudentModel.load(result.run_dir / 'model_last.safetensors', device='cpu')
    assert all(torch.equal(model.detector.net.state_dict()[k], v) for k, v in result.student.state_dict().items())
    assert model.metadata['metrics']['val_bce'] == pytest.approx(result.last_report['bce'])
    assert (result.run_dir / 'config.yaml').is_file() and list((result.run_dir / 'tb').glob('events.*'))


def test_resume_continues_exactly(data_dir, tmp_path):
    quiet = dict(val_das=False, val_se3=False, val_teacher=False)
    straight = distill(tiny_config(data_dir, tmp_path, run_name='straight', max_steps=6, **quiet),
                       teacher=GeometricTeacher())
    first = distill(tiny_config(data_dir, tmp_path, run_name='split', max_steps=3, **quiet),
                    teacher=GeometricTeacher())
    state = load_checkpoint(first.run_dir / 'checkpoint.pt')
    assert (state['epoch'], state['batch_in_epoch'], state['step']) == (0, 3, 3)  # stopped inside epoch 1
    resumed = distill(tiny_config(data_dir, tmp_path, run_name='split', max_steps=6, **quiet),
                      teacher=GeometricTeacher(), resume=True)
    assert resumed.step == straight.step == 6
    a = load_file(straight.run_dir / 'model_last.safetensors')
    b = load_file(resumed.run_dir / 'model_last.safetensors')
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f'{len(different)} tensors differ after resume, e.g. {different[:3]}'
    opt_a = load_checkpoint(straight.run_dir / 'checkpoint.pt')['optimizer']['state']
    opt_b = load_checkpoint(resumed.run_dir / 'checkpoint.pt')['optimizer']['state']
    assert all(torch.equal(opt_a[i]['exp_avg_sq'], opt_b[i]['exp_avg_sq']) for i in opt_a)


def test_init_starts_from_a_student_file_and_checks_its_architecture(distilled, data_dir, tmp_path):
    _, source = distilled
    source_file = source.run_dir / 'model_last.safetensors'
    quiet = dict(val_das=False, val_se3=False, val_teacher=False)
    # One step at a learning rate too small to move a weight (batch-norm statistics do move): the weights that
    # come out are those that went in.
    tuned = distill(tiny_config(data_dir, tmp_path, run_name='tuned', init=str(source_file), lr=1e-12, max_steps=1,
                                **quiet), teacher=GeometricTeacher())
    start = dict(source.student.named_parameters())
    for name, value in tuned.student.named_parameters():
        assert torch.allclose(value, start[name], atol=1e-6), name
    meta = read_student_metadata(tuned.run_dir / 'model_last.safetensors')
    assert meta['training_data']['init'] == {'file': 'model_last.safetensors', 'epochs': 12,
                                             'weights_sha256': read_student_metadata(source_file)['weights_sha256']}
    # ... and a random start is far from it, so the check above can fail.
    fresh = distill(tiny_config(data_dir, tmp_path, run_name='fresh', lr=1e-12, max_steps=1, **quiet),
                    teacher=GeometricTeacher())
    assert any(not torch.allclose(v, start[k], atol=1e-3) for k, v in fresh.student.named_parameters())
    assert 'init' not in read_student_metadata(fresh.run_dir / 'model_last.safetensors')['training_data']

    # Resuming the fine-tuning run keeps the record of where its weights came from.
    resumed = distill(tiny_config(data_dir, tmp_path, run_name='tuned', init=str(source_file), lr=1e-12, max_steps=2,
                                  **quiet), teacher=GeometricTeacher(), resume=True)
    assert resumed.step == 2
    assert read_student_metadata(resumed.run_dir / 'model_last.safetensors')['training_data']['init']['epochs'] == 12

    # Another architecture is refused by field name, before any training.
    with pytest.raises(ModelFileError, match='up_cue'):
        distill(tiny_config(data_dir, tmp_path, run_name='mismatch', init=str(source_file), max_steps=1,
                            student={'preset': 'tiny', 'up_cue': True}, **quiet), teacher=GeometricTeacher())
    assert not (tmp_path / 'mismatch' / 'checkpoint.pt').exists()


def test_single_sequence_holds_out_its_last_frames(data_dir, tmp_path):
    # One training sequence: its last 30 % of frames validate (capped at 2 by val_max_frames), aligned and under SE(3).
    result = distill(tiny_config(data_dir, tmp_path, train=[str(data_dir / 'train' / 'taper0.npz')], val=[],
                                 val_fraction=0.3, val_max_frames=2, max_steps=1), teacher=GeometricTeacher())
    report = result.last_report
    assert report['frames'] == 2 and report['das'] is not None and report['das_se3'] is not None
    assert result.teacher_das['das_se3'] is not None


def test_nan_loss_stops_cleanly(data_dir, tmp_path, monkeypatch):
    original = distill_module.negative_sampled_bce
    calls = {'n': 0}

    def poisoned(logits, labels, factor=3.0, generator=None):
        calls['n'] += 1
        loss = original(logits, labels, factor, generator)
        return loss * float('nan') if calls['n'] == 2 else loss

    monkeypatch.setattr(distill_module, 'negative_sampled_bce', poisoned)
    with pytest.raises(distill_module.NonFiniteLossError, match='distillation stopped at epoch 1, step 2'):
        distill(tiny_config(data_dir, tmp_path, val_das=False, val_se3=False, val_teacher=False),
                teacher=GeometricTeacher())


# ----------------------------------------------------------------------------------------------------------
# the command line with a Key-Grid teacher file, and DDP


def _env() -> dict:
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}


def test_cli_distils_a_keygrid_model_file(data_dir, tmp_path):
    torch.manual_seed(0)
    teacher = KeyGrid(KeyGridConfig(
        num_keypoints=3, num_points=128, sa_npoints=(64, 32, 16, 8), sa_nsamples=((8, 16),) * 4,
        sa_mlps=(((8, 8, 16), (8, 8, 16)), ((16, 16, 32), (16, 16, 32)), ((32, 32, 64), (32, 32, 64)),
                 ((64, 64, 64), (64, 64, 64))),
        grid_resolution=(8, 8, 4)))
    teacher_path = save_model(tmp_path / 'teacher.safetensors', teacher, keypoint_names=['a', 'b', 'c'])
    config = tiny_config(data_dir, tmp_path, max_steps=2, val_das=False, val_se3=True).to_dict()
    config.pop('teacher')
    config_path = tmp_path / 'distill.yaml'
    config_path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, '-m', 'keygrid_ros.cli', 'distill', '--config', str(config_path)]
    proc = subprocess.run([*cmd, '--teacher', str(teacher_path)], env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary['steps'] == 2 and summary['teacher'] == str(teacher_path)
    assert summary['student_das'] is None and summary['student_das_se3'] is not None
    assert summary['teacher_das'] is not None and summary['last_bce'] > 0
    meta = read_student_metadata(summary['model'])
    assert meta['teacher']['file'] == 'teacher.safetensors' and meta['teacher']['mode'] == 'soft'
    assert meta['keypoint_names'] == ['a', 'b', 'c'] and len(meta['segment_strengths']) == 3
    missing = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and 'no teacher' in missing.stderr

    # --init: fine-tune that student (the file's record says so); another architecture exits 2, naming the field.
    tuned = subprocess.run([*cmd, '--teacher', str(teacher_path), '--init', summary['model'], 'run_name=tuned'],
                           env=_env(), capture_output=True, text=True, timeout=300)
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    tuned_meta = read_student_metadata(json.loads(tuned.stdout.strip().splitlines()[-1])['model'])
    assert tuned_meta['training_data']['init']['weights_sha256'] == meta['weights_sha256']
    other = subprocess.run([*cmd, '--teacher', str(teacher_path), '--init', summary['model'], 'student.chiral=true',
                            'run_name=other'], env=_env(), capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and 'chiral' in other.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, config: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = distill(DistillConfig(**config), teacher=GeometricTeacher())
    torch.save({k: v.detach().cpu() for k, v in result.student.state_dict().items()}, f'{out}/rank{rank}.pt')


def test_ddp_two_processes_keep_identical_replicas(data_dir, tmp_path):
    # 20 frames over 2 processes, batch 2: 5 steps per epoch; stop after 2.
    config = tiny_config(data_dir, tmp_path, device='cpu', batch_size=2, max_steps=2, val_das=False,
                         val_se3=False, val_teacher=False).to_dict()
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / 'rank0.pt', weights_only=True)
    b = torch.load(tmp_path / 'rank1.pt', weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)
    init = SPRINSeg(DistillConfig(**config).student_config(3)).state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a if a[k].is_floating_point())
    state = load_checkpoint(tmp_path / 'run' / 'checkpoint.pt')
    assert state['step'] == 2 and state['clouds_seen'] == 2 * 2 * 2 and len(state['rng']) == 2
