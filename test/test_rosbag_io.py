"""BagWriter: our dataclasses -> rosbags typestore messages -> mcap / sqlite3 bags that read back identically."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore
from ruamel.yaml import YAML

from keygrid_ros.messages import (
    DiagnosticArray,
    DiagnosticStatus,
    Header,
    KeyValue,
    Marker,
    MarkerArray,
    Point,
    PointField,
    Pose,
    PoseArray,
    Time,
    Vector3,
)
from keygrid_ros.perception.pointcloud2 import create_cloud, create_cloud_xyz32, pack_rgb, read_xyz
from keygrid_ros.ros.rosbag_io import BagWriteError, BagWriter, static_transform, to_typestore

from conftest import require

HUMBLE = get_typestore(Stores.ROS2_HUMBLE)


def _read_all(path: Path) -> list[tuple[str, int, bytes, object]]:
    with AnyReader([path], default_typestore=HUMBLE) as reader:
        return [(c.topic, t, raw, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]


def _organised_cloud(rng) -> object:
    grid = rng.normal(size=(6, 8, 3)).astype(np.float32)
    grid[2, 3] = np.nan
    packed = np.zeros((6, 8), [('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('rgb', '<f4')])
    for k, name in enumerate('xyz'):
        packed[name] = grid[..., k]
    packed['rgb'] = pack_rgb(rng.integers(0, 256, (6, 8, 3)))
    fields = [PointField(n, 4 * i, PointField.FLOAT32, 1) for i, n in enumerate(['x', 'y', 'z', 'rgb'])]
    return create_cloud(Header(stamp=Time(sec=42, nanosec=7), frame_id='camera_depth_optical_frame'), fields,
                        packed, point_step=32)


@pytest.mark.parametrize(('storage', 'suffix'), [('mcap', '.mcap'), ('sqlite3', '.db3')])
def test_pointcloud2_round_trip_bytes_and_xyz(tmp_path, rng, storage, suffix):
    cloud = _organised_cloud(rng)
    path = tmp_path / 'bag'
    with BagWriter(path, storage=storage) as bag:
        bag.write('/camera/depth/points', cloud)
        bag.write('/camera/depth/points', cloud, timestamp_ns=43 * 10**9)
    assert (path / f'bag{suffix}').exists()
    metadata = YAML(typ='safe').load((path / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert metadata['version'] == 8 and metadata['storage_identifier'] == storage
    with Reader(path) as reader:  # the plain rosbag2 reader, not only AnyReader
        assert reader.message_count == 2
    messages = _read_all(path)
    assert [t for _, t, _, _ in messages] == [42 * 10**9 + 7, 43 * 10**9]  # default timestamp: header.stamp
    _, _, raw, msg = messages[0]
    assert raw == HUMBLE.serialize_cdr(to_typestore(cloud, HUMBLE), 'sensor_msgs/msg/PointCloud2')
    assert msg.data.tobytes() == cloud.data
    assert (msg.height, msg.width, msg.point_step, msg.row_step, msg.is_dense) == (6, 8, 32, 256, False)
    assert msg.header.frame_id == 'camera_depth_optical_frame' and msg.header.stamp.nanosec == 7
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        (f.name, f.offset, f.datatype, f.count) for f in cloud.fields]
    np.testing.assert_array_equal(read_xyz(msg, organized=True), read_xyz(cloud, organized=True))


def test_full_size_xyz32_cloud(tmp_path, rng):
    """The virtual depth camera's path: (480, 640, 3) -> create_cloud_xyz32 -> BagWriter."""
    points = rng.normal(size=(480, 640, 3)).astype(np.float32)
    cloud = create_cloud_xyz32(Header(stamp=Time(sec=1), frame_id='cam'), points)
    with BagWriter(tmp_path / 'bag') as bag:
        bag.write('/points', cloud)
    (_, _, _, msg), = _read_all(tmp_path / 'bag')
    np.testing.assert_array_equal(read_xyz(msg, organized=True), points)


def test_output_messages_round_trip(tmp_path):
    markers = MarkerArray(markers=[
        Marker(action=Marker.DELETEALL),
        Marker(header=Header(frame_id='cam'), ns='keypoints', id=4, type=Marker.SPHERE,
               pose=Pose(position=Point(1.0, 2.0, 3.0)), scale=Vector3(0.02, 0.02, 0.02),
               points=[Point(0, 0, 1), Point(0, 1, 0)]),
    ])
    poses = PoseArray(header=Header(stamp=Time(sec=9), frame_id='cam'), poses=[Pose(position=Point(z=0.5))] * 3)
    diagnostics = DiagnosticArray(status=[DiagnosticStatus(level=b'\x01', name='keygrid: detector', message='slow',
                                                           values=[KeyValue('ms', '41.0')])])
    with BagWriter(tmp_path / 'bag') as bag:
        bag.write('/markers', markers, timestamp_ns=1)
        bag.write('/keypoints', poses)
        bag.write('/diagnostics', diagnostics, timestamp_ns=3)
    read = {topic: msg for topic, _, _, msg in _read_all(tmp_path / 'bag')}
    assert read['/markers'].markers[0].action == 3
    kept = read['/markers'].markers[1]
    assert (kept.ns, kept.id, kept.type, kept.pose.position.y, kept.scale.x) == ('keypoints', 4, 2, 2.0, 0.02)
    assert [p.y for p in kept.points] == [0.0, 1.0]
    assert kept.pose.orientation.w == 1.0  # our defaults are ROS defaults
    assert [p.position.z for p in read['/keypoints'].poses] == [0.5] * 3
    status = read['/diagnostics'].status[0]
    assert (status.level, status.name, status.values[0].value) == (1, 'keygrid: detector', '41.0')


def test_generic_dataclass_by_class_name_and_defaults(tmp_path):
    @dataclass
    class Vector3Stamped:  # not in keygrid_ros.messages: resolved through the typestore by name
        header: Header = field(default_factory=Header)
        vector: Vector3 = field(default_factory=Vector3)

    @dataclass
    class CameraInfo:  # only some fields: the rest get ROS defaults (fixed arrays zero-filled)
        header: Header = field(default_factory=Header)
        width: int = 0
        height: int = 0
        k: tuple = ()

    k = (570.3, 0, 319.5, 0, 570.3, 239.5, 0, 0, 1)
    with BagWriter(tmp_path / 'bag') as bag:
        bag.write('/v', Vector3Stamped(Header(stamp=Time(sec=2)), Vector3(1, 2, 3)))
        bag.write('/info', CameraInfo(Header(stamp=Time(sec=3)), 640, 480, k))
    read = {topic: msg for topic, _, _, msg in _read_all(tmp_path / 'bag')}
    assert read['/v'].vector.z == 3.0
    info = read['/info']
    np.testing.assert_array_equal(info.k, k)
    assert (info.width, info.distortion_model, info.d.size, info.p.shape) == (640, '', 0, (12,))


def test_errors(tmp_path):
    @dataclass
    class Nonexistent:
        value: int = 0

    with BagWriter(tmp_path / 'bag') as bag:
        with pytest.raises(BagWriteError, match='cannot tell the ROS type of Nonexistent'):
            bag.write('/x', Nonexistent(), timestamp_ns=0)
        with pytest.raises(BagWriteError, match='has no header stamp; pass timestamp_ns'):
            bag.write('/markers', MarkerArray())
        bag.write('/p', PoseArray())
        with pytest.raises(BagWriteError, match="'/p' already carries geometry_msgs/msg/PoseArray"):
            bag.write('/p', MarkerArray(), timestamp_ns=0)
        with pytest.raises(BagWriteError, match='CameraInfo.k: cannot convert'):
            bag.write('/info', _BadInfo(), timestamp_ns=0)
    with pytest.raises(FileExistsError, match='already exists'):
        BagWriter(tmp_path / 'bag').open()
    with pytest.raises(ValueError, match='storage must be one of'):
        BagWriter(tmp_path / 'other', storage='rosbag1')


@dataclass
class _BadInfo:
    ROS_TYPE = 'sensor_msgs/msg/CameraInfo'
    header: Header = field(default_factory=Header)
    k: tuple = (1.0, 2.0)  # a fixed float64[9] cannot take two values


def test_static_transforms_are_latched(tmp_path):
    with BagWriter(tmp_path / 'bag', storage='sqlite3') as bag:
        bag.write_static_transforms([static_transform('world', 'camera_link', (0, 0, 1.2), stamp_ns=10),
                                     static_transform('camera_link', 'camera_depth_optical_frame',
                                                      rotation_xyzw=(-0.5, 0.5, -0.5, 0.5), stamp_ns=10)])
    with Reader(tmp_path / 'bag') as reader:
        (connection,) = reader.connections
        (qos,) = connection.ext.offered_qos_profiles
        assert qos.durability.name == 'TRANSIENT_LOCAL' and qos.reliability.name == 'RELIABLE'
    (_, timestamp, _, msg), = _read_all(tmp_path / 'bag')
    assert timestamp == 10 and [t.child_frame_id for t in msg.transforms] == ['camera_link',
                                                                              'camera_depth_optical_frame']
    assert msg.transforms[1].transform.rotation.w == 0.5


def test_rosbags_messages_and_raw_cdr_pass_through(tmp_path, shared_data):
    source = require(shared_data / 'clopema-research-only' / 'clopema_garment_on_table_points_mcap')
    with AnyReader([source], default_typestore=HUMBLE) as reader:
        connection, timestamp, raw = next(iter(reader.messages()))
        original = reader.deserialize(raw, connection.msgtype)
    with BagWriter(tmp_path / 'bag') as bag:
        bag.write_cdr('/raw', connection.msgtype, raw, timestamp)
        bag.write('/typed', original, timestamp_ns=timestamp)
    copied = {topic: (t, data) for topic, t, data, _ in _read_all(tmp_path / 'bag')}
    assert copied['/raw'] == (timestamp, raw)
    assert copied['/typed'][1] == raw  # re-serialising a rosbags message gives the recorded bytes
