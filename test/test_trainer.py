"""The trainer: the loss goes down, SIGKILL + --resume is exact, NaN stops cleanly, DDP replicas agree.

Everything runs a tiny Key-Grid (narrow encoder, 256 points, coarse grid) on tiny synthetic sequences of a
bending, falling sheet, one thread per process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.torch import load_file
import torch
import yaml

from keygrid_ros.data.sequences import Sequence, save_sequence
from keygrid_ros.train import runtime, trainer
from keygrid_ros.train.checkpoint import load_checkpoint
from keygrid_ros.train.config import TrainConfig, apply_overrides, load_config

REPO = Path(__file__).resolve().parents[1]

TINY_MODEL = {
    'sa_npoints': [128, 64, 16, 8],
    'sa_nsamples': [[8, 16], [8, 16], [8, 16], [8, 16]],
    'sa_mlps': [[[8, 8, 16], [8, 8, 16]], [[16, 16, 32], [16, 16, 32]], [[32, 32, 64], [32, 32, 64]],
                [[64, 64, 64], [64, 64, 64]]],
    'grid_resolution': [8, 8, 4],
    'warmup_epochs': 1,  # so that a 2-epoch run exercises both the warm-up and the similarity loss
}


def sheet_sequence(frames: int = 10, n: int = 20, phase: float = 0.0, motion: str = 'drop') -> Sequence:
    """An n x n sheet that falls and bends over ``frames`` frames (metres, z up)."""
    u, v = np.meshgrid(np.linspace(0, 0.5, n), np.linspace(0, 0.4, n), indexing='ij')
    base = np.stack([u.ravel(), v.ravel(), np.zeros(u.size)], -1)
    faces = [[i * n + j, (i + 1) * n + j, i * n + j + 1] for i in range(n - 1) for j in range(n - 1)]
    verts = []
    for t in range(frames):
        frame = base.copy()
        frame[:, 2] = 0.1 * (t / frames + phase) * np.sin(np.pi * frame[:, 0] / 0.5) + 0.3 * (1 - t / frames)
        verts.append(frame)
    return Sequence(np.asarray(verts, np.float32), np.asarray(faces, np.int32), 'sheet', motion)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp('sequences')
    for i in range(3):
        save_sequence(folder / f'sheet{i}.npz', sheet_sequence(phase=0.1 * i))
    return folder


def tiny_config(data_dir: Path, out_dir: Path, **overrides) -> dict:
    config = {
        'train': [str(data_dir / '*.npz')], 'num_points': 256, 'batch_size': 2, 'epochs': 2, 'threads': 1,
        'out_dir': str(out_dir), 'run_name': 'run', 'model': dict(TINY_MODEL), 'log_every': 1, 'progress': False,
        'picture_every': 0,
    }
    config.update(overrides)
    return config


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_defaults_overrides_and_errors(tmp_path):
    defaults = TrainConfig()
    assert (defaults.optimizer, defaults.lr, defaults.eps, defaults.batch_size, defaults.epochs) == \
        ('adadelta', 0.1, 1e-2, 8, 100)
    model = defaults.model_config()
    assert (model.num_keypoints, model.num_fps_targets, model.num_points, model.warmup_epochs) == (8, 12, 2048, 21)
    path = write_yaml(tmp_path / 'c.yaml', {'train': ['data/a.npz'], 'epochs': 3})
    config = load_config(path, ['lr=0.5', 'optimizer=adam', 'model.grid_resolution=[16,16,16]',
                                'model.use_grid_heatmap=false'])
    assert config.train == [str(tmp_path / 'data' / 'a.npz')]  # relative to the YAML
    assert (config.epochs, config.lr, config.optimizer) == (3, 0.5, 'adam')
    assert config.model_config().grid_resolution == (16, 16, 16)
    assert config.model_config().use_grid_heatmap is False
    assert apply_overrides({'a': {'b': 1}}, ['a.c=[1, 2]']) == {'a': {'b': 1, 'c': [1, 2]}}
    with pytest.raises(ValueError, match='unknown training settings: epoch'):
        load_config(path, ['epoch=3'])
    with pytest.raises(ValueError, match='unknown KeyGridConfig fields'):
        load_config(path, ['model.grid=3'])
    with pytest.raises(ValueError, match='optimizer'):
        load_config(path, ['optimizer=sgd'])
    # 'off', as the config file documents it, is false to YAML 1.1: on the command line and in the file.
    assert load_config(path, ['amp=off']).amp == 'off'
    assert load_config(write_yaml(tmp_path / 'fp32.yaml', {'amp': False}), []).amp == 'off'
    with pytest.raises(ValueError, match='amp'):
        load_config(path, ['amp=on'])


def test_frame_stride_trains_on_every_nth_frame_and_validates_on_all(data_dir, tmp_path):
    config = TrainConfig(**tiny_config(data_dir, tmp_path, frame_stride=4, val_fraction=0.34))
    train_set, indices, val = runtime.split_data(config)
    frames = [train_set.locate(i) for i in indices]
    assert len({seq for seq, _ in frames}) == 2  # one of the three sequences is held out whole
    assert sorted(frames) == [(seq, f) for seq in range(2) for f in (0, 4, 8)]
    assert [frames_ for _, _, frames_ in val] == [list(range(10))]
    with pytest.raises(ValueError, match='frame_stride'):
        TrainConfig(**tiny_config(data_dir, tmp_path, frame_stride=0))


def test_a_few_steps_lower_the_loss(data_dir, tmp_path, monkeypatch):
    losses = []
    original = trainer._train_step

    def recording_step(*args, **kwargs):
        stats = original(*args, **kwargs)
        losses.append(stats['fps'])
        return stats

    monkeypatch.setattr(trainer, '_train_step', recording_step)
    # Always the same 2 frames, warm-up only: the farthest-point loss (noisy: new random targets every
    # step) must fall.
    config = TrainConfig(**tiny_config(data_dir, tmp_path, epochs=30, batch_size=2, val_every=0,
                                       train=[str(data_dir / 'sheet0.npz')], val_fraction=0.0))
    config.model['warmup_epochs'] = 100
    config = TrainConfig(**{**config.to_dict(), 'max_steps': 30})
    monkeypatch.setattr(trainer, 'epoch_batches', lambda n, cfg, epoch, ddp: [[0, 5]])
    result = trainer.train(config)
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert result.step == 30 and result.clouds_seen == 60 and result.clouds_per_s > 0
    assert (result.run_dir / 'model_last.safetensors').is_file()
    assert (result.run_dir / 'config.yaml').is_file()
    assert list((result.run_dir / 'tb').glob('events.out.tfevents.*'))


def test_no_similarity_ablation_differs_from_the_full_model_only_after_the_warm_up(data_dir, tmp_path):
    """An ablation arm must change what it names and nothing else: with the same seed, the no-similarity-loss
    model trains bit for bit like the full one through the warm-up (the farthest-point loss alone in both),
    and parts from it at the first step with the similarity loss (``warmup_epochs`` is 1 here)."""

    def encoder_after(epochs: int, use_similarity_loss: bool) -> dict[str, torch.Tensor]:
        config = tiny_config(data_dir, tmp_path, epochs=epochs, val_every=0, val_fraction=0.0, seed=3,
                             run_name=f'sim{int(use_similarity_loss)}_{epochs}')
        config['model'] = {**TINY_MODEL, 'use_similarity_loss': use_similarity_loss}
        model = trainer.train(TrainConfig(**config)).model
        return {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}

    full, ablated = encoder_after(1, True), encoder_after(1, False)
    assert all(torch.equal(full[k], ablated[k]) for k in full)
    full, ablated = encoder_after(2, True), encoder_after(2, False)
    assert not all(torch.equal(full[k], ablated[k]) for k in full)


def test_best_model_is_chosen_by_das_scaled_down_for_collapse(data_dir, tmp_path, monkeypatch):
    """A validation whose keypoints pile up (coverage 0.2) must not win on its DAS (B) alone."""
    from keygrid_ros.model import read_metadata

    reports = iter([(60.0, 0.8), (95.0, 0.2), (70.0, 0.7)])  # (DAS, coverage) at epochs 1, 2, 3

    def scripted_validation(net, val, config):
        das, coverage = next(reports)
        return {'das': das, 'das_reference_frame': das, 'das_correspondence': das, 'by_motion': {},
                'coverage': coverage, 'sequences': []}

    monkeypatch.setattr(trainer, '_validate', scripted_validation)
    monkeypatch.setattr(trainer, 'epoch_batches', lambda n, cfg, epoch, ddp: [[0, 1]])
    config = TrainConfig(**tiny_config(data_dir, tmp_path, epochs=3, val_every=1))
    result = trainer.train(config)
    assert result.best_das == 70.0  # epoch 3: 70 x 1 beats epoch 1's 60 and epoch 2's 95 x 0.2 / 0.5 = 38
    metrics = read_metadata(result.run_dir / 'model_best.safetensors')['metrics']
    assert metrics['epoch'] == 3 and metrics['val_coverage'] == 0.7 and metrics['val_selection_score'] == 70.0
    lines = [json.loads(line) for line in (result.run_dir / 'metrics.jsonl').read_text().splitlines()]
    assert [round(line['selection_score'], 6) for line in lines] == [60.0, 38.0, 70.0]


def _train_cmd(config_path: Path, *extra: str) -> list[str]:
    return [sys.executable, '-m', 'keygrid_ros.train.cli', '--config', str(config_path), *extra]


def _env() -> dict:
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}


def test_sigkill_mid_epoch_then_resume_is_exact(data_dir, tmp_path):
    # 20 training frames, batch 2: 10 steps per epoch; a checkpoint after every step.
    base = tiny_config(data_dir, tmp_path, checkpoint_every=1, num_points=512)
    reference = write_yaml(tmp_path / 'reference.yaml', {**base, 'run_name': 'reference'})
    killed = write_yaml(tmp_path / 'killed.yaml', {**base, 'run_name': 'killed'})

    proc = subprocess.Popen(_train_cmd(killed), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = tmp_path / 'killed' / 'checkpoint.pt'
    seen, deadline = None, time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if checkpoint.is_file():
            state = load_checkpoint(checkpoint)
            if state['step'] >= 3:
                seen = (state['epoch'], state['batch_in_epoch'], state['step'])
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    state = load_checkpoint(checkpoint)
    assert seen is not None and state['step'] < 20, 'the run finished before it could be killed'
    assert 0 < state['batch_in_epoch'] < 10, state  # killed inside an epoch (typically at step 4 of 10)

    resumed = subprocess.run(_train_cmd(killed, '--resume'), env=_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full = subprocess.run(_train_cmd(reference), env=_env(), capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]
    summary = json.loads(full.stdout.strip().splitlines()[-1])
    assert summary['steps'] == 20 and json.loads(resumed.stdout.strip().splitlines()[-1])['steps'] == 20

    a = load_file(tmp_path / 'reference' / 'model_last.safetensors')
    b = load_file(tmp_path / 'killed' / 'model_last.safetensors')
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f'{len(different)} tensors differ after resume, e.g. {different[:3]}'
    opt_a = load_checkpoint(tmp_path / 'reference' / 'checkpoint.pt')['optimizer']['state']
    opt_b = load_checkpoint(tmp_path / 'killed' / 'checkpoint.pt')['optimizer']['state']
    assert all(torch.equal(opt_a[i]['square_avg'], opt_b[i]['square_avg']) for i in opt_a)
    assert not list((tmp_path / 'killed').glob('.checkpoint.pt.*.tmp'))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    config = TrainConfig(**tiny_config(data_dir, tmp_path, epochs=3, val_every=0))
    original = trainer.KeyGrid.losses
    calls = {'n': 0}

    def losses(self, points, output, generator=None):
        calls['n'] += 1
        out = original(self, points, output, generator)
        if calls['n'] == 13:  # third step of the second epoch (10 steps per epoch)
            out['loss'] = out['loss'] * float('nan')
        return out

    monkeypatch.setattr(trainer.KeyGrid, 'losses', losses)
    with pytest.raises(trainer.NonFiniteLossError) as info:
        trainer.train(config)
    message = str(info.value)
    assert 'loss is nan' in message and 'epoch 2, step 13' in message and 'checkpoint.pt' in message
    state = load_checkpoint(tmp_path / 'run' / 'checkpoint.pt')
    assert (state['epoch'], state['batch_in_epoch'], state['step']) == (1, 0, 10)  # the end of epoch 1
    assert all(torch.isfinite(t).all() for t in state['model'].values() if t.is_floating_point())


def test_cli_reports_nan_with_exit_status_3(data_dir, tmp_path):
    # lr=inf makes the first update infinite; the next loss is NaN/inf and the trainer stops.
    config = write_yaml(tmp_path / 'nan.yaml', tiny_config(data_dir, tmp_path, lr=float('inf'), epochs=1,
                                                           checkpoint_every=1))
    proc = subprocess.run(_train_cmd(config), env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert 'training stopped at epoch 1' in proc.stderr and 'last good checkpoint' in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, config: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = trainer.train(TrainConfig(**config))
    torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()}, f'{out}/rank{rank}.pt')


def test_ddp_two_processes_keep_identical_replicas(data_dir, tmp_path):
    # 20 frames over 2 processes, batch 4: 2 steps per epoch; epoch 2 switches on the similarity loss.
    config = tiny_config(data_dir, tmp_path, device='cpu', batch_size=4, epochs=2)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / 'rank0.pt', weights_only=True)
    b = torch.load(tmp_path / 'rank1.pt', weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The replicas did train: the weights moved away from the shared initialisation.
    torch.manual_seed(0)
    init = trainer.KeyGrid(TrainConfig(**config).model_config()).state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a if a[k].is_floating_point())
    state = load_checkpoint(tmp_path / 'run' / 'checkpoint.pt')
    assert state['step'] == 4 and state['clouds_seen'] == 4 * 4 * 2 and len(state['rng']) == 2


def test_max_steps_inside_an_epoch_exports_and_resumes(data_dir, tmp_path):
    config = tiny_config(data_dir, tmp_path, max_steps=3)
    result = trainer.train(TrainConfig(**config))
    assert (result.step, result.epoch) == (3, 0)
    assert (result.run_dir / 'model_last.safetensors').is_file() and result.last_das is not None
    state = load_checkpoint(result.run_dir / 'checkpoint.pt')
    assert (state['epoch'], state['batch_in_epoch'], state['step']) == (0, 3, 3)
    resumed = trainer.train(TrainConfig(**{**config, 'max_steps': 12}), resume=True)
    assert (resumed.step, resumed.epoch, resumed.clouds_seen) == (12, 1, 24)


def test_resume_finds_a_run_by_folder_checkpoint_or_name(tmp_path, monkeypatch):
    run = tmp_path / 'runs' / 'shirt'
    run.mkdir(parents=True)
    (run / runtime.CHECKPOINT).write_bytes(b'')
    config = TrainConfig(out_dir=str(tmp_path / 'runs'))
    single = runtime.Distributed()
    assert runtime.run_directory(config, str(run), single) == run
    assert runtime.run_directory(config, str(run / runtime.CHECKPOINT), single) == run
    monkeypatch.chdir(tmp_path)  # 'shirt' is not a path from here, only a run name under out_dir
    assert runtime.run_directory(config, 'shirt', single) == run
    assert runtime.run_directory(config, 'missing', single) == Path('missing')  # the trainer then says so
