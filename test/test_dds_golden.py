"""Golden bytes: every message the DDS transport publishes or subscribes serialises exactly as rosbags' ROS 2
CDR serializer does (Humble and Jazzy typestores), and rosbags' bytes deserialise back through our types."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip('cyclonedds')

from node_fixtures import StubModel, synthetic_cloud, table_from_camera, table_tf_message  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from keygrid_ros.messages import DiagnosticStatus, Header, Time  # noqa: E402
from keygrid_ros.perception import outputs  # noqa: E402
from keygrid_ros.perception.detector import Detector  # noqa: E402
from keygrid_ros.perception.pointcloud2 import create_cloud_xyz32, read_xyz  # noqa: E402
from keygrid_ros.ros.dds import types as T  # noqa: E402
from keygrid_ros.ros.dds.convert import to_dds  # noqa: E402
from keygrid_ros.ros.rosbag_io import to_typestore  # noqa: E402

STORES = {'humble': Stores.ROS2_HUMBLE, 'jazzy': Stores.ROS2_JAZZY}


@pytest.fixture(scope='module')
def messages():
    """One of each message the node sends or receives, built by the real code paths."""
    cloud = synthetic_cloud(1_700_000_000_123_456_789)
    detection = Detector(StubModel())(read_xyz(cloud, skip_nans=False), table_from_camera())
    header = outputs.output_header(cloud.header, 'table')
    failed = outputs.marker_array(header, type(detection)(reason='no garment', names=()))
    diagnostics = outputs.diagnostic_array(header, 'keygrid_detector: detection', DiagnosticStatus.WARN, 'why',
                                           outputs.detection_values(detection))
    small = create_cloud_xyz32(Header(stamp=Time(sec=-3, nanosec=5), frame_id='f'), np.arange(12.0).reshape(4, 3))
    return {
        'input cloud (point_step 16, organised)': cloud,
        'xyz32 cloud, negative stamp': small,
        'cropped cloud': outputs.cropped_cloud(header, detection),
        'keypoints PoseArray': outputs.keypoints_pose_array(header, detection),
        'garment PoseStamped': outputs.garment_pose_stamped(header, detection),
        'markers (spheres, text, line list, arrow)': outputs.marker_array(header, detection),
        'markers (DELETEALL only)': failed,
        'diagnostics': diagnostics,
        'keypoint TF': outputs.keypoint_transforms(header, detection),
        'input /tf': table_tf_message(5),
    }


@pytest.mark.parametrize('distro', sorted(STORES))
def test_every_message_is_byte_identical_to_rosbags(messages, distro):
    typestore = get_typestore(STORES[distro])
    for name, message in messages.items():
        ros_type = message.ROS_TYPE
        ours = bytes(to_dds(message).serialize())
        reference = bytes(typestore.serialize_cdr(to_typestore(message, typestore), ros_type))
        assert ours[:4] == b'\x00\x01\x00\x00', name  # CDR_LE, XCDR1 encapsulation
        assert ours == reference, name


@pytest.mark.parametrize('distro', sorted(STORES))
def test_rosbags_bytes_deserialise_through_our_types(messages, distro):
    typestore = get_typestore(STORES[distro])
    for name, message in messages.items():
        raw = bytes(typestore.serialize_cdr(to_typestore(message, typestore), message.ROS_TYPE))
        back = T.BY_ROS_TYPE[message.ROS_TYPE].deserialize(raw)
        assert bytes(back.serialize()) == raw, name
    cloud = T.PointCloud2.deserialize(bytes(to_dds(messages['input cloud (point_step 16, organised)']).serialize()))
    assert isinstance(cloud.data, bytes)  # one block, not a list of ints (the BytesMachine patch)
    assert np.array_equal(read_xyz(cloud, skip_nans=False),
                          read_xyz(messages['input cloud (point_step 16, organised)'], skip_nans=False),
                          equal_nan=True)


@pytest.mark.parametrize('distro', sorted(STORES))
def test_graph_message_matches_per_distro_gid_size(distro):
    participant_cls, node_cls, gid_cls, size = T.GRAPH_TYPES[distro]
    gids = [bytes(range(i, i + size)) for i in range(3)]
    ours = participant_cls(gid=gid_cls(data=gids[0]), node_entities_info_seq=[node_cls(
        node_namespace='/', node_name='keygrid_detector', reader_gid_seq=[gid_cls(data=gids[1])],
        writer_gid_seq=[gid_cls(data=gids[2])])])
    typestore = get_typestore(STORES[distro])
    Gid = typestore.types['rmw_dds_common/msg/Gid']
    Node = typestore.types['rmw_dds_common/msg/NodeEntitiesInfo']
    Participant = typestore.types['rmw_dds_common/msg/ParticipantEntitiesInfo']

    def gid(data):
        return Gid(data=np.frombuffer(data, np.uint8))

    reference = Participant(gid=gid(gids[0]), node_entities_info_seq=[Node(
        node_namespace='/', node_name='keygrid_detector', reader_gid_seq=[gid(gids[1])],
        writer_gid_seq=[gid(gids[2])])])
    assert bytes(ours.serialize()) == bytes(typestore.serialize_cdr(reference,
                                                                    'rmw_dds_common/msg/ParticipantEntitiesInfo'))


def test_type_names_follow_rmw_mangling():
    assert T.PointCloud2.__idl__.idl_transformed_typename == 'sensor_msgs::msg::dds_::PointCloud2_'
    assert T.MarkerArray.__idl__.idl_transformed_typename == 'visualization_msgs::msg::dds_::MarkerArray_'
    assert T.dds_name('tf2_msgs/msg/TFMessage') == 'tf2_msgs::msg::dds_::TFMessage_'
    assert len(T.Marker.__dataclass_fields__) == 19  # Humble+ layout


def test_discovery_config_mirrors_rmw_cyclonedds():
    from keygrid_ros.ros.dds.config import cyclone_config, discovery_fragment

    humble_local = ('<CycloneDDS><Domain><General><Interfaces><NetworkInterface address="127.0.0.1"/>'
                    '</Interfaces></General></Domain></CycloneDDS>')
    assert discovery_fragment('humble', {'ROS_LOCALHOST_ONLY': '1'}) == humble_local
    assert discovery_fragment('humble', {}) == ''
    auto = '<ParticipantIndex>auto</ParticipantIndex><MaxAutoParticipantIndex>32</MaxAutoParticipantIndex>'
    assert discovery_fragment('jazzy', {}) == f'<CycloneDDS><Domain><Discovery>{auto}</Discovery></Domain></CycloneDDS>'
    assert discovery_fragment('jazzy', {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST', 'ROS_STATIC_PEERS': 'a;b'}) == (
        '<CycloneDDS><Domain><General><AllowMulticast>false</AllowMulticast></General><Discovery>'
        f'{auto}<Peers><Peer address="localhost"/><Peer address="a"/><Peer address="b"/></Peers>'
        '</Discovery></Domain></CycloneDDS>')
    assert discovery_fragment('jazzy', {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SYSTEM_DEFAULT'}) == ''
    off = discovery_fragment('jazzy', {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'OFF'})
    assert '<ParticipantIndex>none</ParticipantIndex><Tag>ros_discovery_off_' in off
    # the user's CYCLONEDDS_URI comes last (wins), after our socket tuning
    config = cyclone_config('humble', {'ROS_LOCALHOST_ONLY': '1', 'CYCLONEDDS_URI': 'file:///x.xml'})
    parts = config.split(',')
    assert parts[0] == humble_local and 'SocketReceiveBufferSize' in parts[1] and parts[2] == 'file:///x.xml'


def test_qos_mapping():
    from cyclonedds.core import Policy

    from keygrid_ros.ros.dds.qos import ros_qos

    sensor = ros_qos('sensor_data', 5, reader=True)
    assert Policy.Reliability.BestEffort in sensor and Policy.History.KeepLast(5) in sensor
    assert Policy.DataRepresentation(use_cdrv0_representation=True) in sensor
    reliable = ros_qos('reliable', 10)
    assert Policy.Durability.Volatile in reliable and Policy.WriterDataLifecycle(autodispose=False) in reliable
    assert Policy.Durability.TransientLocal in ros_qos('tf_static', 1)
    assert Policy.IgnoreLocal.Participant in ros_qos('graph', 1, reader=True)


def test_plain_messages_and_dds_types_declare_the_same_fields_in_the_same_order():
    """messages.py (no DDS needed) and dds/types.py (wire widths) define each type twice, on purpose: this
    keeps the two in step, so a field added to one and not the other fails here, not on a robot."""
    import dataclasses
    import inspect

    from keygrid_ros import messages

    plain = {cls.ROS_TYPE: cls for _, cls in inspect.getmembers(messages, inspect.isclass)
             if dataclasses.is_dataclass(cls) and getattr(cls, 'ROS_TYPE', None)}
    assert len(plain) >= 20
    for ros_type, cls in plain.items():
        assert ros_type in T.BY_ROS_TYPE, ros_type
        ours = [f.name for f in dataclasses.fields(cls)]
        wire = [f.name for f in dataclasses.fields(T.BY_ROS_TYPE[ros_type])]
        assert ours == wire, ros_type
