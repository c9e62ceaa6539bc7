"""The detector node's logic, written once for every transport (rclpy, DDS-direct, bag).

A transport gives the node three things and takes one:

* ``publish(topic, message)``: a callable; topics are the relative/private names in :data:`OUTPUTS`
  (``keypoints``, ``garment_pose``, ``~/markers``, ``~/cropped_points``, ``/tf``, ``/diagnostics``), messages are
  ``keygrid_ros.messages`` dataclasses the transport converts to its own world;
* ``tf``: anything with ``lookup(target, source, stamp_ns, timeout_s) -> (4, 4)`` raising
  ``TransformUnavailableError`` (``keygrid_ros.ros.tf_buffer.TfBuffer``, or the rclpy adapter's tf2 wrapper);
* ``clock``: ``() -> int`` nanoseconds (wall clock, ROS time, or bag time);
* and it calls ``on_cloud(msg)`` from its receive thread, plus either :meth:`DetectorNode.spin` in a worker
  thread (live transports: keep-latest) or :meth:`DetectorNode.process` per message (bags: deterministic).

Behaviour (README "Node"): keep only the newest cloud (a one-message slot, never a queue); drop clouds older
than ``max_age_s``; look up cloud frame -> ``target_frame`` at the cloud's stamp with a timeout; every failure
(malformed, empty or all-NaN cloud, missing transform, no garment, model error) is logged once per change
(throttled), clears the markers (DELETEALL) and is named in ``/diagnostics``; the node keeps going.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
import logging
import os
from pathlib import Path
import threading
import time
from typing import Any

import numpy as np

from keygrid_ros import params as schema
from keygrid_ros.messages import DiagnosticArray, MarkerArray, PointCloud2, PoseArray, PoseStamped, TFMessage
from keygrid_ros.perception import outputs
from keygrid_ros.perception.detector import Detection, Detector, KeypointModel, load_model, resolve_device
from keygrid_ros.perception.pointcloud2 import PointCloud2Error, read_xyz
from keygrid_ros.perception.preprocess import PreprocessConfig
from keygrid_ros.perception.tracking import TrackerConfig
from keygrid_ros.ros.tf_buffer import TransformUnavailableError

PACKAGE = 'keygrid_ros'
NODE_NAME = 'keygrid_detector'


@dataclass(frozen=True)
class Topic:
    """One topic of the node: name (relative, private ``~/`` or absolute), message class, QoS kind.

    QoS kinds: ``sensor_data`` (best effort, keep last 5: matches every camera driver), ``reliable`` (reliable,
    volatile, keep last ``depth``: what RViz and most subscribers request), ``tf`` / ``tf_static`` (tf2's).
    """

    name: str
    type: type
    qos: str
    depth: int = 10


INPUT = Topic('points', PointCloud2, 'sensor_data', 5)
TF_INPUTS = (Topic('/tf', TFMessage, 'tf', 100), Topic('/tf_static', TFMessage, 'tf_static', 100))
OUTPUTS = (
    Topic('keypoints', PoseArray, 'reliable', 5),
    Topic('garment_pose', PoseStamped, 'reliable', 5),
    Topic('~/markers', MarkerArray, 'reliable', 5),
    Topic('~/cropped_points', PointCloud2, 'reliable', 2),
    Topic('/tf', TFMessage, 'tf', 100),
    Topic('/diagnostics', DiagnosticArray, 'reliable', 10),
)

#: How often the same warning may repeat (seconds); a *new* reason is always logged at once.
THROTTLE_S = 5.0
#: Diagnostics period (seconds, in the node's clock).
DIAGNOSTICS_PERIOD_S = 1.0
#: Warn when no cloud has arrived this long after start (the classic QoS / remap mistake).
NO_INPUT_WARNING_S = 5.0


class NodeStartupError(RuntimeError):
    """The node cannot start (bad parameters, missing or corrupt model): message says what to fix."""


# --------------------------------------------------------------------------------------------------- helpers
class ThrottledLog:
    """Log a message at once when it is new for its key, then at most every ``period_s`` while it repeats."""

    def __init__(self, logger: Any, period_s: float = THROTTLE_S, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.period_s = period_s
        self._clock = clock
        self._last: dict[str, tuple[str, float]] = {}

    def __call__(self, key: str, level: str, message: str) -> bool:
        now = self._clock()
        previous = self._last.get(key)
        if previous is not None and previous[0] == message and now - previous[1] < self.period_s:
            return False
        self._last[key] = (message, now)
        getattr(self.logger, level)(message)
        return True

    def clear(self, key: str) -> None:
        self._last.pop(key, None)


class LatestSlot:
    """A one-message mailbox: ``put`` replaces whatever is waiting (counted as overwritten), ``take`` waits.

    This is the whole back-pressure policy: the node never queues clouds, so a slow frame only ever delays
    the newest cloud, and memory holds at most one waiting cloud.
    """

    def __init__(self):
        self._item: Any = None
        self._cond = threading.Condition()
        self.received = 0
        self.overwritten = 0
        self._closed = False

    def put(self, item: Any) -> None:
        with self._cond:
            if self._item is not None:
                self.overwritten += 1
            self._item = item
            self.received += 1
            self._cond.notify()

    def take(self, timeout: float | None = None) -> Any:
        """The waiting item (None after ``timeout`` seconds or once closed)."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def pending(self) -> bool:
        return self._item is not None


def stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def package_share() -> Path | None:
    """``share/keygrid_ros`` of the installed package (ament_index), or None outside a ROS install."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory(PACKAGE))
    except PackageNotFoundError:
        return None


def source_root() -> Path:
    """The source tree (repository root), where ``models/`` and ``config/`` live in a development checkout."""
    return Path(__file__).resolve().parents[2]


def resolve_name(name: str, node_name: str = NODE_NAME, namespace: str = '',
                 remap: Mapping[str, str] | None = None) -> str:
    """ROS name resolution, remapping first: ``~/x`` -> ``/<ns>/<node>/x``, ``x`` -> ``/<ns>/x``, ``/x`` stays."""
    name = (remap or {}).get(name, name)
    namespace = '/' + namespace.strip('/') if namespace.strip('/') else ''
    if name.startswith('/'):
        return name
    if name.startswith('~/'):
        return f'{namespace}/{node_name}/{name[2:]}'
    return f'{namespace}/{name}'


def resolve_share_file(path: str, share: Path | None = None, what: str = 'file') -> Path:
    """Absolute paths as they are; relative ones against the share folder, the source tree, then the cwd.

    Raises NodeStartupError listing every place it looked.
    """
    candidate = Path(os.path.expanduser(path))
    if candidate.is_absolute():
        if candidate.exists():
            return candidate
        raise NodeStartupError(f'{what} not found: {candidate}')
    roots = []
    for root in (share if share is not None else package_share(), source_root(), Path.cwd()):
        if root is not None and root.resolve() not in roots:
            roots.append(root.resolve())
    tried = []
    for root in roots:
        full = root / candidate
        if full.exists():
            return full
        tried.append(str(full))
    raise NodeStartupError(f"{what} {path!r} not found; looked in: {', '.join(tried)}")


def resolve_model_path(path: str, share: Path | None = None) -> Path:
    """:func:`resolve_share_file` for the model file, with what to do when it is missing."""
    try:
        resolved = resolve_share_file(path, share, 'model file')
    except NodeStartupError as exc:
        raise NodeStartupError(f'{exc}. Set model_path to an absolute path or train a model into models/ '
                               '(models/README.md)') from None
    if not resolved.is_file():
        raise NodeStartupError(f'model file {resolved} is not a file')
    return resolved


def _preprocess_config(values: Mapping[str, Any]) -> PreprocessConfig:
    return PreprocessConfig.from_params(values)


def check_parameter_changes(current: Mapping[str, Any], changes: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Validate run-time changes against the schema and the current values: ``(clean changes, '')`` or
    ``({}, reason)``. Read-only parameters may only be "set" to their current value; names outside the schema
    (``use_sim_time``, ``autostart``, QoS overrides) belong to the transport and are ignored."""
    ours = {name: value for name, value in changes.items() if name in schema.PARAMS_BY_NAME}
    try:
        clean = schema.validate(ours)
    except schema.ParameterError as exc:
        return {}, str(exc)
    refused = [n for n, v in clean.items() if schema.PARAMS_BY_NAME[n].read_only and v != current.get(n)]
    if refused:
        return {}, f"read-only parameters can not change at run time (restart the node): {', '.join(refused)}"
    candidate = dict(current, **clean)
    try:
        schema.validate({'crop.min': candidate['crop.min'], 'crop.max': candidate['crop.max']})
    except schema.ParameterError as exc:
        return {}, str(exc)
    return clean, ''


# ------------------------------------------------------------------------------------------------------ node
@dataclass
class FrameOutcome:
    """What one processed cloud produced (for tests, benchmarks and the bag transport's summary)."""

    stamp_ns: int
    detection: Detection | None
    reason: str | None
    published: tuple[str, ...]


class DetectorNode:
    """Transport-agnostic node. Construct with validated parameter values (``params.load_yaml`` / defaults).

    Args:
        values: every parameter by dotted name (missing ones take the schema defaults).
        publish: ``(topic name, message) -> None``.
        tf: transform source (see module docstring); None = clouds must already be in ``target_frame``.
        clock: nanoseconds now (the node's notion of time; bag time in bag mode).
        logger: object with ``debug/info/warning/error`` taking one string (logging.Logger, rclpy logger).
        model: an already loaded KeypointModel (tests, benchmarks); None = load ``model_path``.
        warmup: run the model once on a dummy cloud before the first frame (no multi-second first frame, and a
            model that cannot run on ``num_points`` fails at start-up).
    """

    def __init__(self, values: Mapping[str, Any] | None, publish: Callable[[str, Any], None], *, tf: Any = None,
                 clock: Callable[[], int] = time.time_ns, logger: Any = None, model: KeypointModel | None = None,
                 share: Path | None = None, warmup: bool = True):
        merged = schema.defaults()
        try:
            merged.update(schema.validate(dict(values or {})))
        except schema.ParameterError as exc:
            raise NodeStartupError(str(exc)) from None
        self.values = merged
        self.publish = publish
        self.tf = tf
        self.clock = clock
        self.logger = logger or logging.getLogger(NODE_NAME)
        self.log = ThrottledLog(self.logger)
        self._lock = threading.RLock()  # parameter changes never race a frame
        self.slot = LatestSlot()

        device, warning = self._device(merged['device'])
        if warning:
            self.logger.warning(warning)
        self.device = device
        compiled = False
        if model is None:
            path = resolve_model_path(merged['model_path'], share)
            compiled = merged['compile'] and warmup  # compiling happens in the warm-up, never on a live frame
            model = self._load_model(path, merged['model_type'], device, compiled, merged['canonicalize'])
        self.detector = Detector(model, _preprocess_config(merged), device=device,
                                 keypoint_mode=merged['keypoint_mode'], smoothing=merged['smoothing'],
                                 tracking=TrackerConfig.from_params(merged))
        if merged['model_type'] == 'useek' and merged['canonicalize'] != 'none':
            self.logger.warning(f"canonicalize: {merged['canonicalize']} is ignored for model_type useek: the "
                                'student is SE(3)-invariant already')
        self._warn_if_tracks_ride_the_camera(merged)
        if warmup:
            try:
                ms = self.detector.warmup()
            except Exception as exc:
                if compiled:  # no C++ toolchain, an inductor bug ...: the eager model is only slower
                    self.logger.warning(f'torch.compile failed ({type(exc).__name__}: {exc}); running the model '
                                        'eagerly (set compile:=false to skip the attempt)')
                    self.detector.model = self._load_model(path, merged['model_type'], device, False,
                                                           merged['canonicalize'])
                    ms = self._warm_up_or_fail(merged['num_points'])
                else:
                    raise self._model_cannot_run(merged['num_points'], exc) from exc
            self.logger.info(f'model warmed up ({ms:.0f} ms per cloud of {merged["num_points"]} points)')

        self.started_ns = clock()
        self.stats: dict[str, Any] = {'processed': 0, 'detected': 0, 'failed': 0, 'stale': 0, 'decode_errors': 0,
                                      'tf_errors': 0}
        self._done_times: deque[int] = deque(maxlen=30)
        self._last_detection: Detection | None = None
        self._last_reason: str | None = 'no cloud received yet'
        self._last_stamp_age_ms = float('nan')
        self._last_cloud_stamp: int | None = None
        self._last_frame = ''
        self._next_diagnostics_ns = 0
        self._warned_no_input = False

    def _load_model(self, path: Path, model_type: str, device: str, compiled: bool,
                    canonicalize: str = 'none') -> KeypointModel:
        try:
            model = load_model(path, model_type, device, compile=compiled, canonicalize=canonicalize)
        except Exception as exc:  # ModelLoadError, or anything a broken file throws
            raise NodeStartupError(str(exc)) from exc
        self.logger.info(f'loaded {model_type} model {path} on {device}'
                         + (' (the encoder compiles during the warm-up)' if compiled else ''))
        return model

    def _warm_up_or_fail(self, num_points: int) -> float:
        try:
            return self.detector.warmup()
        except Exception as exc:  # wrong num_points for the model, broken weights ...
            raise self._model_cannot_run(num_points, exc) from exc

    @staticmethod
    def _model_cannot_run(num_points: int, exc: Exception) -> NodeStartupError:
        return NodeStartupError(f'the model does not run on {num_points} points: {type(exc).__name__}: {exc}')

    @staticmethod
    def _device(requested: str) -> tuple[str, str | None]:
        try:
            return resolve_device(requested)
        except ValueError as exc:
            raise NodeStartupError(str(exc)) from None

    # ---------------------------------------------------------------------------------------- parameters
    def set_parameters(self, changes: Mapping[str, Any]) -> tuple[bool, str]:
        """Validate and apply parameter changes atomically (the one on-set callback of every transport).

        Returns (successful, reason); see :func:`check_parameter_changes`.
        """
        with self._lock:
            clean, reason = check_parameter_changes(self.values, changes)
            if reason:
                return False, reason
            self.values = dict(self.values, **clean)
            self.detector.configure(_preprocess_config(self.values), smoothing=self.values['smoothing'],
                                    tracking=TrackerConfig.from_params(self.values))
        if clean:
            self.logger.info('parameters updated: ' + ', '.join(f'{k}={v!r}' for k, v in clean.items()))
            if {'tracking.enabled', 'target_frame'} & set(clean):
                self._warn_if_tracks_ride_the_camera(self.values)
        return True, ''

    def _warn_if_tracks_ride_the_camera(self, values: Mapping[str, Any]) -> None:
        """Tracks live in the target frame: in the camera's own frame a moving camera moves every track."""
        if values['tracking.enabled'] and not values['target_frame'].strip('/'):
            self.logger.warning('tracking.enabled with an empty target_frame: tracks are kept in the cloud\'s '
                                '(camera) frame and hold only while the camera stays still; set target_frame to a '
                                'world-fixed frame (base_link of a fixed robot, a table or world frame)')

    # -------------------------------------------------------------------------------------------- input
    def on_cloud(self, cloud: Any) -> None:
        """Receive callback (any thread): keep only the newest cloud."""
        self.slot.put(cloud)

    def spin(self, stop: threading.Event, idle_timeout_s: float = 0.2) -> None:
        """Worker loop for live transports: process the newest cloud whenever there is one, until ``stop``."""
        while not stop.is_set():
            cloud = self.slot.take(idle_timeout_s)
            if cloud is not None:
                self.process(cloud)
            else:
                self.tick()

    def tick(self) -> None:
        """Periodic housekeeping without a cloud: the no-input warning and diagnostics."""
        now = self.clock()
        if (not self._warned_no_input and self.stats['processed'] == 0 and self.slot.received == 0
                and now - self.started_ns > NO_INPUT_WARNING_S * 1e9):
            self._warned_no_input = True
            self.logger.warning(f"no cloud received on '{INPUT.name}' after {NO_INPUT_WARNING_S:.0f} s: check the "
                                'remapping and the publisher QoS (ros2 topic info -v)')
        self._maybe_diagnostics(now, None)

    # ------------------------------------------------------------------------------------------ process
    def process(self, cloud: Any) -> FrameOutcome:
        """Run one cloud through the detector and publish the outputs (never raises on bad input)."""
        with self._lock:
            try:
                return self._process(cloud)
            except Exception as exc:  # the last line of defence: a frame may fail, the node may not
                self.logger.error(f'unexpected error on a cloud, skipped: {type(exc).__name__}: {exc}')
                if isinstance(self.logger, logging.Logger):
                    self.logger.debug('traceback', exc_info=True)
                return FrameOutcome(0, None, f'internal error: {exc}', ())

    def _process(self, cloud: Any) -> FrameOutcome:
        header = getattr(cloud, 'header', None)
        if header is None:
            return self._fail(None, 'input', 'input is not a PointCloud2 (no header)', 'decode_errors')
        stamp = stamp_ns(header)
        now = self.clock()
        self._last_stamp_age_ms = (now - stamp) / 1e6
        max_age = self.values['max_age_s']
        if max_age > 0 and now - stamp > max_age * 1e9:
            self.stats['stale'] += 1
            self.log('stale', 'warning', f'dropping clouds older than max_age_s={max_age} s (this one is '
                     f'{(now - stamp) / 1e9:.2f} s old): inference too slow, or clocks differ (use_sim_time?)')
            return FrameOutcome(stamp, None, 'stale', ())

        source_frame = header.frame_id.lstrip('/')
        target_frame = self.values['target_frame'].lstrip('/') or source_frame
        out_header = outputs.output_header(header, target_frame)
        try:
            points = read_xyz(cloud, skip_nans=False, organized=True)
        except (PointCloud2Error, ValueError, TypeError, AttributeError) as exc:
            return self._fail(out_header, 'decode', f'malformed PointCloud2 skipped: {exc}', 'decode_errors')
        if points.size == 0:
            return self._fail(out_header, 'decode', 'empty PointCloud2 (0 points) skipped')

        transform = None
        if target_frame != source_frame:
            if self.tf is None:
                return self._fail(out_header, 'tf', f"target_frame '{target_frame}' is set but this transport has "
                                  f"no TF: cannot map '{source_frame}' into it", 'tf_errors')
            if not source_frame:
                return self._fail(out_header, 'tf', f"cloud has an empty frame_id: cannot transform it into "
                                  f"'{target_frame}'", 'tf_errors')
            try:
                transform = self.tf.lookup(target_frame, source_frame, stamp, self.values['tf_timeout_s'])
            except TransformUnavailableError as exc:
                return self._fail(out_header, 'tf', f'{exc} (is the TF tree published? target_frame = '
                                  f"'{target_frame}', cloud frame = '{source_frame}')", 'tf_errors')
            except Exception as exc:  # tf2 raises its own exception family through the rclpy adapter
                return self._fail(out_header, 'tf', f"no transform from '{source_frame}' to '{target_frame}': "
                                  f'{type(exc).__name__}: {exc}', 'tf_errors')

        robot = None
        robot_frames = schema.frame_names(self.values['self_filter.frames'])
        if robot_frames:
            robot, reason = self._robot_origins(robot_frames, target_frame, stamp)
            if reason:
                return self._fail(out_header, 'tf', reason, 'tf_errors')

        last, self._last_cloud_stamp = self._last_cloud_stamp, stamp
        if (self.detector.tracker is not None and last is not None
                and not 0 <= stamp - last <= self.values['tracking.max_gap_s'] * 1e9):
            self.detector.reset()  # the stream jumped (a gap, a bag looping): the tracks start again
        detection = self.detector(points, transform, robot)
        if not detection.ok:
            reason = detection.reason
            if detection.stage_points.get('crop', 1) == 0 and not np.isfinite(points).all(axis=-1).any():
                reason = 'cloud has no valid point (all NaN/inf)'
            self._last_detection = detection
            return self._fail(out_header, 'detect', reason, stamp=stamp)

        published = self._publish_detection(out_header, detection)
        self.stats['processed'] += 1
        self.stats['detected'] += 1
        if self._last_reason is not None:  # first detection, or back after a failure: say so once
            self.log.clear('detect')
            self.logger.info(f'garment found: {len(detection.keypoints)} keypoints '
                             f"({detection.ms.get('total', 0.0):.0f} ms)")
        self._last_reason = None
        self._last_detection = detection
        self._last_frame = target_frame
        self._done_times.append(self.clock())
        self._maybe_diagnostics(self.clock(), out_header)
        return FrameOutcome(stamp, detection, None, published)

    def _robot_origins(self, frames: list[str], target_frame: str, stamp: int) -> tuple[np.ndarray | None, str]:
        """The origins (M, 3) of the ``self_filter.frames`` in ``target_frame`` at ``stamp``, or (None, why not).

        A cloud whose robot cannot be placed is skipped rather than processed with the robot in it: a gripper
        that joins the garment puts keypoints on the gripper, worse for a grasp planner than no keypoints.
        """
        if self.tf is None:
            return None, (f"self_filter.frames is set but this transport has no TF: cannot place "
                          f"{', '.join(frames)} in '{target_frame}'")
        if not target_frame:
            return None, 'self_filter.frames is set but the cloud has an empty frame_id and no target_frame is set'
        origins = np.empty((len(frames), 3))
        for i, frame in enumerate(frames):
            if frame == target_frame:
                origins[i] = 0.0
                continue
            try:
                origins[i] = np.asarray(self.tf.lookup(target_frame, frame, stamp, self.values['tf_timeout_s'])
                                        )[:3, 3]
            except Exception as exc:  # TransformUnavailableError, or tf2's own family through the rclpy adapter
                return None, (f"self-filter: no transform from robot frame '{frame}' to '{target_frame}': "
                              f'{type(exc).__name__}: {exc}')
        return origins, ''

    def _publish_detection(self, header, detection: Detection) -> tuple[str, ...]:
        published = []

        def send(topic: str, message: Any) -> None:
            if message is not None:
                self.publish(topic, message)
                published.append(topic)

        send('keypoints', outputs.keypoints_pose_array(header, detection))
        send('garment_pose', outputs.garment_pose_stamped(header, detection))
        if self.values['publish_markers']:
            send('~/markers', outputs.marker_array(header, detection))
        if self.values['publish_cropped_points']:
            send('~/cropped_points', outputs.cropped_cloud(header, detection))
        if self.values['publish_tf']:
            send('/tf', outputs.keypoint_transforms(header, detection))
        return tuple(published)

    def _fail(self, header, key: str, reason: str, counter: str | None = None, stamp: int = 0) -> FrameOutcome:
        """A frame that produced nothing: log (throttled), clear the markers, remember why for diagnostics."""
        self.stats['processed'] += 1
        self.stats['failed'] += 1
        if counter:
            self.stats[counter] += 1
        self.detector.reset()
        level = 'info' if key == 'detect' else 'warning'
        self.log(key, level, reason)
        self._last_reason = reason
        published = ()
        if header is not None and self.values['publish_markers']:
            self.publish('~/markers', MarkerArray(markers=outputs.delete_all_markers(header)))
            published = ('~/markers',)
        self._done_times.append(self.clock())
        self._maybe_diagnostics(self.clock(), header)
        return FrameOutcome(stamp or (stamp_ns(header) if header is not None else 0), None, reason, published)

    # -------------------------------------------------------------------------------------- diagnostics
    def rate_hz(self) -> float:
        """Frames processed per second over the last few frames (0 with fewer than two)."""
        times = self._done_times
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / ((times[-1] - times[0]) / 1e9)

    def diagnostics(self, header=None) -> DiagnosticArray:
        """The node's status: OK while detecting, WARN with the reason otherwise."""
        from keygrid_ros.messages import DiagnosticStatus, Header, Time

        level = DiagnosticStatus.OK if self._last_reason is None else DiagnosticStatus.WARN
        message = 'detecting' if self._last_reason is None else self._last_reason
        values: dict[str, object] = {
            'rate_hz': self.rate_hz(),
            'stamp_age_ms': self._last_stamp_age_ms,
            'device': self.device,
            'target_frame': self.values['target_frame'] or '(cloud frame)',
            'last_failure': self._last_reason or '',
            'clouds_received': self.slot.received,
            'clouds_overwritten': self.slot.overwritten,
        }
        values.update({k: v for k, v in self.stats.items()})
        if self._last_detection is not None:
            values.update(outputs.detection_values(self._last_detection))
            values['keypoint_names'] = outputs.names_text(self.detector.names)
        now = self.clock()
        header = header or Header(stamp=Time.from_ns(now), frame_id='')
        return outputs.diagnostic_array(Header(stamp=header.stamp, frame_id=''), f'{NODE_NAME}: detection', level,
                                        message, values, hardware_id=self.device)

    def _maybe_diagnostics(self, now: int, header) -> None:
        if now < self._next_diagnostics_ns:
            return
        self._next_diagnostics_ns = now + int(DIAGNOSTICS_PERIOD_S * 1e9)
        self.publish('/diagnostics', self.diagnostics(header))

    def close(self) -> None:
        self.slot.close()
