"""Plain-Python mirrors of the ROS 2 messages keygrid_ros uses.

rclpy cannot be installed here, and the node must run with three message worlds (rclpy classes, cyclonedds
dataclasses, rosbags dataclasses) that only share *attribute names*. These dataclasses carry the same names, so
every consumer in the project stays duck-typed, and ``keygrid_ros.ros.rosbag_io`` turns them into typestore
messages for writing bags.

Conventions for adding a message (others will add geometry_msgs / visualization_msgs / diagnostic_msgs):

* one section per ROS package, in dependency order (builtin_interfaces, std_msgs, geometry_msgs, sensor_msgs, ...);
* the class name equals the ROS type name, and ``ROS_TYPE`` holds the full ``pkg/msg/Name`` (the bag writer uses it);
* attribute names and order follow the ``.msg`` file; every attribute has a default equal to the ROS default
  (0, '', False, empty sequence, default sub-message), so ``Foo()`` is a valid message;
* constants are ``ClassVar`` (they are not dataclass fields, as in rclpy).
"""

from __future__ import annotations

import array
from dataclasses import dataclass, field, fields, is_dataclass
import typing
from typing import Any, ClassVar, Union

import numpy as np

#: What ``PointCloud2.data`` may hold: whatever rclpy (array.array), rosbags (uint8 ndarray), cyclonedds (bytes)
#: or our own code (bytes) put there. All of them expose the buffer protocol.
ByteBuffer = Union[bytes, bytearray, memoryview, array.array, np.ndarray]

_NS_PER_S = 1_000_000_000


# --------------------------------------------------------------------------------------------- builtin_interfaces
@dataclass
class Time:
    """builtin_interfaces/msg/Time: seconds and nanoseconds (0 <= nanosec < 1e9) since the epoch."""

    ROS_TYPE: ClassVar[str] = 'builtin_interfaces/msg/Time'

    sec: int = 0
    nanosec: int = 0

    @classmethod
    def from_ns(cls, ns: int) -> Time:
        """Split an integer nanosecond count; negative times keep ``nanosec`` in [0, 1e9) as ROS does."""
        sec, nanosec = divmod(int(ns), _NS_PER_S)
        return cls(sec=sec, nanosec=nanosec)

    def to_ns(self) -> int:
        return int(self.sec) * _NS_PER_S + int(self.nanosec)


@dataclass
class Duration:
    """builtin_interfaces/msg/Duration (same layout as Time; used by Marker.lifetime and friends)."""

    ROS_TYPE: ClassVar[str] = 'builtin_interfaces/msg/Duration'

    sec: int = 0
    nanosec: int = 0

    @classmethod
    def from_ns(cls, ns: int) -> Duration:
        sec, nanosec = divmod(int(ns), _NS_PER_S)
        return cls(sec=sec, nanosec=nanosec)

    def to_ns(self) -> int:
        return int(self.sec) * _NS_PER_S + int(self.nanosec)


# ------------------------------------------------------------------------------------------------------- std_msgs
@dataclass
class Header:
    """std_msgs/msg/Header: acquisition time and coordinate frame of the data."""

    ROS_TYPE: ClassVar[str] = 'std_msgs/msg/Header'

    stamp: Time = field(default_factory=Time)
    frame_id: str = ''


# ---------------------------------------------------------------------------------------------------- sensor_msgs
@dataclass
class PointField:
    """sensor_msgs/msg/PointField: one named field of a PointCloud2 point, ``count`` values of ``datatype``."""

    ROS_TYPE: ClassVar[str] = 'sensor_msgs/msg/PointField'

    INT8: ClassVar[int] = 1
    UINT8: ClassVar[int] = 2
    INT16: ClassVar[int] = 3
    UINT16: ClassVar[int] = 4
    INT32: ClassVar[int] = 5
    UINT32: ClassVar[int] = 6
    FLOAT32: ClassVar[int] = 7
    FLOAT64: ClassVar[int] = 8

    name: str = ''
    offset: int = 0
    datatype: int = 0
    count: int = 1


@dataclass
class PointCloud2:
    """sensor_msgs/msg/PointCloud2.

    ``height`` rows of ``width`` points; point ``(r, c)`` starts at byte ``r * row_step + c * point_step`` of
    ``data``. ``height == 1`` means unorganised. ``data`` holds ``row_step * height`` bytes in any buffer type
    (see ``ByteBuffer``); note that dataclass ``==`` is then only meaningful for bytes-like ``data``.
    """

    ROS_TYPE: ClassVar[str] = 'sensor_msgs/msg/PointCloud2'

    header: Header = field(default_factory=Header)
    height: int = 0
    width: int = 0
    fields: list[PointField] = field(default_factory=list)
    is_bigendian: bool = False
    point_step: int = 0
    row_step: int = 0
    data: ByteBuffer = b''
    is_dense: bool = False


# ------------------------------------------------------------------------------------------------------- helpers
def ros_type_of(cls_or_obj: Any) -> str | None:
    """The ``pkg/msg/Name`` of one of our message classes (or instances), None for anything else."""
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    return getattr(cls, 'ROS_TYPE', None)


def from_msg(cls: type, msg: Any) -> Any:
    """Copy any duck-typed message (rclpy, rosbags, cyclonedds, ours) into our dataclass ``cls``, recursively.

    Only attribute names matter. Buffers and arrays are taken as they are (no copy), so converting a rosbags
    PointCloud2 costs microseconds. Attributes the source lacks keep ``cls``'s defaults.
    """
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if not hasattr(msg, f.name):
            continue
        value = getattr(msg, f.name)
        kwargs[f.name] = _convert_value(hints[f.name], value)
    return cls(**kwargs)


def _convert_value(hint: Any, value: Any) -> Any:
    if isinstance(hint, type) and is_dataclass(hint):
        return value if isinstance(value, hint) else from_msg(hint, value)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if isinstance(item, type) and is_dataclass(item):
            return [v if isinstance(v, item) else from_msg(item, v) for v in value]
        return list(value)
    return value
