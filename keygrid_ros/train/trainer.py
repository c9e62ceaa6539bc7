"""Key-Grid training loop: one process on a CPU or a GPU, or several under ``torchrun`` (DDP).

Reading order: :func:`train` sets up (distributed, device, run folder, data, model, optimiser, resume), then
runs ``epochs`` of :func:`_train_step` with validation and checkpoints at the end of each epoch. What the
distiller shares with it (processes, devices, run folder, data split, batches, random streams) lives in
:mod:`keygrid_ros.train.runtime`.

Run folder (``out_dir/run_name``)::

    config.yaml            the resolved config (what the run actually used)
    checkpoint.pt          the last checkpoint (resume point), written atomically
    model_last.safetensors the model after the last completed epoch (keygrid_ros.model.io format)
    model_best.safetensors the model with the best validation score so far (DAS, scaled down where the
                           keypoints collapse: evaluate.selection_score)
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
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..data.dataset import SequenceDataset
from ..data.sequences import load_sequence
from ..model.io import default_keypoint_names, load_model, save_model
from ..model.keygrid import KeyGrid, KeyGridOutput
from . import evaluate
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig, portable_path
from .correspondence import correspondence_loss, last_frames, pair_frames
from .runtime import (
    CHECKPOINT,
    MODEL_BEST,
    MODEL_LAST,
    Distributed,
    NonFiniteLossError,
    Throughput,
    configure_runtime,
    copy_final_model,
    epoch_batches,
    gather_rng_states,
    open_run_folder,
    optimizer_step,
    progress_bar,
    restore_rng,
    run_directory,
    seed_processes,
    setup_distributed,
    split_data,
    start_record,
    stopped_message,
    sync_buffers,
)
from .tracked_targets import reference_vertices, tracked_target_loss

__all__ = ['CHECKPOINT', 'MODEL_BEST', 'MODEL_LAST', 'NonFiniteLossError', 'TrainResult', 'train']

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank; files exist on rank 0's file system)."""

    run_dir: Path
    model: KeyGrid  # the unwrapped model, on its device
    step: int
    epoch: int  # epochs completed
    clouds_seen: int  # over all processes
    clouds_per_s: float  # training throughput over all processes (last epoch, steps only)
    best_das: float | None  # validation DAS of the kept best model (chosen by evaluate.selection_score)
    last_das: float | None


# ----------------------------------------------------------------------------------------------------------
# setup helpers


def _optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == 'adadelta':
        return torch.optim.Adadelta(params, lr=config.lr, rho=config.rho, eps=config.eps,
                                    weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


# ----------------------------------------------------------------------------------------------------------
# the loop


def _train_step(model, net: KeyGrid, optimizer, scaler, points: torch.Tensor, indices: torch.Tensor | None,
                targets: tuple[torch.Tensor, torch.Tensor] | None, similarity: bool, config: TrainConfig,
                autocast_dtype: torch.dtype | None, ddp: Distributed) -> dict[str, float]:
    """One optimiser step on ``points`` (B, N, 3); ``indices`` (B, N) vertex ids of frame pairs when the
    correspondence loss is on; ``targets`` ((B, K, 3) positions, (B, K) seen) when the tracked-target loss is.
    Raises :class:`NonFiniteLossError` before a bad update."""
    with torch.autocast(points.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        output = model(points, reconstruct=similarity)
    # The losses are nearest-neighbour distances: compute them in float32 whatever the forward ran in.
    output = KeyGridOutput(*(t.float() if isinstance(t, torch.Tensor) else t for t in output))
    losses = net.losses(points, output)
    total, corr = losses['loss'], points.new_zeros(())
    if indices is not None:
        corr = correspondence_loss(points, indices, output.weights, output.keypoints,
                                   config.correspondence_temperature, config.correspondence_stop_gradient,
                                   config.correspondence_spread)
        total = total + config.correspondence_weight * corr
    track = points.new_zeros(())
    if targets is not None:
        track = tracked_target_loss(output.keypoints, *targets)
        total = total + config.track_weight * track
    values = torch.stack([total.detach(), losses['fps'], losses['sim'], corr.detach(), track.detach()])
    if ddp.enabled:  # every rank must see the same verdict, or the others would hang in backward
        dist.all_reduce(values)
        values /= ddp.world
    if not torch.isfinite(values).all():
        raise NonFiniteLossError(f'loss is {values[0].item()} (fps {values[1].item()}, sim {values[2].item()}, '
                                 f'correspondence {values[3].item()}, tracked targets {values[4].item()})')
    grad_norm = optimizer_step(total, net, optimizer, scaler, config.grad_clip)
    loss, fps, sim, corr_value, track_value = values.tolist()
    return {'loss': loss, 'fps': fps, 'sim': sim, 'corr': corr_value, 'track': track_value, 'grad_norm': grad_norm}


def _start_from(net: KeyGrid, path: str) -> dict[str, Any]:
    """Load the Key-Grid file ``path`` into ``net`` (a fine-tuning start) and describe it for the metadata.

    Raises :class:`~keygrid_ros.model.io.ModelFileError` (naming the fields) when the file's architecture is
    not ``net``'s, or when it holds only an encoder, before any training step.
    """
    source, metadata = load_model(path, net.config)
    net.load_state_dict(source.state_dict())
    return start_record(path, metadata)


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
    ddp = setup_distributed(config.device)
    try:
        return _train(config, resume, ddp)
    finally:
        if ddp.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, resume: bool | str, ddp: Distributed) -> TrainResult:
    device, autocast_dtype = configure_runtime(config, ddp)
    run_dir = run_directory(config, resume, ddp)
    checkpoint_path = run_dir / CHECKPOINT
    if resume and not checkpoint_path.is_file():
        raise FileNotFoundError(f'--resume: no checkpoint at {checkpoint_path}')

    # --- data ---
    train_set, train_indices, val = split_data(config)
    steps_per_epoch = len(epoch_batches(len(train_indices), config, 0, ddp))
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

    init_info = _start_from(net, config.init) if config.init and not resume else None
    epoch, batch_done, step, clouds_seen = 0, 0, 0, 0
    best_das: float | None = None
    best_score: float | None = None
    last_das: float | None = None
    if resume:
        state = load_checkpoint(checkpoint_path)
        net.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        scaler.load_state_dict(state['scaler'])
        epoch, batch_done, step = state['epoch'], state['batch_in_epoch'], state['step']
        clouds_seen, best_das, last_das = state['clouds_seen'], state['best_das'], state['last_das']
        best_score = state.get('best_score', best_das)  # checkpoints before selection_score kept DAS alone
        init_info = json.loads(state.get('init', 'null'))  # where the weights first came from, if not random
        restore_rng(state['rng'], config.seed, step, ddp)
        if ddp.main:
            log.info('resuming %s at epoch %d, batch %d, step %d', run_dir, epoch, batch_done, step)
    else:
        seed_processes(config.seed, ddp)  # different dropout / FPS-target streams per process

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

    writer = open_run_folder(run_dir, config, resume, step) if ddp.main else None

    training_data = {
        'train': [portable_path(f) for f in train_set.files],
        'train_frames': len(train_indices),
        'val': sorted({portable_path(d.files[i]) for d, i, _ in val}),
        'val_frames': int(sum(len(f) for _, _, f in val)),
        'num_points': config.num_points,
        'sampling': config.sampling,
    }
    if init_info is not None:
        training_data['init'] = init_info
    if config.correspondence_weight:
        training_data['correspondence'] = {'weight': config.correspondence_weight, 'gap': config.correspondence_gap,
                                           'temperature': config.correspondence_temperature,
                                           'stop_gradient': config.correspondence_stop_gradient,
                                           'spread': config.correspondence_spread}
    pair_limit = last_frames(train_set, train_indices) if config.correspondence_weight else {}
    if config.track_weight:
        teacher_path = config.track_teacher or config.init
        teacher, _ = load_model(teacher_path)  # only its keypoint count must be the student's
        if teacher.config.num_keypoints != model_config.num_keypoints:
            raise ValueError(f'track_teacher {teacher_path} has {teacher.config.num_keypoints} keypoints, the '
                             f'student {model_config.num_keypoints}')
        # Every rank picks the same vertices (the samples depend only on the seed), so no broadcast is needed.
        train_set.set_target_vertices(reference_vertices(teacher, train_set, config.track_reference_frame,
                                                         config.batch_size))
        training_data['tracked_targets'] = {'weight': config.track_weight, 'teacher': portable_path(teacher_path),
                                            'reference_frame': config.track_reference_frame}

    def write_checkpoint(epoch_now: int, batch_now: int) -> None:
        sync_buffers(net, ddp)  # collectives: all ranks call this
        rngs = gather_rng_states(ddp)
        if ddp.main:
            save_checkpoint(checkpoint_path, {
                'model': net.state_dict(), 'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(),
                'epoch': epoch_now, 'batch_in_epoch': batch_now, 'step': step, 'clouds_seen': clouds_seen,
                'best_das': best_das, 'best_score': best_score, 'last_das': last_das, 'rng': rngs,
                'config': json.dumps(config.to_dict()), 'init': json.dumps(init_info),
            })

    def export(path: Path, das: dict | None, epoch_now: int) -> None:
        metrics = {'epoch': epoch_now, 'step': step, 'clouds_seen': clouds_seen}
        if das is not None:
            metrics.update(val_das=das['das'], val_das_reference_frame=das['das_reference_frame'],
                           val_das_correspondence=das['das_correspondence'], val_by_motion=das['by_motion'],
                           val_coverage=das['coverage'], val_selection_score=das['selection_score'])
        save_model(path, net, keypoint_names=keypoint_names, metrics=metrics,
                   training_data={**training_data, 'clouds_seen': clouds_seen, 'steps': step, 'epochs': epoch_now})

    global_batch = config.batch_size * ddp.world
    throughput = Throughput()
    try:
        while epoch < config.epochs and not (config.max_steps and step >= config.max_steps):
            net.train()
            train_set.set_epoch(epoch)
            batches = epoch_batches(len(train_indices), config, epoch, ddp)[batch_done:]
            batches = [[train_indices[i] for i in b] for b in batches]
            if config.correspondence_weight:  # odd positions become partners of the frame before them
                batches = pair_frames(batches, train_set, pair_limit, config.correspondence_gap, config.seed, epoch)
            # A private generator: creating the loader must not consume the global RNG (exact resume).
            loader = DataLoader(train_set, batch_sampler=batches, num_workers=config.num_workers,
                                generator=torch.Generator().manual_seed(config.seed))
            similarity = net.use_similarity(epoch)
            model = wrapped(similarity)
            bar = progress_bar(config, ddp, epoch, steps_per_epoch, batch_done)
            throughput = Throughput()  # this epoch's steps only
            for batch in loader:
                points = batch['points'].to(device, non_blocking=True)
                indices = batch['indices'].to(device, non_blocking=True) if config.correspondence_weight else None
                targets = ((batch['targets'].to(device, non_blocking=True),
                            batch['targets_seen'].to(device, non_blocking=True)) if config.track_weight else None)
                stats = _train_step(model, net, optimizer, scaler, points, indices, targets, similarity, config,
                                    autocast_dtype, ddp)
                step += 1
                batch_done += 1
                clouds_seen += global_batch
                throughput.step(global_batch)
                if bar is not None:
                    bar.set_postfix(loss=f'{stats["loss"]:.4f}', fps=f'{stats["fps"]:.4f}',
                                    sim=f'{stats["sim"]:.4f}', corr=f'{stats["corr"]:.4f}',
                                    track=f'{stats["track"]:.4f}',
                                    clouds_s=f'{throughput.rate:.1f}', refresh=False)
                    bar.update()
                if writer is not None and (step % config.log_every == 0 or step == 1):
                    for key in ('loss', 'fps', 'sim', 'corr', 'track', 'grad_norm'):
                        writer.add_scalar(f'train/{key}', stats[key], step)
                    writer.add_scalar('train/lr', optimizer.param_groups[0]['lr'], step)
                    writer.add_scalar('train/clouds_per_s', throughput.rate, step)
                    writer.add_scalar('train/similarity_on', float(similarity), step)
                finished_epoch = batch_done == steps_per_epoch
                if config.checkpoint_every and step % config.checkpoint_every == 0 and not finished_epoch:
                    write_checkpoint(epoch, batch_done)
                if config.max_steps and step >= config.max_steps:
                    break
                throughput.start()  # exclude logging and checkpoints from the throughput
            if bar is not None:
                bar.close()
            # --- end of the epoch (or of training, when max_steps stopped it inside one): validate (rank 0),
            # keep the best and the last model, checkpoint ---
            stopped_inside = batch_done < steps_per_epoch
            if not stopped_inside:
                epoch, batch_done = epoch + 1, 0
            last = epoch == config.epochs or bool(config.max_steps and step >= config.max_steps)
            sync_buffers(net, ddp)
            if ddp.main:
                periodic = not stopped_inside and bool(config.val_every) and epoch % config.val_every == 0
                report = _validate(net, val, config) if periodic or last else None
                if report is not None:
                    last_das = report['das']
                    report['selection_score'] = score = evaluate.selection_score(report)  # once, for all below
                    _log_validation(writer, run_dir, report, epoch, step)
                    log.info('epoch %d: validation DAS %.1f (reference frame %.1f), coverage %.2f, score %.1f',
                             epoch, report['das'], report['das_reference_frame'], report['coverage'], score)
                    if best_score is None or score > best_score:
                        best_das, best_score = report['das'], score
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
        raise NonFiniteLossError(stopped_message('training', epoch, step, exc, checkpoint_path)) from None

    if writer is not None:
        writer.close()
    if ddp.main:
        copy_final_model(run_dir, config.export)
    ddp.barrier()
    return TrainResult(run_dir, net, step, epoch, clouds_seen, throughput.rate, best_das, last_das)


def _log_validation(writer, run_dir: Path, report: dict[str, Any], epoch: int, step: int) -> None:
    writer.add_scalar('val/das', report['das'], step)
    writer.add_scalar('val/das_reference_frame', report['das_reference_frame'], step)
    writer.add_scalar('val/coverage', report['coverage'], step)
    writer.add_scalar('val/selection_score', report['selection_score'], step)
    for motion, scores in report['by_motion'].items():
        writer.add_scalar(f'val/das_{motion}', scores['das'], step)
    line = {'epoch': epoch, 'step': step, **{k: v for k, v in report.items() if k != 'sequences'}}
    with open(run_dir / 'metrics.jsonl', 'a') as fh:
        fh.write(evaluate.to_json(line) + '\n')
