"""What the node runs: a model file in, keypoints out (encoder only, under ``inference_mode``).

::

    model = KeypointModel.load('models/shirt.safetensors', device='auto')
    pred = model.predict(points_norm)          # (N, 3) or (B, N, 3), normalised, FPS-ordered by default
    pred.keypoints                             # (B, K, 3) normalised units
    pred.weights                               # (B, K, N) per-point weights (one-hot rows in hard mode)
    pred.strengths                             # (B, K(K-1)/2) segment strengths, pairs in model.segment_pairs
    model.keypoint_names, model.metadata

The outputs are numpy arrays for numpy input and tensors (on the model's device) for tensor input.
Denormalise with :class:`keygrid_ros.normalize.Normalization` (``invert``).

Also the deployment export: :func:`export_detector` gives a ``torch.export`` program of the encoder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ..normalize import fit_batch
from ..params import CANONICALIZATIONS
from . import canonical
from .config import KeyGridConfig
from .encoder import KeypointEncoder
from .io import load_model

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = 'auto') -> torch.device:
    """``'auto'`` -> cuda when available, else cpu (with a warning: the node is meant to have a GPU)."""
    if str(device) == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        log.warning('no CUDA device: running the keypoint model on the CPU')
        return torch.device('cpu')
    return torch.device(device)


class KeypointDetector(nn.Module):
    """The encoder as a plain tensor function, for inference and export: points (B, N, 3) ->
    ``(keypoints (B, K, 3), weights (B, K, N), strengths (B, K(K-1)/2))``."""

    def __init__(self, encoder: KeypointEncoder, hard: bool):
        super().__init__()
        self.encoder = encoder
        self.hard = bool(hard)

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.encoder(points, hard=self.hard)
        return out.keypoints, out.weights, out.strengths


class Prediction(NamedTuple):
    keypoints: Any  # (B, K, 3) normalised units
    weights: Any  # (B, K, N)
    strengths: Any  # (B, K(K-1)/2)


class LoadedModel:
    """What every loaded keypoint model offers besides ``predict``: subclasses set ``detector`` (with a ``hard``
    flag), ``metadata`` (the file's) and define ``config`` (with ``num_keypoints``)."""

    detector: Any
    metadata: dict[str, Any]
    config: Any

    @property
    def hard(self) -> bool:
        return self.detector.hard

    @property
    def num_keypoints(self) -> int:
        return self.config.num_keypoints

    @property
    def keypoint_names(self) -> list[str]:
        return list(self.metadata['keypoint_names'])

    @property
    def segment_pairs(self) -> np.ndarray:
        """``(K(K-1)/2, 2)`` keypoint index pairs, in the order of ``strengths``."""
        K = self.num_keypoints
        return torch.triu_indices(K, K, offset=1).t().numpy()


class KeypointModel(LoadedModel):
    """A loaded Key-Grid encoder with its metadata; see the module docstring."""

    def __init__(self, detector: KeypointDetector, metadata: dict[str, Any], device: torch.device,
                 compile: bool = False, canonicalize: str = 'none'):
        if canonicalize not in CANONICALIZATIONS:
            raise ValueError(f'canonicalize must be one of {list(CANONICALIZATIONS)}, got {canonicalize!r}')
        self.detector = detector.to(device).eval()
        self.metadata = metadata
        self.device = device
        self.canonicalize = canonicalize
        self._run = torch.compile(self.detector, dynamic=False) if compile else self.detector

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = 'auto',
        *,
        hard: bool | None = None,
        fps_prefix: bool | None = None,
        compile: bool = False,
        fold_batchnorm: bool = True,
        canonicalize: str = 'none',
    ) -> KeypointModel:
        """Load a model file for inference.

        ``hard``: snap keypoints to input points (default: the file's ``hard_keypoints``, True as released).
        ``fps_prefix``: inputs arrive in farthest-point order (default: the file's setting, True); pass False
        to let the model order unordered clouds itself (slower). ``compile``: ``torch.compile`` the encoder
        (faster per call after a compile of tens of seconds on the first call; see :meth:`warmup`).
        ``fold_batchnorm``: fold the BatchNorms into the layers before them (same outputs to ~1e-7, faster).
        ``canonicalize``: 'up' turns every cloud so that the up its own shape shows is +z before the model, and
        the keypoints back after; 'frame' turns it into its principal axes (yaw fixed too); 'none' (default)
        leaves it (:mod:`keygrid_ros.model.canonical`). For clouds in a frame whose z is not up.
        """
        device = resolve_device(device)
        model, metadata = load_model(Path(path), encoder_only=True, device='cpu')
        config: KeyGridConfig = model.config
        if fps_prefix is not None and fps_prefix != config.fps_prefix:
            model.encoder.config = config = config.replace(fps_prefix=fps_prefix)
        hard = config.hard_keypoints if hard is None else hard
        if fold_batchnorm:
            model.encoder.fold_batchnorms_()
        return cls(KeypointDetector(model.encoder, hard), metadata, device, compile=compile,
                   canonicalize=canonicalize)

    @property
    def config(self) -> KeyGridConfig:
        return self.detector.encoder.config

    def predict(self, points: np.ndarray | torch.Tensor) -> Prediction:
        """Normalised points (N, 3) or (B, N, 3) -> :class:`Prediction` with a batch axis."""
        as_numpy = not isinstance(points, torch.Tensor)
        x = torch.as_tensor(np.asarray(points) if as_numpy else points)
        if x.ndim == 2:
            x = x.unsqueeze(0)
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f'expected points (N, 3) or (B, N, 3), got shape {tuple(x.shape)}')
        if x.shape[1] == 0:
            raise ValueError('cannot detect keypoints on an empty cloud')
        x = x.to(device=self.device, dtype=torch.float32)
        with torch.inference_mode():
            if self.canonicalize != 'none':
                keypoints, weights, strengths = self._run_canonical(x)
            else:
                keypoints, weights, strengths = self._run(x)
        if as_numpy:
            return Prediction(keypoints.cpu().numpy(), weights.cpu().numpy(), strengths.cpu().numpy())
        return Prediction(keypoints, weights, strengths)

    def _run_canonical(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model on ``x`` (B, N, 3) turned into its canonical pose and re-normalised; keypoints back in
        ``x``'s coordinates. The per-point weights need no change: the points keep their order.
        """
        turned, rotation, centre = canonical.canonicalize(x, self.canonicalize)
        offset, scale = fit_batch(turned)  # Key-Grid's scalar min-max normalisation, refitted to the turned cloud
        keypoints, weights, strengths = self._run((turned - offset) * scale - 1.0)
        keypoints = ((keypoints + 1.0) / scale + offset) @ rotation + centre
        return keypoints, weights, strengths

    def warmup(self, batch: int = 1, num_points: int | None = None) -> None:
        """Run once on a dummy cloud (compiles the encoder when ``compile=True``)."""
        n = num_points or self.config.num_points
        generator = torch.Generator().manual_seed(0)
        self.predict(torch.rand(batch, n, 3, generator=generator) * 2 - 1)


def export_detector(encoder: KeypointEncoder, example: torch.Tensor, hard: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` the encoder for deployment (e.g. AOTInductor), for the shape of ``example`` (B, N, 3).

    Shapes are static (the node runs one cloud of N points at a time; large batches take a per-cloud path
    inside). The exported graph takes inputs in farthest-point order (``fps_prefix``): the in-model FPS loop
    is not exportable. Save it with ``torch.export.save``. This package never loads such files (that would
    unpickle): its own model format is safetensors (:mod:`keygrid_ros.model.io`).
    """
    if not encoder.config.fps_prefix:
        raise ValueError('export needs fps_prefix=True: order the input by FPS before the exported graph')
    detector = KeypointDetector(encoder, hard).eval()
    with torch.no_grad():
        return torch.export.export(detector, (example,))
