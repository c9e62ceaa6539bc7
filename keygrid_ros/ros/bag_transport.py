"""Bag transport: run the detector node over a rosbag2 recording and write its outputs to a new bag.

    summary = run_bag('in_bag', 'out_bag', values)      # keygrid detect --bag in_bag --out out_bag

Deterministic: every cloud is processed (no keep-latest dropping, no wall clock). The node's clock is the bag's
recording time; ``max_age_s`` is not applied (a replay never lags, and recordings often carry stamps far from
their record time). ``/tf`` and ``/tf_static`` feed a TF buffer as they come; a cloud is processed once the bag
has been read ``tf_timeout_s`` past it, so transforms recorded slightly after the cloud are found, as a live
tf2 lookup with that timeout would find them.

The output bag (mcap or sqlite3, metadata version 8 so Humble's ``ros2 bag`` reads it, Jazzy too) holds the
node's topics under the names a ROS graph would give them (``/keypoints``, ``/garment_pose``,
``/keygrid_detector/markers``, ``/diagnostics``, ``/tf`` ...), stamped with the input cloud's record time, plus
the input's ``/tf`` and ``/tf_static`` so it is self-contained for RViz (``--copy-input`` adds the clouds).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
import logging
from pathlib import Path
from typing import Any

import numpy as np

from keygrid_ros.messages import TFMessage
from keygrid_ros.perception.cloud_io import POINTCLOUD2, TF_MESSAGE, CloudIOError, bag_topics, iter_bag_messages
from keygrid_ros.ros.node import NODE_NAME, DetectorNode, FrameOutcome, resolve_name
from keygrid_ros.ros.rosbag_io import BagWriter
from keygrid_ros.ros.tf_buffer import TfBuffer

LOG = logging.getLogger('keygrid.detect.bag')
TF_TOPICS = ('/tf', '/tf_static')


def resolve_topic(name: str, node_name: str = NODE_NAME, namespace: str = '') -> str:
    """The recorded topic of one of our outputs (see :func:`keygrid_ros.ros.node.resolve_name`)."""
    return resolve_name(name, node_name, namespace)


@dataclass
class BagSummary:
    """What a bag run did: clouds in, detections out, why frames failed, per-stage median ms."""

    input_topic: str
    clouds: int = 0
    detected: int = 0
    reasons: Counter = field(default_factory=Counter)
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)
    keypoints: list[np.ndarray] = field(default_factory=list)

    def add(self, outcome: FrameOutcome) -> None:
        self.clouds += 1
        if outcome.detection is not None:
            self.detected += 1
            self.keypoints.append(outcome.detection.keypoints)
            for stage, ms in outcome.detection.ms.items():
                self.stage_ms.setdefault(stage, []).append(ms)
        else:
            self.reasons[outcome.reason] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            'input_topic': self.input_topic,
            'clouds': self.clouds,
            'detected': self.detected,
            'failed': self.clouds - self.detected,
            'reasons': dict(self.reasons),
            'median_ms': {stage: round(float(np.median(v)), 3) for stage, v in self.stage_ms.items()},
            'written': dict(self.written),
        }


def _input_topic(path: Path, topic: str | None) -> str:
    topics = bag_topics(path)
    clouds = [t for t, msgtype in topics.items() if msgtype == POINTCLOUD2]
    if topic is not None:
        if topics.get(topic) != POINTCLOUD2:
            raise CloudIOError(f"{path}: no PointCloud2 topic {topic!r} (PointCloud2 topics: {clouds or 'none'})")
        return topic
    if len(clouds) != 1:
        raise CloudIOError(f"{path}: {len(clouds)} PointCloud2 topics ({clouds or 'none'}); pick one with --topic")
    return clouds[0]


def run_bag(in_path: str | Path, out_path: str | Path, values: Mapping[str, Any], *, topic: str | None = None,
            storage: str = 'mcap', copy_input: bool = False, namespace: str = '', model: Any = None,
            logger: Any = None) -> BagSummary:
    """Process every cloud of ``in_path`` and write the outputs to the new bag ``out_path``.

    Raises NodeStartupError (bad parameters, model) and CloudIOError (missing bag or topic) before writing.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    logger = logger or LOG
    cloud_topic = _input_topic(in_path, topic)
    if out_path.exists():
        raise FileExistsError(f'{out_path}: already exists (rosbag2 writers never overwrite); choose a new --out')
    values = dict(values)
    if values.get('max_age_s', 0.0):
        logger.info('bag mode processes every cloud: max_age_s is not applied')
    values['max_age_s'] = 0.0

    tf = TfBuffer()
    clock = [0]
    pending: list[tuple[str, Any, int]] = []  # (topic, message, bag time) to write once the cloud is handled
    node = DetectorNode(values, lambda name, message: pending.append((name, message, clock[0])), tf=tf,
                        clock=lambda: clock[0], logger=logger, model=model)
    tf_wait_ns = int(node.values['tf_timeout_s'] * 1e9)
    summary = BagSummary(cloud_topic)
    waiting: deque[tuple[Any, int]] = deque()

    with BagWriter(out_path, storage=storage) as writer:
        def flush() -> None:
            for name, message, when in pending:
                writer.write(resolve_topic(name, namespace=namespace), message, when)
            pending.clear()

        def process_until(bag_ns: int | None) -> None:
            while waiting and (bag_ns is None or waiting[0][1] + tf_wait_ns <= bag_ns):
                cloud, when = waiting.popleft()
                clock[0] = when
                summary.add(node.process(cloud))
                flush()

        for name, msgtype, message, when in iter_bag_messages(in_path, topics=[cloud_topic, *TF_TOPICS]):
            process_until(when)
            if name == cloud_topic:
                waiting.append((message, when))
                if copy_input:
                    writer.write(name, message, when, msgtype=msgtype)
            elif msgtype == TF_MESSAGE:
                static = name == '/tf_static'
                tf.set_tf_message(message, static=static)
                if static:
                    writer.add_topic(name, TFMessage.ROS_TYPE, transient_local=True)
                writer.write(name, message, when, msgtype=msgtype)
        process_until(None)
        summary.written = dict(writer.counts)
    return summary
