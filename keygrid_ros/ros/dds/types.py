"""ROS 2 message types as cyclonedds ``IdlStruct`` classes, wire-identical to rmw_cyclonedds.

Each class carries the DDS type name rmw uses (``<pkg>::msg::dds_::<Name>_``) and the ``.msg`` field order and
types; topics are keyless and plain XCDR1. ``sequence<uint8>`` fields (PointCloud2.data ...) are (de)serialised
as one ``bytes`` block instead of a list of ints (see :mod:`keygrid_ros.ros.dds.bytes_patch`, applied on import:
150 ms -> 0.3 ms per 640x480 cloud). ``ROS_TYPE`` maps each class to its ``pkg/msg/Name``.

Note: no ``from __future__ import annotations`` here; cyclonedds resolves the annotations at class creation.
"""

from dataclasses import dataclass, field

from cyclonedds.idl import IdlStruct
from cyclonedds.idl.types import array, bounded_str, byte, float32, float64, int32, sequence, uint8, uint32

from keygrid_ros.ros.dds import bytes_patch

bytes_patch.apply()

#: ROS type name (pkg/msg/Name) -> IdlStruct class, filled by the class decorator below.
BY_ROS_TYPE: dict = {}


def ros_message(ros_type: str):
    """Class decorator: register under ``ros_type`` and remember it on the class."""
    def register(cls):
        cls.ROS_TYPE = ros_type
        BY_ROS_TYPE[ros_type] = cls
        return cls
    return register


def dds_name(ros_type: str) -> str:
    """``sensor_msgs/msg/PointCloud2`` -> ``sensor_msgs::msg::dds_::PointCloud2_``."""
    package, kind, name = ros_type.split('/')
    return f'{package}::{kind}::dds_::{name}_'


# ------------------------------------------------------------------------------------------- builtin_interfaces
@ros_message('builtin_interfaces/msg/Time')
@dataclass
class Time(IdlStruct, typename=dds_name('builtin_interfaces/msg/Time')):
    sec: int32 = 0
    nanosec: uint32 = 0


@ros_message('builtin_interfaces/msg/Duration')
@dataclass
class Duration(IdlStruct, typename=dds_name('builtin_interfaces/msg/Duration')):
    sec: int32 = 0
    nanosec: uint32 = 0


# ------------------------------------------------------------------------------------------------------ std_msgs
@ros_message('std_msgs/msg/Header')
@dataclass
class Header(IdlStruct, typename=dds_name('std_msgs/msg/Header')):
    stamp: Time = field(default_factory=Time)
    frame_id: str = ''


@ros_message('std_msgs/msg/ColorRGBA')
@dataclass
class ColorRGBA(IdlStruct, typename=dds_name('std_msgs/msg/ColorRGBA')):
    r: float32 = 0.0
    g: float32 = 0.0
    b: float32 = 0.0
    a: float32 = 0.0


# ------------------------------------------------------------------------------------------------- geometry_msgs
@ros_message('geometry_msgs/msg/Point')
@dataclass
class Point(IdlStruct, typename=dds_name('geometry_msgs/msg/Point')):
    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0


@ros_message('geometry_msgs/msg/Vector3')
@dataclass
class Vector3(IdlStruct, typename=dds_name('geometry_msgs/msg/Vector3')):
    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0


@ros_message('geometry_msgs/msg/Quaternion')
@dataclass
class Quaternion(IdlStruct, typename=dds_name('geometry_msgs/msg/Quaternion')):
    x: float64 = 0.0
    y: float64 = 0.0
    z: float64 = 0.0
    w: float64 = 1.0


@ros_message('geometry_msgs/msg/Pose')
@dataclass
class Pose(IdlStruct, typename=dds_name('geometry_msgs/msg/Pose')):
    position: Point = field(default_factory=Point)
    orientation: Quaternion = field(default_factory=Quaternion)


@ros_message('geometry_msgs/msg/PoseStamped')
@dataclass
class PoseStamped(IdlStruct, typename=dds_name('geometry_msgs/msg/PoseStamped')):
    header: Header = field(default_factory=Header)
    pose: Pose = field(default_factory=Pose)


@ros_message('geometry_msgs/msg/PoseArray')
@dataclass
class PoseArray(IdlStruct, typename=dds_name('geometry_msgs/msg/PoseArray')):
    header: Header = field(default_factory=Header)
    poses: sequence[Pose] = field(default_factory=list)


@ros_message('geometry_msgs/msg/Transform')
@dataclass
class Transform(IdlStruct, typename=dds_name('geometry_msgs/msg/Transform')):
    translation: Vector3 = field(default_factory=Vector3)
    rotation: Quaternion = field(default_factory=Quaternion)


@ros_message('geometry_msgs/msg/TransformStamped')
@dataclass
class TransformStamped(IdlStruct, typename=dds_name('geometry_msgs/msg/TransformStamped')):
    header: Header = field(default_factory=Header)
    child_frame_id: str = ''
    transform: Transform = field(default_factory=Transform)


# --------------------------------------------------------------------------------------------------- sensor_msgs
@ros_message('sensor_msgs/msg/PointField')
@dataclass
class PointField(IdlStruct, typename=dds_name('sensor_msgs/msg/PointField')):
    name: str = ''
    offset: uint32 = 0
    datatype: uint8 = 0
    count: uint32 = 1


@ros_message('sensor_msgs/msg/PointCloud2')
@dataclass
class PointCloud2(IdlStruct, typename=dds_name('sensor_msgs/msg/PointCloud2')):
    header: Header = field(default_factory=Header)
    height: uint32 = 0
    width: uint32 = 0
    fields: sequence[PointField] = field(default_factory=list)
    is_bigendian: bool = False
    point_step: uint32 = 0
    row_step: uint32 = 0
    data: sequence[uint8] = b''
    is_dense: bool = False


@ros_message('sensor_msgs/msg/CompressedImage')
@dataclass
class CompressedImage(IdlStruct, typename=dds_name('sensor_msgs/msg/CompressedImage')):
    header: Header = field(default_factory=Header)
    format: str = ''
    data: sequence[uint8] = b''


# -------------------------------------------------------------------------------------------- visualization_msgs
@ros_message('visualization_msgs/msg/UVCoordinate')
@dataclass
class UVCoordinate(IdlStruct, typename=dds_name('visualization_msgs/msg/UVCoordinate')):
    u: float32 = 0.0
    v: float32 = 0.0


@ros_message('visualization_msgs/msg/MeshFile')
@dataclass
class MeshFile(IdlStruct, typename=dds_name('visualization_msgs/msg/MeshFile')):
    filename: str = ''
    data: sequence[uint8] = b''


@ros_message('visualization_msgs/msg/Marker')
@dataclass
class Marker(IdlStruct, typename=dds_name('visualization_msgs/msg/Marker')):
    """The Humble/Iron/Jazzy layout (19 fields)."""

    header: Header = field(default_factory=Header)
    ns: str = ''
    id: int32 = 0
    type: int32 = 0
    action: int32 = 0
    pose: Pose = field(default_factory=Pose)
    scale: Vector3 = field(default_factory=Vector3)
    color: ColorRGBA = field(default_factory=ColorRGBA)
    lifetime: Duration = field(default_factory=Duration)
    frame_locked: bool = False
    points: sequence[Point] = field(default_factory=list)
    colors: sequence[ColorRGBA] = field(default_factory=list)
    texture_resource: str = ''
    texture: CompressedImage = field(default_factory=CompressedImage)
    uv_coordinates: sequence[UVCoordinate] = field(default_factory=list)
    text: str = ''
    mesh_resource: str = ''
    mesh_file: MeshFile = field(default_factory=MeshFile)
    mesh_use_embedded_materials: bool = False


@ros_message('visualization_msgs/msg/MarkerArray')
@dataclass
class MarkerArray(IdlStruct, typename=dds_name('visualization_msgs/msg/MarkerArray')):
    markers: sequence[Marker] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- diagnostic_msgs
@ros_message('diagnostic_msgs/msg/KeyValue')
@dataclass
class KeyValue(IdlStruct, typename=dds_name('diagnostic_msgs/msg/KeyValue')):
    key: str = ''
    value: str = ''


@ros_message('diagnostic_msgs/msg/DiagnosticStatus')
@dataclass
class DiagnosticStatus(IdlStruct, typename=dds_name('diagnostic_msgs/msg/DiagnosticStatus')):
    level: byte = 0
    name: str = ''
    message: str = ''
    hardware_id: str = ''
    values: sequence[KeyValue] = field(default_factory=list)


@ros_message('diagnostic_msgs/msg/DiagnosticArray')
@dataclass
class DiagnosticArray(IdlStruct, typename=dds_name('diagnostic_msgs/msg/DiagnosticArray')):
    header: Header = field(default_factory=Header)
    status: sequence[DiagnosticStatus] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------ tf2_msgs
@ros_message('tf2_msgs/msg/TFMessage')
@dataclass
class TFMessage(IdlStruct, typename=dds_name('tf2_msgs/msg/TFMessage')):
    transforms: sequence[TransformStamped] = field(default_factory=list)


# ------------------------------------------------------------------------------------ rmw_dds_common (the graph)
# The Gid is 24 bytes in Humble and 16 from Iron on (RMW_GID_STORAGE_SIZE): one class family per layout.
@dataclass
class GidHumble(IdlStruct, typename='rmw_dds_common::msg::dds_::Gid_'):
    data: array[uint8, 24] = field(default_factory=lambda: bytes(24))


@dataclass
class NodeEntitiesInfoHumble(IdlStruct, typename='rmw_dds_common::msg::dds_::NodeEntitiesInfo_'):
    node_namespace: bounded_str[256] = '/'
    node_name: bounded_str[256] = ''
    reader_gid_seq: sequence[GidHumble] = field(default_factory=list)
    writer_gid_seq: sequence[GidHumble] = field(default_factory=list)


@dataclass
class ParticipantEntitiesInfoHumble(IdlStruct, typename='rmw_dds_common::msg::dds_::ParticipantEntitiesInfo_'):
    gid: GidHumble = field(default_factory=GidHumble)
    node_entities_info_seq: sequence[NodeEntitiesInfoHumble] = field(default_factory=list)


@dataclass
class GidJazzy(IdlStruct, typename='rmw_dds_common::msg::dds_::Gid_'):
    data: array[uint8, 16] = field(default_factory=lambda: bytes(16))


@dataclass
class NodeEntitiesInfoJazzy(IdlStruct, typename='rmw_dds_common::msg::dds_::NodeEntitiesInfo_'):
    node_namespace: bounded_str[256] = '/'
    node_name: bounded_str[256] = ''
    reader_gid_seq: sequence[GidJazzy] = field(default_factory=list)
    writer_gid_seq: sequence[GidJazzy] = field(default_factory=list)


@dataclass
class ParticipantEntitiesInfoJazzy(IdlStruct, typename='rmw_dds_common::msg::dds_::ParticipantEntitiesInfo_'):
    gid: GidJazzy = field(default_factory=GidJazzy)
    node_entities_info_seq: sequence[NodeEntitiesInfoJazzy] = field(default_factory=list)


#: distro -> (ParticipantEntitiesInfo, NodeEntitiesInfo, Gid, gid size)
GRAPH_TYPES = {
    'humble': (ParticipantEntitiesInfoHumble, NodeEntitiesInfoHumble, GidHumble, 24),
    'jazzy': (ParticipantEntitiesInfoJazzy, NodeEntitiesInfoJazzy, GidJazzy, 16),
}
