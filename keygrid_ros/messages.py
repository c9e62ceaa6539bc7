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
import functools
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
    kwargs = {}
    for name, hint in _field_hints(cls):
        if hasattr(msg, name):
            kwargs[name] = _convert_value(hint, getattr(msg, name))
    return cls(**kwargs)


@functools.cache
def _field_hints(cls: type) -> tuple[tuple[str, Any], ...]:
    """(name, resolved annotation) per dataclass field; cached because get_type_hints costs ~0.1 ms a class."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in fields(cls))


def _convert_value(hint: Any, value: Any) -> Any:
    if isinstance(hint, type) and is_dataclass(hint):
        return value if isinstance(value, hint) else from_msg(hint, value)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if isinstance(item, type) and is_dataclass(item):
            return [v if isinstance(v, item) else from_msg(item, v) for v in value]
        return list(value)
    return value


# =============================================================================================== node outputs
# Appended for the detector node's outputs (keygrid_ros.perception.outputs); same conventions as above.

# ------------------------------------------------------------------------------------------------------- std_msgs
@dataclass
class ColorRGBA:
    """std_msgs/msg/ColorRGBA: components in [0, 1]."""

    ROS_TYPE: ClassVar[str] = 'std_msgs/msg/ColorRGBA'

    r: float = 0.0
    g: float = 0.0
    b: float = 0.0
    a: float = 0.0


# -------------------------------------------------------------------------------------------------- geometry_msgs
@dataclass
class Point:
    """geometry_msgs/msg/Point: a position in metres."""

    ROS_TYPE: ClassVar[str] = 'geometry_msgs/msg/Point'

    x: float = 0.0
    y: float = 0.0
    z: float = 0.0


@dataclass
class Vector3:
    """geometry_msgs/msg/Vector3: a direction or scale (metres for Marker.scale)."""

    ROS_TYPE: ClassVar[str] = 'geometry_msgs/msg/Vector3'

    x: float = 0.0
    y: float = 0.0
    z: float = 0.0


@dataclass
class Quaternion:
    """geometry_msgs/msg/Quaternion (x, y, z, w); the ROS default is the identity (w = 1)."""

    ROS_TYPE: ClassVar[str] = 'geometry_msgs/msg/Quaternion'

    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    w: float = 1.0


@dataclass
class Pose:
    """geometry_msgs/msg/Pose."""

    ROS_TYPE: ClassVar[str] = 'geometry_msgs/msg/Pose'

    position: Point = field(default_factory=Point)
    orientation: Quaternion = field(default_factory=Quaternion)


@dataclass
class PoseStamped:
    """geometry_msgs/msg/PoseStamped."""

    ROS_TYPE: ClassVar[str] = 'geometry_msgs/msg/PoseStamped'

    header: Header = field(default_factory=Header)
    pose: Pose = field(default_factory=Pose)


@dataclass
class PoseArray:
    """geometry_msgs/msg/PoseArray: poses sharing one header."""

    ROS_TYPE: ClassVar[str] = 'geometry_msgs/msg/PoseArray'

    header: Header = field(default_factory=Header)
    poses: list[Pose] = field(default_factory=list)


@dataclass
class Transform:
    """geometry_msgs/msg/Transform: translation (metres) and rotation of the child in the parent frame."""

    ROS_TYPE: ClassVar[str] = 'geometry_msgs/msg/Transform'

    translation: Vector3 = field(default_factory=Vector3)
    rotation: Quaternion = field(default_factory=Quaternion)


@dataclass
class TransformStamped:
    """geometry_msgs/msg/TransformStamped: ``header.frame_id`` is the parent, ``child_frame_id`` the child."""

    ROS_TYPE: ClassVar[str] = 'geometry_msgs/msg/TransformStamped'

    header: Header = field(default_factory=Header)
    child_frame_id: str = ''
    transform: Transform = field(default_factory=Transform)


# ---------------------------------------------------------------------------------------------------- sensor_msgs
@dataclass
class CompressedImage:
    """sensor_msgs/msg/CompressedImage (only used inside visualization_msgs/Marker.texture)."""

    ROS_TYPE: ClassVar[str] = 'sensor_msgs/msg/CompressedImage'

    header: Header = field(default_factory=Header)
    format: str = ''
    data: ByteBuffer = b''


# ---------------------------------------------------------------------------------------------- visualization_msgs
@dataclass
class UVCoordinate:
    """visualization_msgs/msg/UVCoordinate."""

    ROS_TYPE: ClassVar[str] = 'visualization_msgs/msg/UVCoordinate'

    u: float = 0.0
    v: float = 0.0


@dataclass
class MeshFile:
    """visualization_msgs/msg/MeshFile."""

    ROS_TYPE: ClassVar[str] = 'visualization_msgs/msg/MeshFile'

    filename: str = ''
    data: ByteBuffer = b''


@dataclass
class Marker:
    """visualization_msgs/msg/Marker in the Humble/Iron/Jazzy layout (19 fields; Foxy/Galactic had 15 and
    are not wire compatible)."""

    ROS_TYPE: ClassVar[str] = 'visualization_msgs/msg/Marker'

    ARROW: ClassVar[int] = 0
    CUBE: ClassVar[int] = 1
    SPHERE: ClassVar[int] = 2
    CYLINDER: ClassVar[int] = 3
    LINE_STRIP: ClassVar[int] = 4
    LINE_LIST: ClassVar[int] = 5
    CUBE_LIST: ClassVar[int] = 6
    SPHERE_LIST: ClassVar[int] = 7
    POINTS: ClassVar[int] = 8
    TEXT_VIEW_FACING: ClassVar[int] = 9
    MESH_RESOURCE: ClassVar[int] = 10
    TRIANGLE_LIST: ClassVar[int] = 11
    ADD: ClassVar[int] = 0
    MODIFY: ClassVar[int] = 0
    DELETE: ClassVar[int] = 2
    DELETEALL: ClassVar[int] = 3

    header: Header = field(default_factory=Header)
    ns: str = ''
    id: int = 0
    type: int = 0
    action: int = 0
    pose: Pose = field(default_factory=Pose)
    scale: Vector3 = field(default_factory=Vector3)
    color: ColorRGBA = field(default_factory=ColorRGBA)
    lifetime: Duration = field(default_factory=Duration)
    frame_locked: bool = False
    points: list[Point] = field(default_factory=list)
    colors: list[ColorRGBA] = field(default_factory=list)
    texture_resource: str = ''
    texture: CompressedImage = field(default_factory=CompressedImage)
    uv_coordinates: list[UVCoordinate] = field(default_factory=list)
    text: str = ''
    mesh_resource: str = ''
    mesh_file: MeshFile = field(default_factory=MeshFile)
    mesh_use_embedded_materials: bool = False


@dataclass
class MarkerArray:
    """visualization_msgs/msg/MarkerArray."""

    ROS_TYPE: ClassVar[str] = 'visualization_msgs/msg/MarkerArray'

    markers: list[Marker] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ diagnostic_msgs
@dataclass
class KeyValue:
    """diagnostic_msgs/msg/KeyValue."""

    ROS_TYPE: ClassVar[str] = 'diagnostic_msgs/msg/KeyValue'

    key: str = ''
    value: str = ''


@dataclass
class DiagnosticStatus:
    """diagnostic_msgs/msg/DiagnosticStatus. ``level`` is a ROS ``byte``: an int here and in rosbags, a
    length-1 ``bytes`` in rclpy (the rclpy adapter converts)."""

    ROS_TYPE: ClassVar[str] = 'diagnostic_msgs/msg/DiagnosticStatus'

    OK: ClassVar[int] = 0
    WARN: ClassVar[int] = 1
    ERROR: ClassVar[int] = 2
    STALE: ClassVar[int] = 3

    level: int = 0
    name: str = ''
    message: str = ''
    hardware_id: str = ''
    values: list[KeyValue] = field(default_factory=list)


@dataclass
class DiagnosticArray:
    """diagnostic_msgs/msg/DiagnosticArray."""

    ROS_TYPE: ClassVar[str] = 'diagnostic_msgs/msg/DiagnosticArray'

    header: Header = field(default_factory=Header)
    status: list[DiagnosticStatus] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------- tf2_msgs
@dataclass
class TFMessage:
    """tf2_msgs/msg/TFMessage: what /tf and /tf_static carry."""

    ROS_TYPE: ClassVar[str] = 'tf2_msgs/msg/TFMessage'

    transforms: list[TransformStamped] = field(default_factory=list)
