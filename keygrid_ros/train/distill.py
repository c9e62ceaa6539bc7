"""USEEK distillation: a Key-Grid teacher's keypoints -> per-point masks -> an SE(3)-invariant SPRIN student.

Procedure (``reference/keygrid_method.md`` section 7.1, with Key-Grid as the teacher as in the paper's Table 4):

1. the teacher (Key-Grid, eval mode, *soft* keypoints = weights @ points) sees each training cloud as Key-Grid
   sees it (FPS-ordered, min/max-normalised to [-1, 1], aligned);
2. pseudo-labels (:func:`pseudo_labels`): keypoints scaled by ``expand`` (1.2) about the origin, the distance
   of every point to each, min-max normalised over the cloud, label 1 where < ``dist_threshold`` (0.10);
3. the student (:class:`~keygrid_ros.model.sprin.SPRINSeg`) sees the same cloud centred and divided by its
   largest radius; loss :func:`negative_sampled_bce` (all positives plus ``negative_sampling_factor`` (3) x as
   many random negatives per cloud and keypoint); Adam lr 1e-4, batch 8, 30 epochs, shuffled; no rotation
   augmentation (the invariance is in the architecture).

Labels are made on the fly from each batch (the teacher costs little next to the student), so any data
sampling or augmentation setting works and every epoch sees fresh FPS samples. Validation (rank 0): the BCE
on held-out sequences with a fixed negative sample (the best model is the lowest, as in USEEK), the mean
distance between student and teacher keypoints on aligned inputs, and DAS (both protocols) of the student on
aligned inputs and under a random SE(3) per frame; the teacher's DAS, aligned and under SE(3), once per run.

Run folder, checkpoints, exact resume and DDP work as in the trainer (:mod:`keygrid_ros.train.runtime`, shared)::

    config.yaml  checkpoint.pt  model_best.safetensors  model_last.safetensors  metrics.jsonl  tb/

Model files are student files (:mod:`keygrid_ros.model.student`): the metadata names the teacher.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
import copy
from dataclasses import asdict, dataclass, field, fields, replace
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
import yaml

from ..data.dataset import Augment, SequenceDataset
from ..data.sequences import load_sequence
from ..model.config import reject_unknown_fields
from ..model.sprin import SPRINConfig, SPRINSeg, keypoints_from_logits, normalize_input
from ..model.student import load_student, save_student
from . import evaluate
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import apply_overrides, check_run_settings, overridden_keys, portable_path, resolve_path_settings
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

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class DistillConfig:
    """Everything a distillation run depends on (USEEK defaults); ``config/distill_useek.yaml`` documents it.

    The data settings mean what they mean for ``keygrid train`` (:class:`keygrid_ros.train.config.TrainConfig`).
    ``student`` holds :class:`SPRINConfig` fields, plus ``preset: tiny`` for the narrow test network.
    """

    teacher: str = ''  # Key-Grid model file (``--teacher`` on the command line)
    init: str = ''  # a student file to start from (fine-tuning); its architecture must be the one ``student`` gives

    # --- data ---
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    val_fraction: float = 0.1
    num_points: int = 2048
    sampling: str = 'fps'
    augment: dict[str, Any] = field(default_factory=dict)  # none in USEEK: the student is invariant by design
    keypoint_names: list[str] = field(default_factory=list)  # default: the teacher's

    # --- student and pseudo-labels ---
    student: dict[str, Any] = field(default_factory=dict)
    expand: float = 1.2
    dist_threshold: float = 0.10
    negative_sampling_factor: float = 3.0
    hard_keypoints: bool = False  # student keypoints for validation DAS: weighted means (USEEK) or arg-max

    # --- optimisation (USEEK: Adam lr 1e-4, batch 8, 30 epochs, shuffled) ---
    optimizer: str = 'adam'
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    batch_size: int = 8
    epochs: int = 30
    shuffle: bool = True
    max_steps: int = 0
    frame_stride: int = 1  # distil on every n-th frame of each sequence (validation sees every frame)

    # --- runtime ---
    seed: int = 0
    device: str = 'auto'
    amp: str = 'bf16'  # GPU, and CPUs with native bf16; geometry (kNN, descriptors) and loss stay float32
    tf32: bool = True
    num_workers: int = 0
    threads: int = 0

    # --- output and logging ---
    out_dir: str = 'runs'
    run_name: str = ''
    log_every: int = 10
    val_every: int = 1
    val_max_frames: int = 0
    val_das: bool = True  # student DAS on aligned validation inputs
    val_se3: bool = True  # ... and under a random SE(3) per frame
    val_teacher: bool = True  # the teacher's DAS, aligned and under SE(3), once per run
    checkpoint_every: int = 0
    progress: bool = True
    export: str = ''

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.optimizer not in ('adam', 'adamw'):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        check_run_settings(self)
        if self.expand <= 0 or not 0 < self.dist_threshold <= 1 or self.negative_sampling_factor < 0:
            raise ValueError('expand must be > 0, dist_threshold in (0, 1], negative_sampling_factor >= 0')
        for key in ('train', 'val'):
            if isinstance(getattr(self, key), str):
                setattr(self, key, [getattr(self, key)])
        try:  # unknown names and bad values fail here, not after the teacher has loaded
            Augment(**self.augment)
        except TypeError as exc:
            raise ValueError(f'augment: {exc}; known: {", ".join(f.name for f in fields(Augment))}') from None
        if self.augment.get('se3'):
            raise ValueError('augment.se3 would turn the clouds the teacher labels, and Key-Grid is not rotation '
                             'invariant: its labels would be wrong. The student needs no rotation augmentation '
                             '(its invariance is built in); use noise, downsample, stretch or partial.')

    def student_config(self, num_keypoints: int) -> SPRINConfig:
        """The student architecture for a teacher with ``num_keypoints`` (``num_points`` from the data)."""
        values = dict(self.student)
        preset = values.pop('preset', 'released')
        if preset == 'tiny':
            base = SPRINConfig.tiny(num_keypoints, self.num_points)
        elif preset == 'released':
            base = SPRINConfig(num_keypoints=num_keypoints, num_points=self.num_points)
        else:
            raise ValueError(f"student.preset must be 'released' or 'tiny', got {preset!r}")
        data = {**base.to_dict(), **values, 'num_keypoints': num_keypoints, 'num_points': self.num_points}
        return SPRINConfig.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data['betas'] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        reject_unknown_fields(cls, data, 'distillation settings')
        return cls(**data)


def load_config(path: str | Path | None, overrides: list[str] | None = None, teacher: str | None = None,
                init: str | None = None) -> DistillConfig:
    """YAML file (``None``: defaults) + ``key=value`` overrides (+ ``teacher``, ``init``) -> a validated config.

    Paths in the YAML (data, teacher, init) resolve against its folder; those given on the command line against
    the current directory.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f'{path}: expected a mapping of settings at the top level')
        data = loaded
        resolve_path_settings(data, path.resolve().parent, lists=('train', 'val'), files=('teacher', 'init'))
    overrides = list(overrides or [])
    data = apply_overrides(data, overrides)
    overridden = overridden_keys(overrides)
    resolve_path_settings(data, Path.cwd(), lists=[k for k in ('train', 'val') if k in overridden])
    if teacher:
        data['teacher'] = str(Path(teacher))
    if init:
        data['init'] = str(Path(init))
    config = DistillConfig.from_dict(data)
    config.student_config(2)  # fail now, not after loading the data and the teacher, on a bad student setting
    return config


# ----------------------------------------------------------------------------------------------------------
# teacher, labels, loss


class KeyGridTeacher:
    """A Key-Grid model file as a teacher: points (B, N, 3) (normalised, FPS-ordered) ->
    ``(keypoints (B, K, 3), strengths (B, K(K-1)/2))``, soft keypoints by default (USEEK's Key-Grid variant)."""

    def __init__(self, path: str | Path, device: torch.device | str = 'cpu'):
        from ..model.io import load_model

        self.path = Path(path)
        model, metadata = load_model(self.path, encoder_only=True, device=device)
        self.encoder = model.encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.config = model.config
        self.num_keypoints = self.config.num_keypoints
        self.keypoint_names = list(metadata['keypoint_names'])
        self.info = {
            'model_type': 'keygrid', 'file': self.path.name, 'path': str(self.path), 'format': metadata['format'],
            'weights_sha256': metadata['weights_sha256'], 'config': self.config.to_dict(),
            'keypoint_names': self.keypoint_names, 'mode': 'soft',
        }

    def __call__(self, points: torch.Tensor, hard: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.encoder.parameters()).device
        with torch.no_grad():
            out = self.encoder(points.to(device), hard=hard)
        return out.keypoints.float(), out.strengths.float()


#: What the distiller needs from a teacher (a :class:`KeyGridTeacher`, or anything alike in tests):
#: ``teacher(points, hard=False) -> (keypoints (B, K, 3), strengths (B, S) or None)`` plus the attributes
#: ``num_keypoints``, ``keypoint_names`` and ``info`` (a JSON-able dict for the student's metadata).
Teacher = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def pseudo_labels(points: torch.Tensor, keypoints: torch.Tensor, expand: float = 1.2,
                  threshold: float = 0.10) -> torch.Tensor:
    """USEEK's rule: multi-label masks (B, N, K) bool from points (B, N, 3) and teacher keypoints (B, K, 3).

    The keypoints are scaled by ``expand`` about the origin (pushing them towards the cloud's rim), each
    point's distance to each is min-max normalised over the cloud to [0, 1], and the point is a positive where
    that is below ``threshold``. The nearest point to each scaled keypoint is always a positive.
    """
    target = keypoints.float() * expand
    dist = (points.float().unsqueeze(2) - target.unsqueeze(1)).norm(dim=-1)  # (B, N, K), exact differences
    lo = dist.amin(dim=1, keepdim=True)
    span = (dist.amax(dim=1, keepdim=True) - lo).clamp_min(1e-12)  # all points equidistant: all positive
    return (dist - lo) / span < threshold


def negative_sampled_bce(logits: torch.Tensor, labels: torch.Tensor, factor: float = 3.0,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """USEEK's loss: per cloud and keypoint, BCE over every positive and ``min(#neg, factor #pos)`` random
    negatives (mean over those points), then the mean over clouds and keypoints (0-d tensor, float32).

    ``logits`` (B, N, K), ``labels`` (B, N, K) bool. The negatives are drawn from ``generator`` (the global RNG
    on ``logits``' device when None).
    """
    logits = logits.float().transpose(1, 2)  # (B, K, N)
    positive = labels.transpose(1, 2)
    n_pos = positive.sum(-1, keepdim=True)
    n_neg = positive.shape[-1] - n_pos
    take = torch.minimum(n_neg, torch.floor(factor * n_pos).long())
    gen_device = generator.device if generator is not None else logits.device
    scores = torch.rand(positive.shape, generator=generator, device=gen_device).to(logits.device)
    scores = scores.masked_fill(positive, 2.0)  # positives rank after every negative
    rank = torch.empty_like(positive, dtype=torch.long)
    order = scores.argsort(dim=-1)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    chosen = positive | (rank < take)
    bce = F.binary_cross_entropy_with_logits(logits, positive.float(), reduction='none')
    per_channel = (bce * chosen).sum(-1) / chosen.sum(-1).clamp_min(1)
    return per_channel.mean()


def keypoint_error(points: torch.Tensor, logits: torch.Tensor, teacher_keypoints: torch.Tensor,
                   hard: bool = False) -> torch.Tensor:
    """Mean distance (0-d) between the student's keypoints (from ``logits`` (B, N, K) on ``points`` (B, N, 3):
    weighted means, or arg-max points when ``hard``) and the teacher's (B, K, 3), same index, points' units."""
    student, _ = keypoints_from_logits(points, logits, hard=hard)
    return (student - teacher_keypoints.to(student.dtype)).norm(dim=-1).mean()


# ----------------------------------------------------------------------------------------------------------
# validation


def _student_keypoint_fn(net: SPRINSeg, hard: bool) -> evaluate.KeypointFn:
    net = getattr(net, 'module', net)

    def keypoint_fn(points: torch.Tensor) -> torch.Tensor:
        device = next(net.parameters()).device
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                points = points.to(device)
                logits = net(normalize_input(points)[0])
                return keypoints_from_logits(points, logits, hard=hard)[0]
        finally:
            net.train(was_training)

    return keypoint_fn


def _das(keypoint_fn: evaluate.KeypointFn, val, se3: bool, config: DistillConfig) -> dict[str, Any] | None:
    """Both DAS protocols on the validation frames, aligned or under a seeded random SE(3) per frame."""
    per_sequence = []
    twins: dict[int, SequenceDataset] = {}
    for dataset, seq_index, frames in val:
        if len(frames) < 2:
            continue
        if se3:
            key = id(dataset)
            if key not in twins:  # the same frames and samples, each moved by a random SE(3) (seeded per item)
                twin = copy.copy(dataset)
                twin.augment = replace(dataset.augment, se3=True)
                twin._cache = OrderedDict()
                twins[key] = twin
            dataset = twins[key]
        pred = evaluate.predict_frames(keypoint_fn, dataset, seq_index, frames, batch_size=config.batch_size)
        per_sequence.append(evaluate.score_sequence(load_sequence(dataset.files[seq_index]), pred))
    if not per_sequence:
        return None
    summary = evaluate.summarize(per_sequence)
    return {key: summary[key] for key in ('das', 'das_reference_frame', 'das_correspondence', 'by_motion')}


def _validate(net: SPRINSeg, teacher, val, config: DistillConfig, device: torch.device) -> dict[str, Any] | None:
    """Validation BCE (fixed negative sample), student-teacher keypoint distance, student DAS; RNG untouched."""
    if not val:
        return None
    saved = rng_state()
    was_training = net.training
    net.eval()
    try:
        generator = torch.Generator().manual_seed(config.seed)
        bce_sum, dist_sum, hard_sum, clouds = 0.0, 0.0, 0.0, 0
        for dataset, seq_index, frames in val:
            start = int(np.sum(dataset.frame_counts[:seq_index]))
            loader = DataLoader(Subset(dataset, [start + f for f in frames]), batch_size=config.batch_size)
            for batch in loader:
                points = batch['points'].to(device)
                teacher_kp, _ = teacher(points)
                labels = pseudo_labels(points, teacher_kp, config.expand, config.dist_threshold)
                with torch.no_grad():
                    logits = net(normalize_input(points)[0])
                bce = negative_sampled_bce(logits, labels, config.negative_sampling_factor, generator)
                n = points.shape[0]
                bce_sum += float(bce) * n
                dist_sum += float(keypoint_error(points, logits, teacher_kp)) * n
                hard_sum += float(keypoint_error(points, logits, teacher_kp, hard=True)) * n
                clouds += n
        clouds = max(clouds, 1)
        report: dict[str, Any] = {'bce': bce_sum / clouds, 'keypoint_error': dist_sum / clouds,
                                  'keypoint_error_hard': hard_sum / clouds, 'frames': clouds}
        keypoint_fn = _student_keypoint_fn(net, config.hard_keypoints)
        if config.val_das:
            report['das'] = _das(keypoint_fn, val, False, config)
        if config.val_se3:
            report['das_se3'] = _das(keypoint_fn, val, True, config)
        return report
    finally:
        net.train(was_training)
        set_rng_state(saved)


def _teacher_das(teacher, val, config: DistillConfig) -> dict[str, Any] | None:
    """The teacher's DAS (its released test-time mode: hard keypoints) aligned and under SE(3)."""
    if not val or not config.val_teacher:
        return None
    saved = rng_state()
    try:
        hard = bool(getattr(getattr(teacher, 'config', None), 'hard_keypoints', True))

        def keypoint_fn(points: torch.Tensor) -> torch.Tensor:
            return teacher(points, hard=hard)[0]

        return {'das': _das(keypoint_fn, val, False, config), 'das_se3': _das(keypoint_fn, val, True, config)}
    finally:
        set_rng_state(saved)


def _teacher_strengths(teacher, dataset: SequenceDataset, indices: list[int], device: torch.device,
                       batch_size: int) -> list[float] | None:
    """The teacher's mean segment strengths over (up to 64 of) the training frames, for the student's file."""
    picks = indices[:: max(1, len(indices) // 64)][:64]
    total, count = None, 0
    for batch in DataLoader(Subset(dataset, picks), batch_size=batch_size):
        _, strengths = teacher(batch['points'].to(device))
        if strengths is None:
            return None
        total = strengths.sum(0) if total is None else total + strengths.sum(0)
        count += strengths.shape[0]
    return None if total is None else (total / count).tolist()


# ----------------------------------------------------------------------------------------------------------
# the loop


@dataclass
class DistillResult:
    run_dir: Path
    student: SPRINSeg
    step: int
    epoch: int
    clouds_seen: int
    clouds_per_s: float
    best_bce: float | None
    last_report: dict[str, Any] | None
    teacher_das: dict[str, Any] | None


def _start_from(net: SPRINSeg, path: str, config: SPRINConfig, teacher_info: dict[str, Any]) -> dict[str, Any]:
    """Load the student file ``path`` into ``net`` (a fine-tuning start) and describe it for the metadata.

    Raises :class:`~keygrid_ros.model.io.ModelFileError` when the file's architecture is not ``config``'s (naming
    the fields), before any training. A file distilled from another teacher than ``teacher_info`` describes is
    allowed (a new teacher's keypoint order may differ, so it is logged): its weights are still a better start
    than random ones.
    """
    source, metadata = load_student(path, config)
    net.load_state_dict(source.state_dict())
    its_teacher = metadata.get('teacher') or {}
    if its_teacher.get('weights_sha256') != teacher_info.get('weights_sha256'):
        log.warning("init: %s was distilled from another teacher (%s); its keypoint order may not be this "
                    "teacher's", path, its_teacher.get('file', 'unknown'))
    return start_record(path, metadata)


def unaligned_simulations(files) -> list[str]:
    """Those of ``files`` that our simulator wrote (a garment pattern and a seed in their ``info``) and that
    ``keygrid align`` has not turned into the garment's canonical heading. Reads only the ``info`` entry."""
    found = []
    for path in files:
        if Path(path).suffix != '.npz':
            continue
        with np.load(path) as data:
            info = json.loads(str(data['info'])) if 'info' in data.files else {}
        if 'pattern' in info and 'seed' in info and 'aligned_by_deg' not in info:
            found.append(str(path))
    return found


def distill(config: DistillConfig, teacher=None, resume: bool | str = False) -> DistillResult:
    """Distil ``teacher`` (default: the Key-Grid file ``config.teacher``) into a SPRIN student.

    ``resume`` (True or a run folder/checkpoint) continues a run exactly. Works under ``torchrun`` (DDP).
    Raises :class:`~keygrid_ros.train.trainer.NonFiniteLossError` on a NaN/inf loss or gradient.
    """
    ddp = setup_distributed(config.device)
    try:
        return _distill(config, teacher, resume, ddp)
    finally:
        if ddp.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train_step(model, net: SPRINSeg, optimizer, scaler, points: torch.Tensor, labels: torch.Tensor,
                config: DistillConfig, autocast_dtype: torch.dtype | None, ddp: Distributed) -> dict[str, float]:
    normalised = normalize_input(points)[0]
    with torch.autocast(points.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        logits = model(normalised)
    loss = negative_sampled_bce(logits, labels, config.negative_sampling_factor)
    value = loss.detach().clone()
    if ddp.enabled:  # every rank must reach the same verdict, or the others would hang in backward
        dist.all_reduce(value)
        value /= ddp.world
    if not torch.isfinite(value):
        raise NonFiniteLossError(f'loss is {value.item()}')
    grad_norm = optimizer_step(loss, net, optimizer, scaler, config.grad_clip)
    return {'loss': value.item(), 'grad_norm': grad_norm, 'positive_fraction': labels.float().mean().item()}


def _distill(config: DistillConfig, teacher, resume: bool | str, ddp: Distributed) -> DistillResult:
    device, autocast_dtype = configure_runtime(config, ddp)
    if teacher is None:
        if not config.teacher:
            raise ValueError('no teacher: give --teacher MODEL (a Key-Grid .safetensors file) or set teacher:')
        teacher = KeyGridTeacher(config.teacher, device)
    run_dir = run_directory(config, resume, ddp)
    checkpoint_path = run_dir / CHECKPOINT
    if resume and not checkpoint_path.is_file():
        raise FileNotFoundError(f'--resume: no checkpoint at {checkpoint_path}')

    train_set, train_indices, val = split_data(config)
    unaligned = unaligned_simulations(train_set.files)
    if unaligned and ddp.main:
        log.warning('%d of %d training sequences are simulated at a random yaw and not aligned (keygrid align): a '
                    'Key-Grid teacher trained at random yaw keys its keypoints to directions, not to parts, so '
                    'its labels on them disagree across sequences and the SE(3)-invariant student cannot learn '
                    'them (docs/results.md). Distil on aligned sequences, e.g. %s', len(unaligned),
                    len(train_set.files), unaligned[0])
    steps_per_epoch = len(epoch_batches(len(train_indices), config, 0, ddp))
    if steps_per_epoch == 0:
        raise ValueError(f'{len(train_indices)} training frames over {ddp.world} process(es) do not fill one batch '
                         f'of {config.batch_size}')

    K = teacher.num_keypoints
    torch.manual_seed(config.seed)
    student_config = config.student_config(K)
    net = SPRINSeg(student_config).to(device)
    optim_cls = torch.optim.Adam if config.optimizer == 'adam' else torch.optim.AdamW
    optimizer = optim_cls(net.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    keypoint_names = config.keypoint_names or list(teacher.keypoint_names)
    if len(keypoint_names) != K:
        raise ValueError(f'{len(keypoint_names)} keypoint names for a teacher with {K} keypoints')

    teacher_info = dict(getattr(teacher, 'info', {}) or {})
    init_info = _start_from(net, config.init, student_config, teacher_info) if config.init and not resume else None

    epoch, batch_done, step, clouds_seen = 0, 0, 0, 0
    best_bce: float | None = None
    last_report: dict[str, Any] | None = None
    teacher_das: dict[str, Any] | None = None
    if resume:
        state = load_checkpoint(checkpoint_path)
        net.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        scaler.load_state_dict(state['scaler'])
        epoch, batch_done, step = state['epoch'], state['batch_in_epoch'], state['step']
        clouds_seen, best_bce = state['clouds_seen'], state['best_bce']
        last_report = json.loads(state['last_report'])
        teacher_das = json.loads(state['teacher_das'])
        init_info = json.loads(state.get('init', 'null'))  # where the weights first came from, if not random
        restore_rng(state['rng'], config.seed, step, ddp)
        if ddp.main:
            log.info('resuming %s at epoch %d, batch %d, step %d', run_dir, epoch, batch_done, step)
    else:
        seed_processes(config.seed, ddp)  # per-process FPS starts, neighbour subsets, negatives

    model: torch.nn.Module = net
    if ddp.enabled:
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == 'cuda' else None)

    writer = None
    strengths = None
    if ddp.main:
        writer = open_run_folder(run_dir, config, resume, step)
        saved = rng_state()
        try:
            strengths = _teacher_strengths(teacher, train_set, train_indices, device, config.batch_size)
            if teacher_das is None and not resume:
                teacher_das = _teacher_das(teacher, val, config)
                if teacher_das is not None:
                    log.info('teacher DAS: aligned %s, SE(3) %s', _fmt(teacher_das['das']),
                             _fmt(teacher_das['das_se3']))
        finally:
            set_rng_state(saved)

    training_data = {
        'train': [portable_path(f) for f in train_set.files], 'train_frames': len(train_indices),
        'val': sorted({portable_path(d.files[i]) for d, i, _ in val}),
        'val_frames': int(sum(len(f) for _, _, f in val)),
        'num_points': config.num_points, 'sampling': config.sampling,
        'pseudo_labels': {'expand': config.expand, 'dist_threshold': config.dist_threshold,
                          'negative_sampling_factor': config.negative_sampling_factor},
        # Whether the labels could agree across sequences (see unaligned_simulations): part of the provenance.
        'unaligned_simulations': len(unaligned),
    }
    if init_info is not None:
        training_data['init'] = init_info

    def write_checkpoint(epoch_now: int, batch_now: int) -> None:
        sync_buffers(net, ddp)
        rngs = gather_rng_states(ddp)
        if ddp.main:
            save_checkpoint(checkpoint_path, {
                'model': net.state_dict(), 'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(),
                'epoch': epoch_now, 'batch_in_epoch': batch_now, 'step': step, 'clouds_seen': clouds_seen,
                'best_bce': best_bce, 'last_report': json.dumps(last_report), 'teacher_das': json.dumps(teacher_das),
                'rng': rngs, 'config': json.dumps(config.to_dict()), 'init': json.dumps(init_info),
            })

    def export(path: Path, report: dict | None, epoch_now: int) -> None:
        metrics = {'epoch': epoch_now, 'step': step, 'clouds_seen': clouds_seen, 'teacher': teacher_das}
        if report is not None:
            metrics.update({f'val_{k}': v for k, v in report.items()})
        save_student(path, net, teacher=teacher_info, keypoint_names=keypoint_names, segment_strengths=strengths,
                     metrics=json.loads(evaluate.to_json(metrics)),
                     training_data={**training_data, 'clouds_seen': clouds_seen, 'steps': step, 'epochs': epoch_now})

    global_batch = config.batch_size * ddp.world
    throughput = Throughput()
    try:
        while epoch < config.epochs and not (config.max_steps and step >= config.max_steps):
            net.train()
            train_set.set_epoch(epoch)
            batches = epoch_batches(len(train_indices), config, epoch, ddp)[batch_done:]
            batches = [[train_indices[i] for i in b] for b in batches]
            loader = DataLoader(train_set, batch_sampler=batches, num_workers=config.num_workers,
                                generator=torch.Generator().manual_seed(config.seed))
            bar = progress_bar(config, ddp, epoch, steps_per_epoch, batch_done)
            throughput = Throughput()  # this epoch's steps only
            for batch in loader:
                points = batch['points'].to(device, non_blocking=True)
                teacher_kp, _ = teacher(points)
                labels = pseudo_labels(points, teacher_kp, config.expand, config.dist_threshold)
                stats = _train_step(model, net, optimizer, scaler, points, labels, config, autocast_dtype, ddp)
                step += 1
                batch_done += 1
                clouds_seen += global_batch
                throughput.step(global_batch)
                if bar is not None:
                    bar.set_postfix(bce=f'{stats["loss"]:.4f}', clouds_s=f'{throughput.rate:.1f}', refresh=False)
                    bar.update()
                if writer is not None and (step % config.log_every == 0 or step == 1):
                    for key, value in stats.items():
                        writer.add_scalar(f'train/{key}', value, step)
                    writer.add_scalar('train/lr', optimizer.param_groups[0]['lr'], step)
                    writer.add_scalar('train/clouds_per_s', throughput.rate, step)
                if config.checkpoint_every and step % config.checkpoint_every == 0 and batch_done < steps_per_epoch:
                    write_checkpoint(epoch, batch_done)
                if config.max_steps and step >= config.max_steps:
                    break
                throughput.start()  # exclude logging and checkpoints from the throughput
            if bar is not None:
                bar.close()
            # End of the epoch, or of training when max_steps stopped it inside one.
            stopped_inside = batch_done < steps_per_epoch
            if not stopped_inside:
                epoch, batch_done = epoch + 1, 0
            last = epoch == config.epochs or bool(config.max_steps and step >= config.max_steps)
            sync_buffers(net, ddp)
            if ddp.main:
                periodic = not stopped_inside and bool(config.val_every) and epoch % config.val_every == 0
                report = _validate(net, teacher, val, config, device) if periodic or last else None
                if report is not None:
                    last_report = report
                    _log_validation(writer, run_dir, report, teacher_das, epoch, step)
                    if best_bce is None or report['bce'] < best_bce:
                        best_bce = report['bce']
                        export(run_dir / MODEL_BEST, report, epoch)
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
        raise NonFiniteLossError(stopped_message('distillation', epoch, step, exc, checkpoint_path)) from None

    if writer is not None:
        writer.close()
    if ddp.main:
        copy_final_model(run_dir, config.export)
    ddp.barrier()
    return DistillResult(run_dir, net, step, epoch, clouds_seen, throughput.rate, best_bce, last_report,
                         teacher_das)


def _fmt(das: dict[str, Any] | None) -> str:
    return 'n/a' if das is None else f'{das["das"]:.1f} (reference frame {das["das_reference_frame"]:.1f})'


def _log_validation(writer, run_dir: Path, report: dict[str, Any], teacher_das: dict[str, Any] | None, epoch: int,
                    step: int) -> None:
    writer.add_scalar('val/bce', report['bce'], step)
    writer.add_scalar('val/keypoint_error', report['keypoint_error'], step)
    writer.add_scalar('val/keypoint_error_hard', report['keypoint_error_hard'], step)
    for key in ('das', 'das_se3'):
        if report.get(key):
            writer.add_scalar(f'val/student_{key}', report[key]['das'], step)
            writer.add_scalar(f'val/student_{key}_reference_frame', report[key]['das_reference_frame'], step)
    log.info('epoch %d: validation BCE %.4f, keypoint error %.4f (arg-max %.4f), student DAS aligned %s, SE(3) %s',
             epoch, report['bce'], report['keypoint_error'], report['keypoint_error_hard'], _fmt(report.get('das')),
             _fmt(report.get('das_se3')))
    line = {'epoch': epoch, 'step': step, **report}
    if teacher_das is not None:
        line['teacher'] = teacher_das
    with open(run_dir / 'metrics.jsonl', 'a') as fh:
        fh.write(evaluate.to_json(line) + '\n')

