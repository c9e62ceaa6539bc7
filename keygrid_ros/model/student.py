"""The USEEK student at inference: model files and the wrapper the node's Detector uses (``model_type: useek``).

::

    model = StudentModel.load('models/shirt_useek.safetensors', device='auto')
    pred = model.predict(points)      # (N, 3) or (B, N, 3), any frame and pose (Key-Grid-normalised in the node)
    pred.keypoints                    # (B, K, 3) in the input's own coordinates: softmax-weighted means of points
    pred.weights                      # (B, K, N) softmax of the logits over the points (one-hot when hard)
    pred.strengths                    # (B, K(K-1)/2) the teacher's mean segment strengths (a student has no
                                      # skeleton head; constant per model, pairs in torch.triu_indices(K, K, 1))

The same surface as :class:`keygrid_ros.model.inference.KeypointModel` (``predict``, ``config.num_points``,
``keypoint_names``, ``metadata``, ``num_keypoints``, ``segment_pairs``, ``warmup``), so code written for Key-Grid
takes a student unchanged; :func:`load_keypoint_model` picks the right one from the file itself.

Inside, the input is centred on its centroid and divided by its largest radius (USEEK's normalisation), so the
logits are SE(3)-invariant and the keypoints SE(3)-equivariant, whatever normalisation came before.

Model file: safetensors, nothing unpickled, metadata (strings; JSON where noted):

=================  ===========================================================================
format             ``keygrid_ros.useek`` (the Key-Grid loader refuses it by name, and vice versa)
format_version     ``1``
model_type         ``useek``
role               ``student``
config             JSON of :class:`~keygrid_ros.model.sprin.SPRINConfig`
num_keypoints      K
num_points         N the student was trained on
normalization      ``centroid_max_radius`` (applied inside; callers may pass any similarity transform of it)
keypoint_names     JSON list of K names (the teacher's)
teacher            JSON: the teacher's file name, path, format, weights checksum, config, keypoint names
segment_strengths  JSON list of K(K-1)/2: the teacher's mean segment strengths over the distillation data
training_data      JSON (free-form)
metrics            JSON (free-form)
weights_sha256     checksum of every tensor (name, dtype, shape, bytes)
weights_dtype      ``float32`` or ``float16`` (widened to float32 on loading); optional, float32 when absent
softmax_temperature  JSON number > 0: the keypoints' softmax temperature (``keygrid export-model
                   --softmax-temperature``); optional, 1 (USEEK's weight mode) when absent
torch_version      the torch that wrote the file
=================  ===========================================================================
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .inference import LoadedModel, Prediction, resolve_device
from .io import (
    ModelFileError,
    checksum,
    compare_tensors,
    decode_header,
    default_keypoint_names,
    read_safetensors,
    stored_weights,
    widen_weights,
    write_model_file,
)
from .sprin import ARCHITECTURE_FIELDS, SPRINConfig, SPRINSeg, keypoints_from_logits, normalize_input

FORMAT = 'keygrid_ros.useek'
FORMAT_VERSION = 1
MODEL_TYPE = 'useek'
NORMALIZATION = 'centroid_max_radius'
_JSON_KEYS = ('config', 'keypoint_names', 'teacher', 'segment_strengths', 'training_data', 'metrics',
              'softmax_temperature')
_REQUIRED_KEYS = ('format', 'format_version', 'model_type', 'role', 'config', 'keypoint_names', 'teacher',
                  'weights_sha256')


class StudentNet(torch.nn.Module):
    """Points (B, N, 3) in any pose -> ``(keypoints (B, K, 3), weights (B, K, N), logits (B, N, K))``.

    Normalises internally (:func:`~keygrid_ros.model.sprin.normalize_input`); keypoints are in the input's
    coordinates. ``hard`` snaps each keypoint to its point of largest logit.
    """

    def __init__(self, net: SPRINSeg, hard: bool = False, temperature: float = 1.0):
        super().__init__()
        self.net = net
        self.hard = bool(hard)
        self.temperature = float(temperature)

    def forward(self, points: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        normalised, _, _ = normalize_input(points)
        logits = self.net(normalised, generator=generator)
        keypoints, weights = keypoints_from_logits(points, logits, hard=self.hard, temperature=self.temperature)
        return keypoints, weights, logits


# ----------------------------------------------------------------------------------------------------------
# files


def save_student(
    path: str | os.PathLike,
    net: SPRINSeg,
    *,
    teacher: dict[str, Any],
    keypoint_names: list[str] | None = None,
    segment_strengths: list[float] | None = None,
    training_data: Any = None,
    metrics: Any = None,
    weights_dtype: str = 'float32',
) -> Path:
    """Write the student ``net`` to ``path`` (.safetensors), atomically; ``teacher`` describes its teacher;
    ``weights_dtype``: ``float32`` or ``float16`` (half the size, see :data:`~keygrid_ros.model.io.WEIGHT_DTYPES`)."""
    config = net.config
    K = config.num_keypoints
    names = list(keypoint_names) if keypoint_names is not None else default_keypoint_names(K)
    if len(names) != K:
        raise ValueError(f'{len(names)} keypoint names for {K} keypoints')
    if segment_strengths is not None and len(segment_strengths) != K * (K - 1) // 2:
        raise ValueError(f'{len(segment_strengths)} segment strengths for {K} keypoints')
    tensors = stored_weights(net.state_dict(), weights_dtype)
    metadata = {
        'format': FORMAT,
        'format_version': str(FORMAT_VERSION),
        'model_type': MODEL_TYPE,
        'role': 'student',
        'config': json.dumps(config.to_dict()),
        'num_keypoints': str(K),
        'num_points': str(config.num_points),
        'normalization': NORMALIZATION,
        'keypoint_names': json.dumps(names),
        'teacher': json.dumps(teacher),
        'segment_strengths': json.dumps(None if segment_strengths is None else [float(s) for s in segment_strengths]),
        'training_data': json.dumps(training_data),
        'metrics': json.dumps(metrics),
        'weights_sha256': checksum(tensors),
        'weights_dtype': weights_dtype,
        'torch_version': torch.__version__,
    }
    return write_model_file(path, tensors, metadata)


def file_format(path: str | os.PathLike) -> str | None:
    """The ``format`` field of a model file's metadata (None when absent); ModelFileError when unreadable."""
    raw, _ = read_safetensors(Path(path), load_tensors=False)
    return raw.get('format')


def read_student_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """A student file's metadata, JSON decoded, ``config`` as :class:`SPRINConfig` (weights not read)."""
    path = Path(path)
    raw, _ = read_safetensors(path, load_tensors=False)
    return _decode(path, raw)


def load_student(path: str | os.PathLike, config: SPRINConfig | None = None, device: str | torch.device = 'cpu'
                 ) -> tuple[SPRINSeg, dict[str, Any]]:
    """The student network (eval mode) and its metadata. ``config``: the architecture the caller expects
    (must agree with the file on :data:`~keygrid_ros.model.sprin.ARCHITECTURE_FIELDS`; its sampling settings
    are used)."""
    path = Path(path)
    raw, tensors = read_safetensors(path, load_tensors=True)
    metadata = _decode(path, raw)
    stored: SPRINConfig = metadata['config']
    if config is not None:
        differences = [f'{name}: file has {getattr(stored, name)!r}, requested {getattr(config, name)!r}'
                       for name in ARCHITECTURE_FIELDS if getattr(stored, name) != getattr(config, name)]
        if differences:
            raise ModelFileError(f'{path}: the student file does not match the requested architecture: '
                                 + '; '.join(differences))
    else:
        config = stored
    if checksum(tensors) != metadata['weights_sha256']:
        raise ModelFileError(f'{path}: the weights do not match their checksum (the file is corrupt)')
    net = SPRINSeg(config)
    expected = net.state_dict()
    tensors = widen_weights(tensors, expected)
    problems = compare_tensors(tensors, expected)
    if problems:
        raise ModelFileError(f'{path}: the weights do not fit the architecture in its metadata: ' + '; '.join(problems))
    net.load_state_dict(tensors, strict=True)
    return net.to(device).eval(), metadata


def valid_temperature(value: Any) -> bool:
    """Whether ``value`` can be a file's ``softmax_temperature``: a finite number > 0 (not a bool)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value > 0)


def _decode(path: Path, raw: dict[str, str]) -> dict[str, Any]:
    metadata = decode_header(path, raw, file_format=FORMAT, format_version=FORMAT_VERSION,
                             what='a USEEK student model file', required=_REQUIRED_KEYS, json_keys=_JSON_KEYS,
                             config_from_dict=SPRINConfig.from_dict,
                             hint='; a Key-Grid model is loaded with model_type keygrid')
    temperature = metadata.get('softmax_temperature')
    if temperature is not None and not valid_temperature(temperature):
        raise ModelFileError(f'{path}: softmax_temperature must be a positive number, got {temperature!r}')
    K = metadata['config'].num_keypoints
    if len(metadata['keypoint_names']) != K:
        raise ModelFileError(f'{path}: {len(metadata["keypoint_names"])} keypoint names for {K} keypoints')
    return metadata


# ----------------------------------------------------------------------------------------------------------
# the inference wrapper

class StudentModel(LoadedModel):
    """A loaded student with its metadata; the :class:`~keygrid_ros.model.inference.KeypointModel` surface."""

    model_type = MODEL_TYPE

    def __init__(self, net: SPRINSeg, metadata: dict[str, Any], device: torch.device, hard: bool = False,
                 seed: int | None = None):
        temperature = metadata.get('softmax_temperature') or 1.0
        self.detector = StudentNet(net, hard, temperature).to(device).eval()
        self.metadata = metadata
        self.device = device
        # Only used when the config asks for random neighbour subsets at test time (the released behaviour):
        # then every call draws from this generator, so a run is reproducible from ``seed``.
        self.seed = seed
        self._generator = None
        if seed is not None:
            self._generator = torch.Generator(device=device).manual_seed(int(seed))
        K = net.config.num_keypoints
        strengths = metadata.get('segment_strengths')
        self._strengths = torch.tensor(strengths if strengths is not None else [0.0] * (K * (K - 1) // 2),
                                       dtype=torch.float32)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = 'auto', *, hard: bool | None = None,
             seed: int | None = None, **_ignored: Any) -> StudentModel:
        """Load a student file for inference. ``hard``: arg-max keypoints (default False: weighted means, USEEK's
        "weight" mode). ``seed``: seeds test-time random neighbour subsets, when the config asks for them.
        Key-Grid-only options (``fps_prefix``, ``compile``) are accepted and ignored: the student needs no point
        order."""
        device = resolve_device(device)
        net, metadata = load_student(Path(path), device='cpu')
        return cls(net, metadata, device, hard=bool(hard), seed=seed)

    @property
    def config(self) -> SPRINConfig:
        return self.detector.net.config

    @property
    def teacher(self) -> dict[str, Any]:
        return dict(self.metadata['teacher'] or {})

    def predict(self, points: np.ndarray | torch.Tensor) -> Prediction:
        """Points (N, 3) or (B, N, 3) -> :class:`Prediction` with a batch axis (numpy in, numpy out)."""
        as_numpy = not isinstance(points, torch.Tensor)
        x = torch.as_tensor(np.asarray(points) if as_numpy else points)
        if x.ndim == 2:
            x = x.unsqueeze(0)
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f'expected points (N, 3) or (B, N, 3), got shape {tuple(x.shape)}')
        if x.shape[1] <= self.config.fps_points[0]:
            raise ValueError(f'the student needs more than {self.config.fps_points[0]} points, got {x.shape[1]}')
        x = x.to(device=self.device, dtype=torch.float32)
        with torch.inference_mode():
            keypoints, weights, _ = self.detector(x, generator=self._generator)
        strengths = self._strengths.to(self.device).expand(x.shape[0], -1)
        if as_numpy:
            return Prediction(keypoints.cpu().numpy(), weights.cpu().numpy(), strengths.cpu().numpy())
        return Prediction(keypoints, weights, strengths)

    def logits(self, points: torch.Tensor) -> torch.Tensor:
        """Per-point logits (B, N, K) of points (B, N, 3) (no gradient)."""
        with torch.inference_mode():
            return self.detector(points.to(self.device, torch.float32), generator=self._generator)[2]

    def warmup(self, batch: int = 1, num_points: int | None = None) -> None:
        n = num_points or self.config.num_points
        generator = torch.Generator().manual_seed(0)
        self.predict(torch.rand(batch, n, 3, generator=generator) * 2 - 1)


def model_type_of(path: str | os.PathLike) -> str:
    """``'keygrid'`` or ``'useek'``: what a model file holds, from its metadata (ModelFileError otherwise)."""
    from .io import FORMAT as KEYGRID_FORMAT

    found = file_format(path)
    kind = {KEYGRID_FORMAT: 'keygrid', FORMAT: MODEL_TYPE}.get(found)
    if kind is None:
        raise ModelFileError(f'{path}: not a keypoint model file (format {found!r})')
    return kind


def load_keypoint_model(path: str | os.PathLike, device: str | torch.device = 'auto', *,
                        model_type: str | None = None, hard: bool | None = None, **kwargs: Any):
    """Load any keypoint model file for inference: a Key-Grid ``KeypointModel`` or a :class:`StudentModel`,
    chosen by the file's ``format``. ``model_type`` ('keygrid' or 'useek'), when given, must match the file.
    Extra keyword arguments go to the chosen ``load``."""
    kind = model_type_of(path)
    if model_type is not None and model_type != kind:
        raise ModelFileError(f'{path}: is a {kind} model file, but model_type {model_type!r} was requested')
    if kind == MODEL_TYPE:
        return StudentModel.load(path, device, hard=hard, seed=kwargs.pop('seed', None))
    from .inference import KeypointModel

    kwargs.pop('seed', None)
    return KeypointModel.load(path, device, hard=hard, **kwargs)
