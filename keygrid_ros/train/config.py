"""Training configuration: one dataclass, filled from a YAML file and ``key=value`` command-line overrides.

Defaults are the released Key-Grid training script's (``reference/keygrid_method.md`` section 4): K=8
keypoints on 2048 points, batch 8, ``Adadelta(lr=0.1, eps=1e-2)``, 100 epochs, frames in temporal order
(no shuffle), similarity loss from epoch 21 on (0-indexed; the model config's ``warmup_epochs``), F=12
farthest-point targets. Model settings (grid size, ablations, ...) go in the ``model`` mapping, whose keys
are :class:`keygrid_ros.model.config.KeyGridConfig` fields.

Overrides use dotted keys and YAML values::

    keygrid train --config config/train_keygrid.yaml epochs=10 optimizer=adam lr=1e-3 \\
        model.grid_resolution=[16,16,16] model.use_grid_heatmap=false
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..model.config import reject_unknown_fields


@dataclass
class TrainConfig:
    """Everything a training run depends on; the run folder keeps the resolved copy as ``config.yaml``."""

    # --- data ---
    train: list[str] = field(default_factory=list)  # sequence files/folders (globs allowed), relative to the YAML
    val: list[str] = field(default_factory=list)  # held-out sequences; empty: split off ``val_fraction`` of train
    val_fraction: float = 0.1  # of the sequences (or, with a single sequence, of its last frames)
    num_points: int = 2048  # points per training cloud (also the model's ``num_points``)
    sampling: str = 'fps'  # 'fps' over the mesh vertices (released) or 'surface' (random points on the triangles)
    augment: dict[str, Any] = field(default_factory=dict)  # keygrid_ros.data.dataset.Augment fields; released: none
    keypoint_names: list[str] = field(default_factory=list)  # default kp0..kpK-1

    # --- model: any KeyGridConfig field (num_keypoints, grid_resolution, use_grid_heatmap, ...) ---
    model: dict[str, Any] = field(default_factory=dict)

    # --- where the weights start, and the optional correspondence loss (keygrid_ros.train.correspondence) ---
    init: str = ''  # a Key-Grid model file to start from (fine-tuning); its architecture must be ``model``'s
    correspondence_weight: float = 0.0  # weight of the correspondence loss; 0 = off (released)
    correspondence_gap: int = 16  # the paired frames of one sequence are at most this many frames apart
    correspondence_temperature: float = 0.0  # 0: squared distance; > 0: contrastive form at this temperature
    correspondence_stop_gradient: bool = False  # the moved cloth is a fixed target: no reward for still cloth
    correspondence_spread: float = 0.0  # weight of the moved cloth's variance: wide weight patches pay for it
    # --- the optional tracked-target loss (keygrid_ros.train.tracked_targets) ---
    track_weight: float = 0.0  # weight of the pull towards the teacher's reference-frame vertices; 0 = off
    track_teacher: str = ''  # the model file that picks the vertices; empty: ``init``
    track_reference_frame: int = 0  # the frame of each sequence where the teacher picks them (0: the flat garment)

    # --- optimisation (released: Adadelta lr 0.1 eps 1e-2, batch 8, 100 epochs, no shuffle) ---
    optimizer: str = 'adadelta'  # 'adadelta' (released) or 'adam' (the paper's text)
    lr: float = 0.1
    eps: float = 1e-2  # Adadelta's eps (released 1e-2); Adam uses its own default 1e-8
    rho: float = 0.9  # Adadelta
    betas: tuple[float, float] = (0.9, 0.999)  # Adam
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 = off (released: off)
    batch_size: int = 8  # per process; under torchrun the global batch is batch_size x world size
    epochs: int = 100
    shuffle: bool = False  # the released ClothesNet script feeds frames in temporal order
    max_steps: int = 0  # stop after this many optimiser steps (0 = run all epochs); for smoke tests
    frame_stride: int = 1  # train on every n-th frame of each sequence (simulated neighbours are near-duplicates)

    # --- runtime ---
    seed: int = 0
    device: str = 'auto'  # 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...
    amp: str = 'bf16'  # mixed precision: 'bf16' (GPU, and CPUs with native bf16), 'fp16' (GPU, grad scaler), 'off'
    tf32: bool = True  # TF32 matmuls/convolutions on Ampere+ GPUs
    num_workers: int = 0  # DataLoader workers
    threads: int = 0  # torch CPU threads per process (0 = torch's default)

    # --- output and logging ---
    out_dir: str = 'runs'
    run_name: str = ''  # default: a timestamp
    log_every: int = 10  # steps between TensorBoard scalar writes
    val_every: int = 1  # epochs between validations (DAS); 0 = only at the end
    val_max_frames: int = 0  # cap frames per validation sequence (0 = all)
    picture_every: int = 5  # epochs between keypoint pictures in TensorBoard (0 = never)
    checkpoint_every: int = 0  # also checkpoint every this many steps inside an epoch (0 = at epoch ends)
    progress: bool = True  # tqdm progress bar (rank 0)
    export: str = ''  # also copy the final model file here

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.optimizer not in ('adadelta', 'adam'):
            raise ValueError(f"optimizer must be 'adadelta' or 'adam', got {self.optimizer!r}")
        check_run_settings(self)
        if (self.correspondence_weight < 0 or self.correspondence_gap < 1 or self.correspondence_temperature < 0
                or self.correspondence_spread < 0):
            raise ValueError('correspondence_weight, correspondence_temperature and correspondence_spread must be '
                             f'>= 0 and correspondence_gap >= 1, got {self.correspondence_weight}, '
                             f'{self.correspondence_temperature}, {self.correspondence_spread} and '
                             f'{self.correspondence_gap}')
        if self.correspondence_weight > 0 and self.batch_size % 2:
            raise ValueError(f'the correspondence loss trains on pairs of frames: batch_size must be even, '
                             f'got {self.batch_size}')
        if self.track_weight < 0 or self.track_reference_frame < 0:
            raise ValueError(f'track_weight and track_reference_frame must be >= 0, got {self.track_weight} and '
                             f'{self.track_reference_frame}')
        if self.track_weight > 0 and not (self.track_teacher or self.init):
            raise ValueError('track_weight > 0 needs a teacher: set track_teacher (or init) to a Key-Grid model file')
        if isinstance(self.train, str):
            self.train = [self.train]
        if isinstance(self.val, str):
            self.val = [self.val]

    def model_config(self):
        """The :class:`KeyGridConfig` this run trains (``num_points`` follows the data setting)."""
        from ..model.config import KeyGridConfig

        values = {'num_points': self.num_points, **self.model}
        return KeyGridConfig.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data['betas'] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        reject_unknown_fields(cls, data, 'training settings')
        return cls(**data)


def portable_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies inside it (what a model file should record:
    ``out/dataset/train/x.npz``, not one machine's absolute path), else as given."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def check_run_settings(config: Any) -> None:
    """The checks every training-like run shares (``keygrid train`` and ``keygrid distill``): mixed precision,
    batch size and epochs, the validation fraction, the point sampling and the frame stride."""
    if config.amp is False:  # YAML 1.1 reads the documented ``amp: off`` (and ``amp=off``) as false
        config.amp = 'off'
    if config.amp not in ('bf16', 'fp16', 'off'):
        raise ValueError(f"amp must be 'bf16', 'fp16' or 'off', got {config.amp!r}")
    if config.batch_size < 1 or config.epochs < 1:
        raise ValueError('batch_size and epochs must be at least 1')
    if not 0.0 <= config.val_fraction < 1.0:
        raise ValueError('val_fraction must be in [0, 1)')
    if config.sampling not in ('fps', 'surface'):
        raise ValueError(f"sampling must be 'fps' or 'surface', got {config.sampling!r}")
    if config.frame_stride < 1:
        raise ValueError(f'frame_stride must be at least 1, got {config.frame_stride}')


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'model.grid_resolution=[16,16,16]'`` -> (['model', 'grid_resolution'], [16, 16, 16]).

    The value is parsed as YAML, so numbers, booleans, lists and null work; anything else is a string.
    """
    key, sep, value = text.partition('=')
    if not sep or not key.strip():
        raise ValueError(f'override {text!r} is not key=value')
    return key.strip().split('.'), yaml.safe_load(value) if value.strip() else ''


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides to a nested dict (returns a new dict)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f'override {text!r}: {part!r} is not a mapping')
        node[path[-1]] = value
    return data


def resolve_paths(entries: list[str], base: Path) -> list[str]:
    """Make relative data paths relative to ``base`` (the YAML file's folder), keep absolute ones."""
    out = []
    for entry in entries:
        path = Path(entry).expanduser()
        out.append(str(path if path.is_absolute() else (base / path)))
    return out


def resolve_path_settings(data: dict[str, Any], base: Path, lists: Iterable[str] = (),
                          files: Iterable[str] = ()) -> None:
    """Resolve path settings of a config mapping in place against ``base``.

    ``lists`` name data settings holding one path or a list of them (those absent from ``data`` are left out);
    ``files`` name settings holding one file each (a missing or empty one stays as it is).
    """
    for key in lists:
        if key in data:
            entries = [data[key]] if isinstance(data[key], str) else list(data[key] or [])
            data[key] = resolve_paths(entries, base)
    for key in files:
        if data.get(key):
            data[key] = resolve_paths([data[key]], base)[0]


def overridden_keys(overrides: Iterable[str]) -> set[str]:
    """The setting names that ``key=value`` overrides set."""
    return {o.split('=', 1)[0].strip() for o in overrides}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML file (``None``: defaults only), apply overrides, validate.

    Data paths (and ``init``) written in the YAML resolve against the YAML's folder, so a config can sit next
    to its data; paths given as overrides resolve against the current directory.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f'{path}: expected a mapping of settings at the top level')
        data = loaded
        resolve_path_settings(data, path.resolve().parent, lists=('train', 'val'), files=('init', 'track_teacher'))
    overrides = list(overrides or [])
    data = apply_overrides(data, overrides)
    overridden = overridden_keys(overrides)
    # Resolved now, so that the run folder's config.yaml still finds them from anywhere.
    resolve_path_settings(data, Path.cwd(), lists=[k for k in ('train', 'val') if k in overridden],
                          files=[k for k in ('init', 'track_teacher') if k in overridden])
    config = TrainConfig.from_dict(data)
    config.model_config()  # fail now, not after loading the data, on a bad model setting
    return config


def dump_config(config, path: str | Path) -> None:
    """Write a resolved config (a :class:`TrainConfig` or a distillation config: anything with ``to_dict``) as
    YAML, readable back by its loader."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None))
