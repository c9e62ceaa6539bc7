"""What every training loop of the package shares: processes, devices, run folders, data split, batches, RNG.

``keygrid train`` (:mod:`keygrid_ros.train.trainer`) and ``keygrid distill`` (:mod:`keygrid_ros.train.distill`)
differ in their model, loss and validation; everything around those lives here once, so a fix to resume,
DDP or the run folder reaches both. Configs are duck-typed: the fields read here (data: ``train``, ``val``,
``val_fraction``, ``val_max_frames``, ``num_points``, ``sampling``, ``augment``, ``frame_stride``; batches:
``seed``, ``shuffle``, ``batch_size``, ``epochs``; runtime: ``device``, ``threads``, ``tf32``, ``amp``;
output: ``out_dir``, ``run_name``, ``progress``, ``export``) mean the same in both configs.

Distributed: under ``torchrun`` each process reads ``batch_size`` clouds per step (global batch =
``batch_size x world size``) from its own share of every epoch; rank 0 alone writes files, logs and
validates; the others wait at a barrier.
"""

from __future__ import annotations

from dataclasses import dataclass
import datetime as dt
import glob
import logging
import math
import os
from pathlib import Path
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..data.dataset import Augment, SequenceDataset, sequence_files
from .checkpoint import rng_state, set_rng_state
from .config import dump_config

log = logging.getLogger(__name__)

CHECKPOINT = 'checkpoint.pt'
MODEL_LAST = 'model_last.safetensors'
MODEL_BEST = 'model_best.safetensors'

#: (validation dataset, sequence index in it, frame indices) for each held-out sequence.
ValSplit = list[tuple[SequenceDataset, int, list[int]]]


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) became NaN or inf; training stopped without taking the step."""


# ----------------------------------------------------------------------------------------------------------
# processes and devices


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup_distributed(device_setting: str) -> Distributed:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1)."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return Distributed()
    rank, local_rank = int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', '0'))
    use_cuda = torch.cuda.is_available() and device_setting != 'cpu'
    if not dist.is_initialized():
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    return Distributed(rank, world, local_rank)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (CUDA with bf16 support; a CPU with AVX512-BF16 or AMX)."""
    if device.type == 'cuda':
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without oneDNN: emulated bf16 would only be slower
        return False


def training_autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype of a training step for the ``amp`` setting, or None for plain fp32.

    'bf16' also applies on CPUs that compute bf16 natively: measured on the project's 2-core EPYC, a Key-Grid
    batch-8 step takes 0.58 s instead of 1.05 s with the same loss curve over 40 steps (fps loss 0.137 vs
    0.144), a SPRIN student step 3.4 s instead of 6.3 s. On other CPUs bf16 would be emulated and slower, so
    they stay fp32. 'fp16' needs a GPU (and a grad scaler).
    """
    if amp == 'off':
        return None
    if device.type == 'cuda':
        return torch.bfloat16 if amp == 'bf16' else torch.float16
    if device.type == 'cpu' and amp == 'bf16' and native_bf16(device):
        return torch.bfloat16
    return None


def select_device(setting: str, ddp: Distributed) -> torch.device:
    """``'auto'`` -> cuda when available, else cpu; under torchrun each process takes its LOCAL_RANK's GPU."""
    if setting == 'auto':
        setting = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(setting)
    if device.type == 'cuda':
        if device.index is None:
            device = torch.device('cuda', ddp.local_rank)
        torch.cuda.set_device(device)
    return device


def configure_runtime(config, ddp: Distributed) -> tuple[torch.device, torch.dtype | None]:
    """The device, CPU threads and TF32 of a run as ``config`` says; returns (device, autocast dtype or None)."""
    device = select_device(config.device, ddp)
    if config.threads:
        torch.set_num_threads(config.threads)
    if device.type == 'cuda' and config.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, training_autocast_dtype(device, config.amp)


# ----------------------------------------------------------------------------------------------------------
# run folder


def run_directory(config, resume: bool | str, ddp: Distributed) -> Path:
    """The run folder: given by ``--resume PATH`` (a run folder, its checkpoint, or a run name under ``out_dir``),
    named by ``run_name``, or the newest run (bare ``--resume``)."""
    if isinstance(resume, str) and resume:
        path = Path(resume)
        if not path.exists() and (Path(config.out_dir) / resume).is_dir():
            path = Path(config.out_dir) / resume  # a run name, as given to run_name
        run_dir = path.parent if path.is_file() else path
    elif config.run_name:
        run_dir = Path(config.out_dir) / config.run_name
    elif resume:
        runs = sorted(Path(config.out_dir).glob(f'*/{CHECKPOINT}'), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise FileNotFoundError(f'--resume: no run with a {CHECKPOINT} under {config.out_dir}')
        run_dir = runs[-1].parent
    else:
        run_dir = Path(config.out_dir) / dt.datetime.now().strftime('%Y%m%d-%H%M%S')
    if ddp.enabled:  # every rank must agree (timestamps may differ by a second)
        shared = [str(run_dir)]
        dist.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])
    return run_dir


def open_run_folder(run_dir: Path, config, resume: bool | str, step: int):
    """Rank 0: create the folder, drop temp files of a checkpoint write that a kill interrupted, write the
    resolved config, and return a TensorBoard writer. ``purge_step`` drops the events an interrupted process
    logged after its last checkpoint, so a resumed run's curves have no duplicates."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob(f'.{CHECKPOINT}.*.tmp'):
        stale.unlink(missing_ok=True)
    dump_config(config, run_dir / 'config.yaml')
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / 'tb'), purge_step=step if resume else None)


def copy_final_model(run_dir: Path, export: str) -> None:
    """Copy the run's final model (the best one when it exists, else the last) to ``export`` (if set)."""
    final = run_dir / (MODEL_BEST if (run_dir / MODEL_BEST).is_file() else MODEL_LAST)
    if export and final.is_file():
        Path(export).parent.mkdir(parents=True, exist_ok=True)
        Path(export).write_bytes(final.read_bytes())


def start_record(path: str | Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """How a fine-tuned model's metadata (``training_data.init``) names the file its weights started from:
    the file name, its weights' checksum and the epochs it had been trained for."""
    return {'file': Path(path).name, 'weights_sha256': metadata['weights_sha256'],
            'epochs': (metadata.get('training_data') or {}).get('epochs')}


def stopped_message(what: str, epoch: int, step: int, reason: Exception, checkpoint_path: Path) -> str:
    """The error text for a run that a NaN/inf stopped: where, why, what is kept, what to try."""
    kept = (f'the last good checkpoint is {checkpoint_path}' if checkpoint_path.is_file()
            else 'no checkpoint was written before it')
    return (f'{what} stopped at epoch {epoch + 1}, step {step + 1}: {reason}; {kept} (nothing was written after '
            'the bad step). Lower lr, try grad_clip=1, or amp=off.')


# ----------------------------------------------------------------------------------------------------------
# data


def split_data(config) -> tuple[SequenceDataset, list[int], ValSplit]:
    """Training dataset + the item indices to train on, and the validation (dataset, sequence, frames) list.

    Without ``val`` files, a seeded ``val_fraction`` of the training sequences is held out whole; with a
    single training sequence, its last ``val_fraction`` of frames (a contiguous stretch, so DAS still has
    a sequence to score).
    """
    train_files = sequence_files(expand_globs(config.train))
    if not train_files:
        raise FileNotFoundError(f'no training sequences in {config.train}')
    augment = Augment(**config.augment) if config.augment else None
    val: ValSplit = []
    held_frames: dict[int, int] = {}
    if config.val:
        val_set = SequenceDataset(expand_globs(config.val), config.num_points, config.sampling, seed=config.seed,
                                  max_frames=config.val_max_frames or None, keypoints=False)
        val = [(val_set, i, list(range(int(n)))) for i, n in enumerate(val_set.frame_counts)]
    elif config.val_fraction > 0 and len(train_files) > 1:
        count = max(1, round(config.val_fraction * len(train_files)))
        order = np.random.default_rng(config.seed).permutation(len(train_files))
        held = sorted(order[:count].tolist())
        val_files = [train_files[i] for i in held]
        train_files = [f for i, f in enumerate(train_files) if i not in held]
        val_set = SequenceDataset(val_files, config.num_points, config.sampling, seed=config.seed,
                                  max_frames=config.val_max_frames or None, keypoints=False)
        val = [(val_set, i, list(range(int(n)))) for i, n in enumerate(val_set.frame_counts)]
    train_set = SequenceDataset(train_files, config.num_points, config.sampling, augment=augment, seed=config.seed,
                                keypoints=False)
    if not val and config.val_fraction > 0 and len(train_files) == 1:
        frames = int(train_set.frame_counts[0])
        held_frames[0] = max(2, math.ceil(config.val_fraction * frames))
        if held_frames[0] >= frames:
            raise ValueError(f'{train_files[0]}: {frames} frames are too few to hold out a validation stretch')
        val_frames = list(range(frames - held_frames[0], frames))
        if config.val_max_frames:
            val_frames = val_frames[:config.val_max_frames]
        val_set = SequenceDataset(train_files, config.num_points, config.sampling, seed=config.seed, keypoints=False)
        val = [(val_set, 0, val_frames)]
    indices = list(range(len(train_set) - held_frames.get(0, 0)))
    if config.frame_stride > 1:  # consecutive simulated frames barely differ: a stride buys epochs, not bias
        indices = [i for i in indices if train_set.locate(i)[1] % config.frame_stride == 0]
    return train_set, indices, val


def expand_globs(entries: list[str]) -> list[str]:
    """Glob patterns -> sorted matches (a pattern that matches nothing is kept, so the error names it)."""
    out: list[str] = []
    for entry in entries:
        if any(ch in entry for ch in '*?['):
            out.extend(sorted(glob.glob(entry, recursive=True)) or [entry])
        else:
            out.append(entry)
    return out


def epoch_batches(num_items: int, config, epoch: int, ddp: Distributed) -> list[list[int]]:
    """This process's batches (positions into the training index list) for ``epoch``.

    Temporal order without ``shuffle`` (the released Key-Grid script does not shuffle), or a permutation
    seeded by (seed, epoch). Each process takes every ``world``-th item; the last partial batch is dropped,
    as released.
    """
    order = np.arange(num_items)
    if config.shuffle:
        order = np.random.default_rng([config.seed, epoch]).permutation(num_items)
    per_rank = num_items // ddp.world
    mine = order[ddp.rank:per_rank * ddp.world:ddp.world]
    steps = len(mine) // config.batch_size
    return [mine[i * config.batch_size:(i + 1) * config.batch_size].tolist() for i in range(steps)]


def progress_bar(config, ddp: Distributed, epoch: int, steps_per_epoch: int, batch_done: int):
    """A tqdm bar for one epoch on rank 0 when ``config.progress``, else None."""
    if not (ddp.main and config.progress):
        return None
    from tqdm import tqdm

    return tqdm(total=steps_per_epoch, initial=batch_done, desc=f'epoch {epoch + 1}/{config.epochs}', unit='step',
                dynamic_ncols=True, leave=False)


class Throughput:
    """Clouds per second over the optimiser steps of an epoch, not counting logging, checkpoints or validation.

    Call :meth:`start` before fetching a batch and :meth:`step` after its optimiser step.
    """

    def __init__(self) -> None:
        self.clouds, self.seconds, self._tick = 0, 0.0, time.perf_counter()

    def start(self) -> None:
        self._tick = time.perf_counter()

    def step(self, clouds: int) -> float:
        now = time.perf_counter()
        self.clouds, self.seconds = self.clouds + clouds, self.seconds + now - self._tick
        self._tick = now
        return self.rate

    @property
    def rate(self) -> float:
        return self.clouds / max(self.seconds, 1e-9)


# ----------------------------------------------------------------------------------------------------------
# replicas and random streams


def sync_buffers(net: torch.nn.Module, ddp: Distributed) -> None:
    """Average the BatchNorm running statistics over the processes (collective).

    DDP keeps parameters identical but only copies rank 0's buffers at the start of each forward, so after
    a step every replica holds the statistics of its own batches. Averaging them before a checkpoint,
    a validation or the end of training makes the replicas identical and the statistics cover all data.
    """
    if not ddp.enabled:
        return
    for buffer in net.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= ddp.world


def gather_rng_states(ddp: Distributed) -> list[dict[str, Any]]:
    """Every rank's RNG state (collective), so that each process resumes its own random stream."""
    state = rng_state()
    if not ddp.enabled:
        return [state]
    states: list[Any] = [None] * ddp.world
    dist.all_gather_object(states, state)
    return states


def seed_processes(seed: int, ddp: Distributed) -> None:
    """A fresh run: a different random stream per process (the weights were drawn before from the shared seed)."""
    torch.manual_seed(seed + ddp.rank)
    np.random.seed((seed + ddp.rank) % 2**32)


def restore_rng(saved: list[dict[str, Any]], seed: int, step: int, ddp: Distributed) -> None:
    """A resumed run: each process continues its own checkpointed stream. A different process count cannot
    replay the same streams; the run continues, reseeded, but no longer bitwise like an uninterrupted one."""
    if len(saved) == ddp.world:
        set_rng_state(saved[ddp.rank])
    else:
        log.warning('resuming with %d processes, checkpoint from %d: random streams reseeded', ddp.world, len(saved))
        torch.manual_seed(seed + 1000 * step + ddp.rank)


# ----------------------------------------------------------------------------------------------------------
# the step


def optimizer_step(loss: torch.Tensor, net: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler,
                   grad_clip: float) -> float:
    """Backward ``loss``, clip the gradient norm (``grad_clip`` > 0) and step; returns the gradient norm.

    Raises :class:`NonFiniteLossError` before the update when the gradient norm is NaN/inf (with fp16 the
    grad scaler skips such steps itself and lowers its scale instead).
    """
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    max_norm = grad_clip if grad_clip > 0 else float('inf')
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
    if not scaler.is_enabled() and not torch.isfinite(grad_norm):
        raise NonFiniteLossError(f'gradient norm is {grad_norm.item()} (loss {loss.item()})')
    scaler.step(optimizer)
    scaler.update()
    return float(grad_norm)
