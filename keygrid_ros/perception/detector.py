"""The detector: one cloud (points + transform) in, garment keypoints in the target frame out.

    detector = Detector(model, PreprocessConfig.from_params(values), device='cpu', keypoint_mode='snapped')
    detection = detector(points, transform)        # points (N, 3) or (H, W, 3) sensor frame, NaN allowed
    if detection.ok: detection.keypoints            # (K, 3) target frame, metres

Stages: preprocess (``Preprocessor``: crop, table, cluster, FPS, normalise) -> model (anything with the
:class:`KeypointModel` surface; :func:`load_model` adapts the model package's inference wrapper) ->
postprocess (optional tracking from frame to frame, keypoint mode, denormalise, confidence from the weight
distribution, optional smoothing, garment pose). Failures are not exceptions: :attr:`Detection.reason` says
why, so the node keeps going and can tell the user. No ROS types here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
from pathlib import Path
import time
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from keygrid_ros.blas import single_threaded_blas
from keygrid_ros.params import KEYPOINT_MODES
from keygrid_ros.perception.plane import Plane
from keygrid_ros.perception.postprocess import KeypointSmoother, garment_pose, keypoint_confidence
from keygrid_ros.perception.preprocess import PreprocessConfig, Preprocessor
from keygrid_ros.perception.tracking import KeypointTracker, TrackerConfig

LOG = logging.getLogger(__name__)

#: Model types the node accepts (``model_type`` parameter); both go through the same KeypointModel surface.
MODEL_TYPES = ('keygrid', 'useek')


class ModelLoadError(RuntimeError):
    """The model file is missing, unreadable, or not a model of the requested type (message names the path)."""


@runtime_checkable
class KeypointModel(Protocol):
    """What the detector needs from a model (duck-typed; the inference wrapper provides it).

    ``predict(points)``: ``points`` (N, 3) float32 in Key-Grid's normalised cube, FPS-ordered, returns
    ``(keypoints (K, 3), weights (K, N), strengths (K(K-1)/2,))`` as numpy; ``weights`` rows sum to 1 and
    should be the *soft* distribution (the detector snaps to points itself and derives confidence from it);
    ``strengths`` follow ``torch.triu_indices(K, K, 1)`` pair order. Optional attributes read with getattr:
    ``keypoint_names`` (K strings), ``reference_keypoints`` ((K, 3) canonical layout for the garment pose).
    """

    def predict(self, points: np.ndarray) -> Any: ...


@dataclass
class Detection:
    """Everything one frame produced; arrays are None when ``reason`` says why the frame gave nothing.

    ``keypoints`` (K, 3) float64, target frame, index = keypoint id; ``confidence`` (K,) in [0, 1];
    ``strengths`` (S,) segment strengths for ``pairs`` (S, 2); ``position`` (3,) and ``orientation``
    (x, y, z, w) the garment pose (``pose_method`` 'kabsch' or 'principal_axes'); ``points`` (N, 3) the model
    input in the target frame; ``ms`` per stage (preprocess stages, 'model', 'postprocess', 'total');
    ``stage_points`` points kept per preprocess stage.
    """

    reason: str | None
    names: tuple[str, ...]
    keypoints: np.ndarray | None = None
    confidence: np.ndarray | None = None
    strengths: np.ndarray | None = None
    pairs: np.ndarray | None = None
    position: np.ndarray | None = None
    orientation: np.ndarray | None = None
    pose_method: str = ''
    points: np.ndarray | None = None
    plane: Plane | None = None
    ms: dict[str, float] = field(default_factory=dict)
    stage_points: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.reason is None


def resolve_device(requested: str) -> tuple[str, str | None]:
    """``'auto'`` -> ``'cuda'`` when torch sees a GPU, else ``'cpu'``; returns (device, warning or None).

    An explicit device is checked so that a typo or a missing GPU fails at start-up, not at the first frame.
    """
    if requested in ('', 'auto'):
        if torch.cuda.is_available():
            return 'cuda', None
        return 'cpu', 'device auto: no GPU visible to torch, running on the CPU (slower)'
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f'device {requested!r} is not a torch device: {exc}') from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {requested!r} requested but torch sees no GPU (torch {torch.__version__}); '
                         "use device:=auto or device:=cpu")
    return str(device), None


def segment_pairs(num_keypoints: int) -> np.ndarray:
    """(K(K-1)/2, 2) keypoint index pairs in the order of the model's segment strengths."""
    return torch.triu_indices(num_keypoints, num_keypoints, 1).T.numpy().astype(np.int64)


def default_names(num_keypoints: int) -> tuple[str, ...]:
    """``kp_0 .. kp_{K-1}``: Key-Grid keypoints are unsupervised, so a model without names gets indices."""
    return tuple(f'kp_{i}' for i in range(num_keypoints))


class _SingleCloudModel:
    """Adapts the model package's ``KeypointModel`` (batched ``Prediction``) to the one-cloud surface above."""

    def __init__(self, model: Any):
        self.model = model
        self.keypoint_names = tuple(model.keypoint_names)
        metadata = getattr(model, 'metadata', {}) or {}
        reference = metadata.get('reference_keypoints')
        self.reference_keypoints = None if reference is None else np.asarray(reference, np.float64)
        self.num_points = int(getattr(model.config, 'num_points', 0))

    def predict(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        prediction = self.model.predict(np.ascontiguousarray(points, dtype=np.float32))
        return prediction.keypoints[0], prediction.weights[0], prediction.strengths[0]


def load_model(path: str | Path, model_type: str = 'keygrid', device: str = 'cpu',
               compile: bool = False, canonicalize: str = 'none') -> KeypointModel:
    """Load a safetensors model file for inference; raises :class:`ModelLoadError` naming the path.

    Goes through the model package's inference wrapper, asking for *soft* weights: the detector snaps
    keypoints to points itself (``keypoint_mode``) and needs the weight distribution for the confidence.
    ``compile`` asks for a ``torch.compile``d Key-Grid encoder (compiled on the first call). ``canonicalize``
    (one of ``params.CANONICALIZATIONS``) turns each cloud into its own canonical pose first (Key-Grid only;
    the student is invariant and ignores it). Never unpickles anything.
    """
    path = Path(path)
    if model_type not in MODEL_TYPES:
        raise ModelLoadError(f'model_type {model_type!r} is not one of {list(MODEL_TYPES)}')
    if not path.is_file():
        raise ModelLoadError(f'model file not found: {path}')
    from keygrid_ros.model.student import load_keypoint_model  # Key-Grid or USEEK student, by the file's format

    try:
        extra = {'compile': compile, 'canonicalize': canonicalize} if model_type == 'keygrid' else {}
        return _SingleCloudModel(load_keypoint_model(path, device, model_type=model_type, hard=False, **extra))
    except Exception as exc:  # corrupt header, checksum, wrong shapes, bad JSON: one clear message
        raise ModelLoadError(f'cannot load model {path}: {type(exc).__name__}: {exc}') from exc


class Detector:
    """Callable: ``detection = Detector(model, config)(points, transform)``.

    Holds the per-stream state (the keypoint tracker and smoother); :meth:`reset` forgets it. ``configure``
    swaps the preprocessing configuration (live parameter changes) between frames. With ``tracking`` set,
    the model's keypoints start the tracks and later frames carry them (:mod:`keygrid_ros.perception.tracking`);
    the keypoint mode then applies to the tracked keypoints (``snapped`` and ``hard``: the nearest input point).
    """

    def __init__(self, model: KeypointModel, config: PreprocessConfig | None = None, device: str = 'cpu',
                 keypoint_mode: str = 'snapped', smoothing: float = 0.0, tracking: TrackerConfig | None = None):
        if keypoint_mode not in KEYPOINT_MODES:
            raise ValueError(f'keypoint_mode {keypoint_mode!r} is not one of {list(KEYPOINT_MODES)}')
        self.model = model
        self.device = device
        self.keypoint_mode = keypoint_mode
        self.preprocess = Preprocessor(config or PreprocessConfig(), device=device)
        self.smoother = KeypointSmoother(smoothing)
        self.tracker = KeypointTracker(tracking) if tracking is not None else None
        self._previous_garment: np.ndarray | None = None  # (G, 3) the last frame's garment points, target frame
        names = getattr(model, 'keypoint_names', None)
        self._names: tuple[str, ...] | None = tuple(names) if names else None
        reference = getattr(model, 'reference_keypoints', None)
        self._reference = None if reference is None else np.asarray(reference, np.float64)

    def configure(self, config: PreprocessConfig | None = None, smoothing: float | None = None,
                  tracking: TrackerConfig | None | bool = True) -> None:
        """Apply new settings; the next frame uses them (the caller serialises this with frames).
        ``tracking``: new tracker settings, None to stop tracking, True (default) to leave it as it is."""
        if config is not None and config != self.preprocess.config:
            self.preprocess = Preprocessor(config, device=self.device)
        if smoothing is not None and smoothing != self.smoother.alpha:
            self.smoother = KeypointSmoother(smoothing)
        if tracking is not True and tracking != (self.tracker.config if self.tracker else None):
            self.tracker = KeypointTracker(tracking) if tracking is not None else None

    def reset(self) -> None:
        """Forget the stream: the next frame starts new tracks and new smoothing."""
        self.smoother.reset()
        self._previous_garment = None
        if self.tracker is not None:
            self.tracker.reset()

    def warmup(self, repeats: int = 2) -> float:
        """Run the model on a random normalised cloud of ``num_points`` (first calls allocate and pick kernels,
        seconds on a CPU); returns the last call's ms. A model that cannot run at all fails here, at start-up."""
        points = np.random.default_rng(0).uniform(-1, 1, (self.preprocess.config.num_points, 3)).astype(np.float32)
        elapsed = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            self.model.predict(points)
            elapsed = (time.perf_counter() - start) * 1e3
        return elapsed

    @property
    def names(self) -> tuple[str, ...]:
        return self._names or ()

    @single_threaded_blas  # its numpy/scipy work is on small matrices (keygrid_ros/blas.py)
    def __call__(self, points: np.ndarray, transform: np.ndarray | None = None,
                 robot: np.ndarray | None = None) -> Detection:
        """Detect keypoints in ``points`` ((N, 3) or (H, W, 3), NaN = no return) mapped by ``transform``
        ((4, 4) target <- sensor, or None when already in the target frame); ``robot`` (M, 3) are robot frame
        origins in the target frame whose surroundings are cut first (the node's self-filter), or None."""
        start = time.perf_counter()
        # The last frame's garment lets the front end keep pieces of it one camera now sees apart.
        pre = self.preprocess(points, transform, self._previous_garment, robot)
        self._previous_garment = pre.garment
        ms = dict(pre.report.ms)
        if not pre.ok:
            self.reset()  # a new garment must not inherit the old one's keypoints
            ms['total'] = (time.perf_counter() - start) * 1e3
            return Detection(reason=pre.report.reason, names=self.names, plane=pre.plane, ms=ms,
                             stage_points=dict(pre.report.points))

        t0 = time.perf_counter()
        try:
            keypoints_n, weights, strengths = (np.asarray(a) for a in self.model.predict(pre.model_input)[:3])
        except Exception as exc:  # a model failure is a frame failure, not a dead node
            LOG.debug('model failed', exc_info=True)
            self.reset()
            ms['model'] = (time.perf_counter() - t0) * 1e3
            return Detection(reason=f'model failed: {type(exc).__name__}: {exc}', names=self.names,
                             plane=pre.plane, ms=ms, stage_points=dict(pre.report.points))
        t1 = time.perf_counter()
        ms['model'] = (t1 - t0) * 1e3

        k = keypoints_n.shape[0]
        if self._names is None or len(self._names) != k:
            self._names = default_names(k)
        if self.keypoint_mode == 'hard':
            # The released test-time mode: each keypoint is the input point of largest weight.
            keypoints = pre.points[np.argmax(weights, axis=1)].astype(np.float64)
        else:
            keypoints = pre.normalization.invert(keypoints_n.astype(np.float64))
        if self.tracker is not None:  # the detections start (and may steer) tracks of the keypoints' cloth
            # The camera sits at the sensor frame's origin (as table removal assumes when there is no transform).
            viewpoint = np.zeros(3) if transform is None else np.asarray(transform, np.float64)[:3, 3]
            keypoints = self.tracker(pre.points, keypoints, viewpoint)
        if self.keypoint_mode == 'snapped' or (self.keypoint_mode == 'hard' and self.tracker is not None):
            # the input point nearest to the weighted mean (or to the tracked keypoint)
            nearest = ((keypoints[:, None, :] - pre.points[None, :, :]) ** 2).sum(-1).argmin(1)  # (K,)
            keypoints = pre.points[nearest].astype(np.float64)
        keypoints = self.smoother(keypoints)
        confidence = keypoint_confidence(weights)
        up = None
        if pre.plane is not None:
            up = pre.plane.normal.detach().cpu().numpy().astype(np.float64)  # towards the sensor = away from table
        reference = self._reference if self._reference is not None and self._reference.shape == keypoints.shape \
            else None
        position, orientation, method = garment_pose(pre.points.astype(np.float64), keypoints, reference, up)
        ms['postprocess'] = (time.perf_counter() - t1) * 1e3
        ms['total'] = (time.perf_counter() - start) * 1e3
        return Detection(
            reason=None, names=self.names, keypoints=keypoints, confidence=confidence,
            strengths=np.asarray(strengths, np.float64).reshape(-1), pairs=segment_pairs(k),
            position=position, orientation=orientation, pose_method=method, points=pre.points,
            plane=pre.plane, ms=ms, stage_points=dict(pre.report.points))
