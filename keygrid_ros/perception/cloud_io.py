"""Load point clouds from files: ``.pcd``, ``.npy``/``.npz`` and rosbag2 recordings (mcap or sqlite3).

Everything comes back as a PointCloud2 (our dataclass), so the node, the CLI and the benchmarks take one code
path from file to ``read_xyz``. Bags are read with rosbags' ``AnyReader``; message definitions embedded in the
bag win, and the Humble typestore is the fallback for bags without them. Bag messages keep their buffers (no
copy): a 640x480 cloud costs microseconds beyond the storage read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from keygrid_ros.messages import Header, PointCloud2, TransformStamped, from_msg
from keygrid_ros.perception.pcd import read_pcd
from keygrid_ros.perception.pointcloud2 import create_cloud, create_cloud_xyz32

POINTCLOUD2 = 'sensor_msgs/msg/PointCloud2'
TF_MESSAGE = 'tf2_msgs/msg/TFMessage'
BAG_SUFFIXES = ('.mcap', '.db3')
#: Keys tried, in order, in an ``.npz`` (``vertices`` is the sequence-file layout, ``(T, V, 3)``).
NPZ_KEYS = ('points', 'xyz', 'cloud', 'vertices')


class CloudIOError(ValueError):
    """A file cannot be turned into a cloud; the message says which file and why."""


def default_typestore() -> Any:
    """The ROS 2 Humble typestore (Humble is the oldest distro we target; its message layouts suit Jazzy too)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def is_bag(path: str | Path) -> bool:
    """True for a rosbag2 directory (has metadata.yaml) or a single ``.mcap``/``.db3`` storage file."""
    path = Path(path)
    return (path.is_dir() and (path / 'metadata.yaml').exists()) or path.suffix in BAG_SUFFIXES


def _reader(path: Path) -> Any:
    from rosbags.highlevel import AnyReader

    if not path.exists():
        raise CloudIOError(f'{path}: no such bag')
    if not is_bag(path):
        raise CloudIOError(f'{path}: not a rosbag2 (expected a directory with metadata.yaml, or .mcap/.db3)')
    return AnyReader([path], default_typestore=default_typestore())


def iter_bag_messages(path: str | Path, topics: Iterable[str] | None = None,
                      msgtypes: Iterable[str] | None = None) -> Iterator[tuple[str, str, Any, int]]:
    """Yield ``(topic, msgtype, message, timestamp_ns)`` in timestamp order, deserialised with rosbags.

    ``topics``/``msgtypes`` filter the connections (None = all). Messages are rosbags dataclasses (duck-type
    compatible with ours); bag time is the recording timestamp, not ``header.stamp``.
    """
    path = Path(path)
    topics = None if topics is None else set(topics)
    msgtypes = None if msgtypes is None else set(msgtypes)
    with _reader(path) as reader:
        connections = [c for c in reader.connections if (topics is None or c.topic in topics)
                       and (msgtypes is None or c.msgtype in msgtypes)]
        if not connections:
            return
        for connection, timestamp, raw in reader.messages(connections=connections):
            yield connection.topic, connection.msgtype, reader.deserialize(raw, connection.msgtype), timestamp


def bag_topics(path: str | Path) -> dict[str, str]:
    """``{topic: msgtype}`` of a bag, in the bag's connection order."""
    with _reader(Path(path)) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def cloud_topics(path: str | Path) -> list[str]:
    """The PointCloud2 topics of a bag, in the bag's connection order."""
    return [topic for topic, msgtype in bag_topics(path).items() if msgtype == POINTCLOUD2]


def _cloud_topic(path: Path, topic: str | None) -> str:
    topics = cloud_topics(path)
    if topic is None:
        if not topics:
            raise CloudIOError(f'{path}: the bag has no sensor_msgs/msg/PointCloud2 topic')
        return topics[0]
    if topic not in topics:
        available = ', '.join(topics) or 'none'
        raise CloudIOError(f'{path}: no PointCloud2 topic {topic!r} (PointCloud2 topics: {available})')
    return topic


def iter_bag_clouds(path: str | Path, topic: str | None = None) -> Iterator[tuple[str, Any, int]]:
    """Yield ``(topic, cloud, timestamp_ns)`` for PointCloud2 messages in timestamp order.

    ``topic=None`` yields every PointCloud2 topic; a named topic that is missing (or not a PointCloud2) raises
    CloudIOError listing the PointCloud2 topics. ``cloud`` is the rosbags message (zero copy).
    """
    path = Path(path)
    topics = None if topic is None else [_cloud_topic(path, topic)]
    for name, _, msg, timestamp in iter_bag_messages(path, topics=topics, msgtypes=[POINTCLOUD2]):
        yield name, msg, timestamp


def load_bag_cloud(path: str | Path, topic: str | None = None, index: int = 0) -> PointCloud2:
    """The ``index``-th cloud (in time order) on ``topic`` (default: the bag's first PointCloud2 topic)."""
    path = Path(path)
    if index < 0:
        raise CloudIOError(f'{path}: index must be >= 0, got {index}')
    topic = _cloud_topic(path, topic)
    seen = 0
    for _, msg, _ in iter_bag_clouds(path, topic):
        if seen == index:
            return from_msg(PointCloud2, msg)
        seen += 1
    raise CloudIOError(f'{path}: topic {topic!r} has {seen} clouds, index {index} is out of range')


def _xyz_or_structured(array: np.ndarray, header: Header, source: str) -> PointCloud2:
    if array.dtype.names is not None:
        if not {'x', 'y', 'z'} <= set(array.dtype.names):
            raise CloudIOError(f'{source}: structured array has no x, y, z fields ({array.dtype.names})')
        return create_cloud(header, None, array)
    if array.ndim in (2, 3) and array.shape[-1] == 3 and array.dtype.kind in 'fiu':
        return create_cloud_xyz32(header, array)
    raise CloudIOError(f'{source}: expected (N, 3) or (H, W, 3) points, got {array.dtype} {array.shape}')


def _load_npz(path: Path, index: int, header: Header) -> PointCloud2:
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        key = next((k for k in NPZ_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise CloudIOError(f'{path}: no points array (looked for {", ".join(NPZ_KEYS)}; found {", ".join(keys)})')
        array = archive[key]
    if key == 'vertices' and array.ndim == 3 and array.shape[-1] == 3:  # a sequence: one frame per index
        if not -len(array) <= index < len(array):
            raise CloudIOError(f'{path}: sequence has {len(array)} frames, index {index} is out of range')
        return _xyz_or_structured(array[index], header, f'{path}[vertices][{index}]')
    if index != 0:
        raise CloudIOError(f'{path}: holds one cloud, index {index} is out of range')
    return _xyz_or_structured(array, header, f'{path}[{key}]')


def load_cloud(path: str | Path, topic: str | None = None, index: int = 0, frame_id: str = '') -> PointCloud2:
    """Load one cloud as a PointCloud2 from a ``.pcd``, ``.npy``, ``.npz`` or rosbag2 (directory/.mcap/.db3).

    Bags: the ``index``-th message on ``topic`` (default: the first PointCloud2 topic), header as recorded.
    Files: ``frame_id`` goes into the header (PCD files of a depth camera are in its optical frame), stamp 0;
    ``.npz`` sequence files (``vertices`` ``(T, V, 3)``) give frame ``index``. Raises CloudIOError (or
    FileNotFoundError) naming the file.
    """
    path = Path(path)
    if is_bag(path):
        return load_bag_cloud(path, topic, index)
    if not path.exists():
        raise FileNotFoundError(f'{path}: no such file')
    header = Header(frame_id=frame_id)
    suffix = path.suffix.lower()
    if suffix == '.pcd':
        if index != 0:
            raise CloudIOError(f'{path}: a PCD file holds one cloud, index {index} is out of range')
        return create_cloud(header, None, read_pcd(path).points)
    if suffix == '.npy':
        if index != 0:
            raise CloudIOError(f'{path}: holds one cloud, index {index} is out of range')
        return _xyz_or_structured(np.load(path, allow_pickle=False), header, str(path))
    if suffix == '.npz':
        return _load_npz(path, index, header)
    raise CloudIOError(f'{path}: unknown cloud format {suffix!r} (expected .pcd, .npy, .npz, .mcap, .db3 or a bag '
                       'directory)')


def load_tf_static(path: str | Path, topic: str = '/tf_static') -> list[TransformStamped]:
    """All transforms recorded on ``/tf_static`` (our TransformStamped dataclasses), later ones last.

    An empty list when the bag has no such topic.
    """
    transforms = []
    for _, _, msg, _ in iter_bag_messages(path, topics=[topic], msgtypes=[TF_MESSAGE]):
        transforms.extend(from_msg(TransformStamped, t) for t in msg.transforms)
    return transforms
