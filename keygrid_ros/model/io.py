"""Model files: safetensors weights + JSON metadata. Nothing is ever unpickled.

A file holds the state dict of a :class:`KeyGrid` (all of it, or only the encoder) and string metadata:

=================  ===========================================================================
key                value
=================  ===========================================================================
format             ``keygrid_ros.keygrid``
format_version     ``1`` (files from a newer version are refused)
contents           ``full`` (encoder + decoder) or ``encoder``
config             JSON of :class:`KeyGridConfig` (the architecture and the training settings)
num_keypoints      K, also inside ``config`` (top level for tools that only read metadata)
num_points         N the model was trained on
grid_resolution    JSON list, e.g. ``[16, 16, 8]``
sigma2             heatmap Gaussian width, normalised units
normalization      ``keygrid_minmax_scalar`` (see :mod:`keygrid_ros.normalize`)
keypoint_names     JSON list of K names
training_data      JSON (free-form: datasets, garments, frames, ...)
metrics            JSON (free-form: DAS, losses, ...)
weights_sha256     checksum of every tensor (name, dtype, shape, bytes), to catch corrupt files
weights_dtype      ``float32`` (as trained) or ``float16`` (half the size; widened to float32 on loading);
                   optional, float32 when absent
torch_version      the torch that wrote the file
=================  ===========================================================================

Loading checks the metadata against the requested architecture and refuses a mismatch, naming every field
that differs; a truncated or corrupt file raises :class:`ModelFileError` saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save
import torch

from ..fileio import atomic_write
from .config import ARCHITECTURE_FIELDS, KeyGridConfig
from .keygrid import KeyGrid

FORMAT = 'keygrid_ros.keygrid'
FORMAT_VERSION = 1
NORMALIZATION = 'keygrid_minmax_scalar'
_JSON_KEYS = ('config', 'grid_resolution', 'keypoint_names', 'training_data', 'metrics')
_REQUIRED_KEYS = ('format', 'format_version', 'contents', 'config', 'normalization', 'keypoint_names',
                  'weights_sha256')


#: How a file may store its floating-point weights. float16 halves a file (what a repository or a robot's
#: disk wants for a 28 M-parameter student); the loader widens the weights back to float32, so the only change
#: is a relative rounding of at most 2**-11 per weight.
WEIGHT_DTYPES = {'float32': torch.float32, 'float16': torch.float16}


class ModelFileError(ValueError):
    """A model file that cannot be used: unreadable, corrupt, or made for another architecture."""


def default_keypoint_names(num_keypoints: int) -> list[str]:
    return [f'kp{i}' for i in range(num_keypoints)]


def save_model(
    path: str | os.PathLike,
    model: KeyGrid,
    *,
    keypoint_names: list[str] | None = None,
    training_data: Any = None,
    metrics: Any = None,
    encoder_only: bool = False,
    weights_dtype: str = 'float32',
) -> Path:
    """Write ``model`` to ``path`` (.safetensors); ``encoder_only`` keeps just what inference needs;
    ``weights_dtype`` one of :data:`WEIGHT_DTYPES`."""
    config = model.config
    names = list(keypoint_names) if keypoint_names is not None else default_keypoint_names(config.num_keypoints)
    if len(names) != config.num_keypoints:
        raise ValueError(f'{len(names)} keypoint names for {config.num_keypoints} keypoints')
    state = model.state_dict()
    if encoder_only:
        state = {k: v for k, v in state.items() if k.startswith('encoder.')}
        config = config.replace(use_decoder=False)
    tensors = stored_weights(state, weights_dtype)
    metadata = {
        'format': FORMAT,
        'format_version': str(FORMAT_VERSION),
        'contents': 'encoder' if not config.use_decoder else 'full',
        'config': json.dumps(config.to_dict()),
        'num_keypoints': str(config.num_keypoints),
        'num_points': str(config.num_points),
        'grid_resolution': json.dumps(list(config.grid_resolution)),
        'sigma2': repr(config.sigma2),
        'normalization': NORMALIZATION,
        'keypoint_names': json.dumps(names),
        'training_data': json.dumps(training_data),
        'metrics': json.dumps(metrics),
        'weights_sha256': checksum(tensors),
        'weights_dtype': weights_dtype,
        'torch_version': torch.__version__,
    }
    return write_model_file(path, tensors, metadata)


def stored_weights(state: dict[str, torch.Tensor], weights_dtype: str = 'float32') -> dict[str, torch.Tensor]:
    """A state dict as a file stores it: on the CPU, contiguous, float32 tensors in ``weights_dtype``."""
    if weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f'weights_dtype must be one of {sorted(WEIGHT_DTYPES)}, got {weights_dtype!r}')
    dtype = WEIGHT_DTYPES[weights_dtype]
    return {name: (t.detach().to('cpu', dtype) if t.dtype == torch.float32 else t.detach().to('cpu')).contiguous()
            for name, t in state.items()}


def widen_weights(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights stored in float16 back to the float32 the network holds (other tensors unchanged)."""
    return {name: t.to(expected[name].dtype)
            if t.dtype == torch.float16 and name in expected and expected[name].dtype == torch.float32 else t
            for name, t in tensors.items()}


def write_model_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a safetensors model file atomically (:func:`~keygrid_ros.fileio.atomic_write`): never half a file
    under the real name, and the permissions any file the user writes gets."""
    path = Path(path)
    atomic_write(path, lambda fh: fh.write(save(tensors, metadata=metadata)))
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The file's metadata after checking the format (not the weights).

    JSON fields come back decoded (``keypoint_names`` a list, ``grid_resolution`` a list, ``training_data``
    and ``metrics`` as written), ``config`` as a :class:`KeyGridConfig`, ``format_version`` an int; the rest
    are the stored strings (``num_keypoints``, ``sigma2``, ...).
    """
    path = Path(path)
    raw, _ = read_safetensors(path, load_tensors=False)
    return _decode_metadata(path, raw)


def load_model(
    path: str | os.PathLike,
    config: KeyGridConfig | None = None,
    *,
    encoder_only: bool = False,
    device: str | torch.device = 'cpu',
) -> tuple[KeyGrid, dict[str, Any]]:
    """Load a model (in eval mode) and its decoded metadata.

    ``config`` is the architecture the caller expects: the file must agree on every field in
    :data:`ARCHITECTURE_FIELDS` (the sampling, inference and training fields are taken from ``config``).
    Without it the file's own config is used. ``encoder_only`` builds a model without the decoder (what
    inference needs), from either kind of file.
    """
    path = Path(path)
    raw, tensors = read_safetensors(path, load_tensors=True)
    metadata = _decode_metadata(path, raw)
    stored = metadata['config']
    if config is None:
        config = stored
    else:
        _check_architecture(path, stored, config)
    if encoder_only:
        config = config.replace(use_decoder=False)
    elif config.use_decoder and not stored.use_decoder:
        raise ModelFileError(f'{path}: holds only the encoder; load it with encoder_only=True '
                             'or train a full model to fine-tune the decoder')
    if checksum(tensors) != metadata['weights_sha256']:
        raise ModelFileError(f'{path}: the weights do not match their checksum (the file is corrupt)')

    model = KeyGrid(config)
    expected = model.state_dict()
    if not config.use_decoder:
        tensors = {k: v for k, v in tensors.items() if k.startswith('encoder.')}
    tensors = widen_weights(tensors, expected)
    problems = compare_tensors(tensors, expected)
    if problems:
        raise ModelFileError(f'{path}: the weights do not fit the architecture in its metadata: ' + '; '.join(problems))
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), metadata


def read_safetensors(path: Path, load_tensors: bool) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Header metadata and (optionally) the tensors of a model file, any read failure a ModelFileError."""
    if not path.is_file():
        raise ModelFileError(f'{path}: no such model file')
    try:
        with safe_open(str(path), framework='pt', device='cpu') as f:
            raw = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()} if load_tensors else {}
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise ModelFileError(f'{path}: not a readable safetensors model file (truncated or corrupt?): {exc}') from exc
    return raw, tensors


def decode_header(path: Path, raw: dict[str, str], *, file_format: str, format_version: int, what: str,
                  required: tuple[str, ...], json_keys: tuple[str, ...], config_from_dict: Any,
                  hint: str = '') -> dict[str, Any]:
    """The checks every model format shares: format name, required keys, version, JSON fields, config.

    Returns the metadata with JSON fields decoded, ``config`` built by ``config_from_dict`` and
    ``format_version`` an int; ``what`` names the format in errors ("a Key-Grid model file").
    """
    if raw.get('format') != file_format:
        raise ModelFileError(f'{path}: not {what} (format {raw.get("format")!r}, expected {file_format!r}){hint}')
    missing = [key for key in required if key not in raw]
    if missing:
        raise ModelFileError(f'{path}: metadata lacks {", ".join(missing)}')
    try:
        version = int(raw['format_version'])
    except ValueError as exc:
        raise ModelFileError(f'{path}: bad format_version {raw["format_version"]!r}') from exc
    if version > format_version:
        raise ModelFileError(f'{path}: format version {version} is newer than this package reads ({format_version})')
    metadata: dict[str, Any] = dict(raw)
    try:
        for key in json_keys:
            if key in raw:
                metadata[key] = json.loads(raw[key])
        metadata['config'] = config_from_dict(metadata['config'])
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f'{path}: unreadable metadata: {exc}') from exc
    metadata['format_version'] = version
    return metadata


def _decode_metadata(path: Path, raw: dict[str, str]) -> dict[str, Any]:
    metadata = decode_header(path, raw, file_format=FORMAT, format_version=FORMAT_VERSION, what='a Key-Grid model file',
                             required=_REQUIRED_KEYS, json_keys=_JSON_KEYS, config_from_dict=KeyGridConfig.from_dict)
    config: KeyGridConfig = metadata['config']
    if metadata['normalization'] != NORMALIZATION:
        raise ModelFileError(f'{path}: inputs normalised with {metadata["normalization"]!r}; '
                             f'this package only provides {NORMALIZATION!r}')
    if len(metadata['keypoint_names']) != config.num_keypoints:
        raise ModelFileError(f'{path}: {len(metadata["keypoint_names"])} keypoint names for '
                             f'{config.num_keypoints} keypoints')
    return metadata


def _check_architecture(path: Path, stored: KeyGridConfig, requested: KeyGridConfig) -> None:
    differences = [
        f'{name}: file has {getattr(stored, name)!r}, requested {getattr(requested, name)!r}'
        for name in ARCHITECTURE_FIELDS
        if getattr(stored, name) != getattr(requested, name)
    ]
    if differences:
        raise ModelFileError(f'{path}: the model file does not match the requested architecture: '
                             + '; '.join(differences))


def compare_tensors(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    def names(items: list[str]) -> str:
        return ', '.join(items[:5]) + (', ...' if len(items) > 5 else '')

    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f'missing {len(missing)} tensors ({names(missing)})')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected tensors ({names(unexpected)})')
    for name in sorted(set(found) & set(expected)):
        if found[name].shape != expected[name].shape or found[name].dtype != expected[name].dtype:
            problems.append(f'{name} is {found[name].dtype} {tuple(found[name].shape)}, '
                            f'expected {expected[name].dtype} {tuple(expected[name].shape)}')
    return problems


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to('cpu').contiguous()
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
