"""Writing rosbag2 recordings from our plain message dataclasses (renderer, bag transport, tests).

``BagWriter`` wraps rosbags' ``Writer``: mcap storage by default (sqlite3 optional), metadata version 8 because
Humble's reader parses v9's QoS list as a string and fails (v8 is readable by Humble and later), and the Humble
typestore for message definitions. Messages may be our dataclasses (``keygrid_ros.messages``), any dataclass whose
class name is a unique ROS type name in the typestore, rosbags messages, or already-serialised CDR bytes.

Conversion is by field name, following the typestore's definition of the type: attributes the object lacks get
the ROS default, primitive arrays become numpy arrays (``uint8[]`` buffers are wrapped without copying).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from keygrid_ros.messages import Header, TFMessage, TransformStamped, ros_type_of
from keygrid_ros.perception.cloud_io import default_typestore, iter_bag_messages  # noqa: F401  (re-exported)

#: Metadata version: 8 is what Humble can read (see the module docstring).
HUMBLE_COMPATIBLE_VERSION = 8
STORAGES = ('mcap', 'sqlite3')

_NUMPY_BASE = {
    'bool': np.bool_, 'byte': np.uint8, 'char': np.uint8, 'int8': np.int8, 'uint8': np.uint8, 'int16': np.int16,
    'uint16': np.uint16, 'int32': np.int32, 'uint32': np.uint32, 'int64': np.int64, 'uint64': np.uint64,
    'float32': np.float32, 'float64': np.float64,
}
_MISSING = object()


class BagWriteError(ValueError):
    """A message cannot be converted or written (unknown type, topic type clash, missing timestamp)."""


# ------------------------------------------------------------------------------------------------ conversion
def resolve_msgtype(msg: Any, typestore: Any, msgtype: str | None = None) -> str:
    """The ``pkg/msg/Name`` for ``msg``: explicit, ``ROS_TYPE``, rosbags' ``__msgtype__``, or a unique class-name
    match in the typestore."""
    name = msgtype or ros_type_of(msg) or getattr(msg, '__msgtype__', None)
    if name is None:
        cls_name = type(msg).__name__
        matches = [t for t in typestore.fielddefs if t.rsplit('/', 1)[-1] == cls_name]
        if len(matches) != 1:
            found = ', '.join(matches) or 'none'
            raise BagWriteError(f'cannot tell the ROS type of {cls_name} (typestore matches: {found}); pass msgtype')
        name = matches[0]
    if name not in typestore.fielddefs:
        raise BagWriteError(f'message type {name!r} is not in the typestore')
    return name


def to_typestore(msg: Any, typestore: Any, msgtype: str | None = None) -> Any:
    """Convert any duck-typed message into ``typestore``'s class for its ROS type (identity for its own messages)."""
    name = resolve_msgtype(msg, typestore, msgtype)
    if type(msg) is typestore.types[name]:
        return msg
    return _build(msg, name, typestore)


def _build(value: Any, msgtype: str, typestore: Any) -> Any:
    _, fields = typestore.fielddefs[msgtype]
    kwargs = {}
    for name, (nodetype, spec) in fields:
        attr = _MISSING if value is None else getattr(value, name, _MISSING)
        try:
            kwargs[name] = _convert(attr, int(nodetype), spec, typestore)
        except (TypeError, ValueError) as err:
            raise BagWriteError(f'{msgtype}.{name}: cannot convert {type(attr).__name__}: {err}') from None
    return typestore.types[msgtype](**kwargs)


def _base_scalar(value: Any, typename: str) -> Any:
    if typename == 'string':
        return '' if value is _MISSING else str(value)
    if value is _MISSING:
        return False if typename == 'bool' else (0.0 if typename.startswith('float') else 0)
    if typename == 'bool':
        return bool(value)
    if typename.startswith('float'):
        return float(value)
    if isinstance(value, (bytes, bytearray)) and len(value) == 1:  # rclpy represents ROS `byte` as bytes
        return value[0]
    return int(value)


def _base_array(value: Any, typename: str, length: int | None) -> Any:
    if typename == 'string':
        items = [] if value is _MISSING else [str(v) for v in value]
        return items + [''] * ((length or 0) - len(items)) if length else items
    dtype = np.dtype(_NUMPY_BASE[typename])
    if value is _MISSING:
        return np.zeros(length or 0, dtype)
    if dtype.itemsize == 1 and not isinstance(value, (np.ndarray, list, tuple)):
        try:  # bytes, bytearray, memoryview, array.array: wrap, do not copy
            array = np.frombuffer(value, dtype=dtype)
        except TypeError:
            array = np.asarray(value, dtype=dtype)
    else:
        array = np.asarray(value)
        if array.dtype != dtype:
            array = array.astype(dtype)
    array = array.reshape(-1)
    if length and array.size != length:
        raise ValueError(f'fixed-size array needs {length} values, got {array.size}')
    return array


def _convert(value: Any, nodetype: int, spec: Any, typestore: Any) -> Any:
    if nodetype == 1:  # BASE: (typename, string bound)
        return _base_scalar(value, spec[0])
    if nodetype == 2:  # NAME: nested message
        return _build(None if value is _MISSING else value, spec, typestore)
    # ARRAY (3, fixed length) or SEQUENCE (4, unbounded or bounded): ((subnodetype, subspec), length)
    (subtype, subspec), length = spec
    length = length if nodetype == 3 else None
    if int(subtype) == 1:
        return _base_array(value, subspec[0], length)
    items = [] if value is _MISSING else [_build(v, subspec, typestore) for v in value]
    if length and len(items) != length:
        items += [_build(None, subspec, typestore) for _ in range(length - len(items))]
    return items


# ------------------------------------------------------------------------------------------------------ writer
def _qos(durability: str) -> Any:
    """A reliable KEEP_LAST(1) QoS profile with the given durability (for /tf_static: transient_local)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory.KEEP_LAST, depth=1, reliability=QosReliability.RELIABLE,
               durability=QosDurability[durability.upper()], deadline=zero, lifespan=zero,
               liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=zero,
               avoid_ros_namespace_conventions=False)


class BagWriter:
    """Context manager writing messages into a new rosbag2 directory.

    ``with BagWriter(out_dir) as bag: bag.write('/camera/depth/points', cloud)`` — the topic is registered on
    first use with the message's type; the timestamp defaults to ``header.stamp``. The directory must not exist
    (rosbags refuses to overwrite). ``storage`` is 'mcap' (Jazzy's default) or 'sqlite3' (Humble's default).
    ``compress`` zstd-compresses the data the way ``ros2 bag record`` does: mcap chunks (what the
    ``zstd_fast`` storage preset writes; every mcap reader decompresses them), or each message for sqlite3.
    """

    def __init__(self, path: str | Path, storage: str = 'mcap', version: int = HUMBLE_COMPATIBLE_VERSION,
                 typestore: Any = None, compress: bool = False) -> None:
        if storage not in STORAGES:
            raise ValueError(f'storage must be one of {STORAGES}, got {storage!r}')
        self.path = Path(path)
        self.storage = storage
        self.version = version
        self.compress = compress
        self.typestore = typestore if typestore is not None else default_typestore()
        self._writer: Any = None
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

        if self.path.exists():
            raise FileExistsError(f'{self.path}: already exists (rosbag2 writers never overwrite)')
        plugin = StoragePlugin.MCAP if self.storage == 'mcap' else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=self.version, storage_plugin=plugin)
        if self.compress:
            mode = CompressionMode.STORAGE if self.storage == 'mcap' else CompressionMode.MESSAGE
            self._writer.set_compression(mode, CompressionFormat.ZSTD)
        self._writer.open()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def add_topic(self, topic: str, msgtype: str, transient_local: bool = False) -> Any:
        """Register ``topic`` (done implicitly by ``write``); ``transient_local`` marks latched topics."""
        if self._writer is None:
            raise BagWriteError('the bag is not open (use BagWriter as a context manager)')
        existing = self._connections.get(topic)
        if existing is not None:
            if existing.msgtype != msgtype:
                raise BagWriteError(f'topic {topic!r} already carries {existing.msgtype}, not {msgtype}')
            return existing
        qos = [_qos('transient_local')] if transient_local else []
        connection = self._writer.add_connection(topic, msgtype, typestore=self.typestore, offered_qos_profiles=qos)
        self._connections[topic] = connection
        self.counts[topic] = 0
        return connection

    def write(self, topic: str, msg: Any, timestamp_ns: int | None = None, msgtype: str | None = None) -> None:
        """Serialise ``msg`` (our dataclass, a rosbags message, or anything duck-typed) and append it."""
        name = resolve_msgtype(msg, self.typestore, msgtype)
        if timestamp_ns is None:
            timestamp_ns = _header_ns(msg, topic)
        raw = self.typestore.serialize_cdr(to_typestore(msg, self.typestore, name), name)
        connection = self.add_topic(topic, name)  # after converting: a failed message leaves no empty topic behind
        self._writer.write(connection, int(timestamp_ns), raw)
        self.counts[topic] += 1

    def write_cdr(self, topic: str, msgtype: str, raw: bytes | memoryview, timestamp_ns: int) -> None:
        """Append an already-serialised CDR message (e.g. passed through from another bag or DDS)."""
        connection = self.add_topic(topic, msgtype)
        self._writer.write(connection, int(timestamp_ns), raw)
        self.counts[topic] += 1

    def write_static_transforms(self, transforms: list[Any], timestamp_ns: int | None = None,
                                topic: str = '/tf_static') -> None:
        """Write TransformStamped-likes as one tf2_msgs/TFMessage on a transient-local ``/tf_static``."""
        transforms = list(transforms)
        if timestamp_ns is None:
            timestamp_ns = min((_header_ns(t, topic) for t in transforms), default=0)
        self.add_topic(topic, TFMessage.ROS_TYPE, transient_local=True)
        self.write(topic, TFMessage(transforms=transforms), timestamp_ns)


def _header_ns(msg: Any, topic: str) -> int:
    header = getattr(msg, 'header', None)
    stamp = getattr(header, 'stamp', None)
    if stamp is None:
        raise BagWriteError(f'{type(msg).__name__} on {topic!r} has no header stamp; pass timestamp_ns')
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def static_transform(parent: str, child: str, translation: Any = (0.0, 0.0, 0.0),
                     rotation_xyzw: Any = (0.0, 0.0, 0.0, 1.0), stamp_ns: int = 0) -> TransformStamped:
    """A TransformStamped from plain numbers (child pose in the parent frame)."""
    from keygrid_ros.messages import Quaternion, Time, Transform, Vector3

    tx, ty, tz = (float(v) for v in translation)
    qx, qy, qz, qw = (float(v) for v in rotation_xyzw)
    return TransformStamped(header=Header(stamp=Time.from_ns(stamp_ns), frame_id=parent), child_frame_id=child,
                            transform=Transform(translation=Vector3(tx, ty, tz), rotation=Quaternion(qx, qy, qz, qw)))


__all__ = ['BagWriteError', 'BagWriter', 'HUMBLE_COMPATIBLE_VERSION', 'iter_bag_messages', 'resolve_msgtype',
           'static_transform', 'to_typestore']
