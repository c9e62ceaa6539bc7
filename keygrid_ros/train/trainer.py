"""Key-Grid training loop: one process on a CPU or a GPU, or several under ``torchrun`` (DDP).

Reading order: :func:`train` sets up (distributed, device, run folder, data, model, optimiser, resume), then
runs ``epochs`` of :func:`_train_step` with validation and checkpoints at the end of each epoch.

Run folder (``out_dir/run_name``)::

    config.yaml            the resolved config (what the run actually used)
    checkpoint.pt          the last checkpoint (resume point), written atomically
    model_last.safetensors the model after the last completed epoch (keygrid_ros.model.io format)
    model_best.safetensors the model with the best validation DAS so far
    metrics.jsonl          one JSON line per validation
    tb/                    TensorBoard: losses, lr, clouds/s, validation DAS, keypoint pictures

Exact resume: the checkpoint holds the model, optimiser, grad scaler, position (epoch, batches done in
it, global step) and the RNG states of every process. Data items are a pure function of (seed, epoch,
index) (:class:`SequenceDataset`) and the batch order of (seed, epoch), so after a kill at any moment
``--resume`` replays the unfinished epoch from the checkpointed batch with the same random numbers, and
ends with the same weights as a run that was never interrupted (bitwise on CPU).

Distributed: under ``torchrun`` each process reads ``batch_size`` clouds per step (global batch =
``batch_size x world size``) from its own share of every epoch; gradients are averaged by DDP (gloo on CPU,
NCCL on GPU). Rank 0 alone writes files, logs and validates; the others wait at a barrier.
"""

from __future__ import annotations

from dataclasses import dataclass
import datetime as dt
import glob
import json
import logging
import math
import os
from pathlib import Path
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..data.dataset import Augment, SequenceDataset, sequence_files
from ..data.sequences import load_sequence
from ..model.io import default_keypoint_names, save_model
from ..model.keygrid import KeyGrid, KeyGridOutput
from . import evaluate
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig, dump_config, portable_path

log = logging.getLogger(__name__)

CHECKPOINT = 'checkpoint.pt'
MODEL_LAST = 'model_last.safetensors'
MODEL_BEST = 'model_best.safetensors'


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) became NaN or inf; training stopped without taking the step."""


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank; files exist on rank 0's file system)."""

    run_dir: Path
    model: KeyGrid  # the unwrapped model, on its device
    step: int
    epoch: int  # epochs completed
    clouds_seen: int  # over all processes
    clouds_per_s: float  # training throughput over all processes (last epoch, steps only)
    best_das: float | None
    last_das: float | None


# ----------------------------------------------------------------------------------------------------------
# setup helpers


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


def _setup_distributed(device_setting: str) -> Distributed:
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

    'bf16' also applies on CPUs that compute bf16 natively: measured on the project's 2-core EPYC, a batch-8
    step takes 0.58 s instead of 1.05 s with the same loss curve over 40 steps (fps loss 0.137 vs 0.144). On
    other CPUs bf16 would be emulated and slower, so they stay fp32. 'fp16' needs a GPU (and a grad scaler).
    """
    if amp == 'off':
        return None
    if device.type == 'cuda':
        return torch.bfloat16 if amp == 'bf16' else torch.float16
    if device.type == 'cpu' and amp == 'bf16' and native_bf16(device):
        return torch.bfloat16
    return None


def _device(setting: str, ddp: Distributed) -> torch.device:
    if setting == 'auto':
        setting = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(setting)
    if device.type == 'cuda':
        if device.index is None:
            device = torch.device('cuda', ddp.local_rank)
        torch.cuda.set_device(device)
    return device


def _run_dir(config: TrainConfig, resume: bool | str, ddp: Distributed) -> Path:
    """The run folder: given by ``--resume PATH``, named by ``run_name``, or the newest run (bare ``--resume``)."""
    if isinstance(resume, str) and resume:
        path = Path(resume)
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


def _split(config: TrainConfig) -> tuple[SequenceDataset, list[int], list[tuple[SequenceDataset, int, list[int]]]]:
    """Training dataset + the item indices to train on, and the validation (dataset, sequence, frames) list.

    Without ``val`` files, a seeded ``val_fraction`` of the training sequences is held out whole; with a
    single training sequence, its last ``val_fraction`` of frames (a contiguous stretch, so DAS still has
    a sequence to score).
    """
    train_files = sequence_files(_expand(config.train))
    if not train_files:
        raise FileNotFoundError(f'no training sequences in {config.train}')
    augment = Augment(**config.augment) if config.augment else None
    val: list[tuple[SequenceDataset, int, list[int]]] = []
    held_frames: dict[int, int] = {}
    if config.val:
        val_set = SequenceDataset(_expand(config.val), config.num_points, config.sampling, seed=config.seed,
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


def _expand(entries: list[str]) -> list[str]:
    """Glob patterns -> sorted matches (a pattern that matches nothing is kept, so the error names it)."""
    out: list[str] = []
    for entry in entries:
        if any(ch in entry for ch in '*?['):
            out.extend(sorted(glob.glob(entry, recursive=True)) or [entry])
        else:
            out.append(entry)
    return out


def _batches(num_items: int, config: TrainConfig, epoch: int, ddp: Distributed) -> list[list[int]]:
    """This process's batches (positions into the training index list) for ``epoch``.

    Temporal order by default (the released script does not shuffle), or a permutation seeded by (seed,
    epoch). Each process takes every ``world``-th item; the last partial batch is dropped, as released.
    """
    order = np.arange(num_items)
    if config.shuffle:
        order = np.random.default_rng([config.seed, epoch]).permutation(num_items)
    per_rank = num_items // ddp.world
    mine = order[ddp.rank:per_rank * ddp.world:ddp.world]
    steps = len(mine) // config.batch_size
    return [mine[i * config.batch_size:(i + 1) * config.batch_size].tolist() for i in range(steps)]


def _optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == 'adadelta':
        return torch.optim.Adadelta(params, lr=config.lr, rho=config.rho, eps=config.eps,
                                    weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def _sync_buffers(net: torch.nn.Module, ddp: Distributed) -> None:
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


def _gather_rng(ddp: Distributed) -> list[dict[str, Any]]:
    """Every rank's RNG state (collective), so that each process resumes its own random stream."""
    state = rng_state()
    if not ddp.enabled:
        return [state]
    states: list[Any] = [None] * ddp.world
    dist.all_gather_object(states, state)
    return states


# ----------------------------------------------------------------------------------------------------------
# the loop


def _train_step(model, net: KeyGrid, optimizer, scaler, points: torch.Tensor, similarity: bool,
                config: TrainConfig, autocast_dtype: torch.dtype | None, ddp: Distributed) -> dict[str, float]:
    """One optimiser step on ``points`` (B, N, 3). Raises :class:`NonFiniteLossError` before a bad update."""
    with torch.autocast(points.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        output = model(points, reconstruct=similarity)
    # The losses are nearest-neighbour distances: compute them in float32 whatever the forward ran in.
    output = KeyGridOutput(*(t.float() if isinstance(t, torch.Tensor) else t for t in output))
    losses = net.losses(points, output)
    values = torch.stack([losses['loss'].detach(), losses['fps'], losses['sim']])
    if ddp.enabled:  # every rank must see the same verdict, or the others would hang in backward
        dist.all_reduce(values)
        values /= ddp.world
    if not torch.isfinite(values).all():
        raise NonFiniteLossError(f'loss is {values[0].item()} (fps {values[1].item()}, sim {values[2].item()})')
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses['loss']).backward()
    scaler.unscale_(optimizer)
    max_norm = config.grad_clip if config.grad_clip > 0 else float('inf')
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
    if not scaler.is_enabled() and not torch.isfinite(grad_norm):  # with fp16 the scaler skips inf steps itself
        raise NonFiniteLossError(f'gradient norm is {grad_norm.item()} (loss {values[0].item()})')
    scaler.step(optimizer)
    scaler.update()
    loss, fps, sim = values.tolist()
    return {'loss': loss, 'fps': fps, 'sim': sim, 'grad_norm': float(grad_norm)}


def _validate(net: KeyGrid, val, config: TrainConfig) -> dict[str, Any] | None:
    """Validation DAS (both protocols) on the held-out sequences; the RNG streams are left untouched."""
    if not val:
        return None
    saved = rng_state()
    try:
        keypoint_fn = evaluate.model_keypoint_fn(net)
        per_sequence = []
        for dataset, seq_index, frames in val:
            if len(frames) < 2:
                continue
            pred = evaluate.predict_frames(keypoint_fn, dataset, seq_index, frames, batch_size=config.batch_size)
            per_sequence.append(evaluate.score_sequence(load_sequence(dataset.files[seq_index]), pred))
        return {**evaluate.summarize(per_sequence), 'sequences': per_sequence} if per_sequence else None
    finally:
        set_rng_state(saved)


def _keypoint_figure(net: KeyGrid, val, train_set: SequenceDataset):
    """A matplotlib figure: three frames of the first validation sequence with their keypoints."""
    from ..plotting import pyplot

    plt = pyplot()

    dataset, seq_index, frames = val[0] if val else (train_set, 0, list(range(int(train_set.frame_counts[0]))))
    start = int(np.sum(dataset.frame_counts[:seq_index]))
    picks = [frames[0], frames[len(frames) // 2], frames[-1]]
    items = [dataset[start + f] for f in picks]
    points = torch.stack([item['points'] for item in items])
    saved = rng_state()
    try:
        keypoints = evaluate.model_keypoint_fn(net)(points).cpu().numpy()
    finally:
        set_rng_state(saved)
    fig = plt.figure(figsize=(12, 4))
    colours = plt.get_cmap('tab10')(np.arange(keypoints.shape[1]) % 10)
    for col, (item, kp, frame) in enumerate(zip(items, keypoints, picks)):
        ax = fig.add_subplot(1, 3, col + 1, projection='3d')
        p = item['points'].numpy()
        ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=1, c='0.6')
        ax.scatter(kp[:, 0], kp[:, 1], kp[:, 2], s=60, c=colours, depthshade=False)
        ax.set(title=f'frame {frame}', xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1))
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def train(config: TrainConfig, resume: bool | str = False) -> TrainResult:
    """Train Key-Grid as ``config`` says; ``resume`` (True or a run folder/checkpoint) continues a run.

    Raises :class:`NonFiniteLossError` when the loss or gradient turns NaN/inf (the last good checkpoint is
    kept untouched).
    """
    ddp = _setup_distributed(config.device)
    try:
        return _train(config, resume, ddp)
    finally:
        if ddp.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, resume: bool | str, ddp: Distributed) -> TrainResult:
    device = _device(config.device, ddp)
    if config.threads:
        torch.set_num_threads(config.threads)
    if device.type == 'cuda' and config.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast_dtype = training_autocast_dtype(device, config.amp)
    run_dir = _run_dir(config, resume, ddp)
    checkpoint_path = run_dir / CHECKPOINT
    if resume and not checkpoint_path.is_file():
        raise FileNotFoundError(f'--resume: no checkpoint at {checkpoint_path}')

    # --- data ---
    train_set, train_indices, val = _split(config)
    steps_per_epoch = len(_batches(len(train_indices), config, 0, ddp))
    if steps_per_epoch == 0:
        raise ValueError(f'{len(train_indices)} training frames over {ddp.world} process(es) do not fill one batch '
                         f'of {config.batch_size}')

    # --- model and optimiser (same initial weights everywhere: DDP also broadcasts rank 0's) ---
    torch.manual_seed(config.seed)
    model_config = config.model_config()
    net = KeyGrid(model_config).to(device)
    optimizer = _optimizer(config, net.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    keypoint_names = config.keypoint_names or default_keypoint_names(model_config.num_keypoints)

    epoch, batch_done, step, clouds_seen = 0, 0, 0, 0
    best_das: float | None = None
    last_das: float | None = None
    if resume:
        state = load_checkpoint(checkpoint_path)
        net.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        scaler.load_state_dict(state['scaler'])
        epoch, batch_done, step = state['epoch'], state['batch_in_epoch'], state['step']
        clouds_seen, best_das, last_das = state['clouds_seen'], state['best_das'], state['last_das']
        if len(state['rng']) == ddp.world:
            set_rng_state(state['rng'][ddp.rank])
        else:  # a different process count cannot replay the same streams; continue, but not bitwise
            log.warning('resuming with %d processes, checkpoint from %d: random streams reseeded',
                        ddp.world, len(state['rng']))
            torch.manual_seed(config.seed + 1000 * step + ddp.rank)
        if ddp.main:
            log.info('resuming %s at epoch %d, batch %d, step %d', run_dir, epoch, batch_done, step)
    else:
        # Different dropout / FPS-target streams per process; the weights were drawn above from the shared seed.
        torch.manual_seed(config.seed + ddp.rank)
        np.random.seed((config.seed + ddp.rank) % 2**32)

    wrappers: dict[bool, torch.nn.Module] = {}

    def wrapped(similarity: bool) -> torch.nn.Module:
        """The module to call: ``net``, or under DDP a wrapper per phase. During the warm-up the decoder and
        the skeleton head get no gradient, which DDP must be told (find_unused_parameters costs an extra
        graph traversal per step, so the similarity phase gets a wrapper without it)."""
        if not ddp.enabled:
            return net
        if similarity not in wrappers:
            wrappers.clear()  # the old wrapper's reducer would otherwise keep its hooks on the parameters
            device_ids = [device.index] if device.type == 'cuda' else None
            wrappers[similarity] = DistributedDataParallel(net, device_ids=device_ids,
                                                           find_unused_parameters=not similarity)
        return wrappers[similarity]

    writer = None
    if ddp.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(f'.{CHECKPOINT}.*.tmp'):  # left by a kill during a checkpoint write
            stale.unlink(missing_ok=True)
        dump_config(config, run_dir / 'config.yaml')
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events logged after the checkpoint by the interrupted process.
        writer = SummaryWriter(str(run_dir / 'tb'), purge_step=step if resume else None)

    training_data = {
        'train': [portable_path(f) for f in train_set.files],
        'train_frames': len(train_indices),
        'val': sorted({portable_path(d.files[i]) for d, i, _ in val}),
        'val_frames': int(sum(len(f) for _, _, f in val)),
        'num_points': config.num_points,
        'sampling': config.sampling,
    }

    def write_checkpoint(epoch_now: int, batch_now: int) -> None:
        _sync_buffers(net, ddp)  # collectives: all ranks call this
        rngs = _gather_rng(ddp)
        if ddp.main:
            save_checkpoint(checkpoint_path, {
                'model': net.state_dict(), 'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(),
                'epoch': epoch_now, 'batch_in_epoch': batch_now, 'step': step, 'clouds_seen': clouds_seen,
                'best_das': best_das, 'last_das': last_das, 'rng': rngs, 'config': json.dumps(config.to_dict()),
            })

    def export(path: Path, das: dict | None, epoch_now: int) -> None:
        metrics = {'epoch': epoch_now, 'step': step, 'clouds_seen': clouds_seen}
        if das is not None:
            metrics.update(val_das=das['das'], val_das_reference_frame=das['das_reference_frame'],
                           val_das_correspondence=das['das_correspondence'], val_by_motion=das['by_motion'])
        save_model(path, net, keypoint_names=keypoint_names, metrics=metrics,
                   training_data={**training_data, 'clouds_seen': clouds_seen, 'steps': step, 'epochs': epoch_now})

    global_batch = config.batch_size * ddp.world
    throughput = 0.0
    try:
        while epoch < config.epochs and not (config.max_steps and step >= config.max_steps):
            net.train()
            train_set.set_epoch(epoch)
            batches = _batches(len(train_indices), config, epoch, ddp)[batch_done:]
            batches = [[train_indices[i] for i in b] for b in batches]
            # A private generator: creating the loader must not consume the global RNG (exact resume).
            loader = DataLoader(train_set, batch_sampler=batches, num_workers=config.num_workers,
                                generator=torch.Generator().manual_seed(config.seed))
            similarity = net.use_similarity(epoch)
            model = wrapped(similarity)
            bar = None
            if ddp.main and config.progress:
                from tqdm import tqdm

                bar = tqdm(total=steps_per_epoch, initial=batch_done, desc=f'epoch {epoch + 1}/{config.epochs}',
                           unit='step', dynamic_ncols=True, leave=False)
            tick, timed_clouds, timed_s = time.perf_counter(), 0, 0.0
            for batch in loader:
                points = batch['points'].to(device, non_blocking=True)
                stats = _train_step(model, net, optimizer, scaler, points, similarity, config, autocast_dtype, ddp)
                step += 1
                batch_done += 1
                clouds_seen += global_batch
                now = time.perf_counter()
                timed_clouds, timed_s, tick = timed_clouds + global_batch, timed_s + now - tick, now
                throughput = timed_clouds / max(timed_s, 1e-9)
                if bar is not None:
                    bar.set_postfix(loss=f'{stats["loss"]:.4f}', fps=f'{stats["fps"]:.4f}',
                                    sim=f'{stats["sim"]:.4f}', clouds_s=f'{throughput:.1f}', refresh=False)
                    bar.update()
                if writer is not None and (step % config.log_every == 0 or step == 1):
                    for key in ('loss', 'fps', 'sim', 'grad_norm'):
                        writer.add_scalar(f'train/{key}', stats[key], step)
                    writer.add_scalar('train/lr', optimizer.param_groups[0]['lr'], step)
                    writer.add_scalar('train/clouds_per_s', throughput, step)
                    writer.add_scalar('train/similarity_on', float(similarity), step)
                finished_epoch = batch_done == steps_per_epoch
                if config.checkpoint_every and step % config.checkpoint_every == 0 and not finished_epoch:
                    write_checkpoint(epoch, batch_done)
                if config.max_steps and step >= config.max_steps:
                    break
                tick = time.perf_counter()  # exclude logging and checkpoints from the throughput
            if bar is not None:
                bar.close()
            # --- end of the epoch (or of training, when max_steps stopped it inside one): validate (rank 0),
            # keep the best and the last model, checkpoint ---
            stopped_inside = batch_done < steps_per_epoch
            if not stopped_inside:
                epoch, batch_done = epoch + 1, 0
            last = epoch == config.epochs or bool(config.max_steps and step >= config.max_steps)
            _sync_buffers(net, ddp)
            if ddp.main:
                periodic = not stopped_inside and bool(config.val_every) and epoch % config.val_every == 0
                report = _validate(net, val, config) if periodic or last else None
                if report is not None:
                    last_das = report['das']
                    _log_validation(writer, run_dir, report, epoch, step)
                    log.info('epoch %d: validation DAS %.1f (reference frame %.1f)', epoch, report['das'],
                             report['das_reference_frame'])
                    if best_das is None or report['das'] > best_das:
                        best_das = report['das']
                        export(run_dir / MODEL_BEST, report, epoch)
                picture = not stopped_inside and config.picture_every and epoch % config.picture_every == 0
                if config.picture_every and (picture or last):
                    writer.add_figure('keypoints', _keypoint_figure(net, val, train_set), step)
                export(run_dir / MODEL_LAST, report, epoch)
                writer.add_scalar('train/epoch', epoch, step)
                writer.flush()
            ddp.barrier()
            write_checkpoint(epoch, batch_done)
            if stopped_inside:
                break
    except NonFiniteLossError as exc:
        if writer is not None:
            writer.close()
        where = f'epoch {epoch + 1}, step {step + 1}'
        kept = (f'the last good checkpoint is {checkpoint_path}' if checkpoint_path.is_file()
                else 'no checkpoint was written before it')
        raise NonFiniteLossError(f'training stopped at {where}: {exc}; {kept} (nothing was written after the bad '
                                 f'step). Lower lr, try grad_clip=1, or amp=off.') from None

    if writer is not None:
        writer.close()
    if ddp.main:
        final = run_dir / (MODEL_BEST if (run_dir / MODEL_BEST).is_file() else MODEL_LAST)
        if config.export and final.is_file():
            Path(config.export).parent.mkdir(parents=True, exist_ok=True)
            Path(config.export).write_bytes(final.read_bytes())
    ddp.barrier()
    return TrainResult(run_dir, net, step, epoch, clouds_seen, throughput, best_das, last_das)


def _log_validation(writer, run_dir: Path, report: dict[str, Any], epoch: int, step: int) -> None:
    writer.add_scalar('val/das', report['das'], step)
    writer.add_scalar('val/das_reference_frame', report['das_reference_frame'], step)
    for motion, scores in report['by_motion'].items():
        writer.add_scalar(f'val/das_{motion}', scores['das'], step)
    line = {'epoch': epoch, 'step': step, **{k: v for k, v in report.items() if k != 'sequences'}}
    with open(run_dir / 'metrics.jsonl', 'a') as fh:
        fh.write(evaluate.to_json(line) + '\n')
