"""PointCloud2 codec: round trips, layouts, NaN semantics, zero copy, validation, and a real Kinect cloud."""

from __future__ import annotations

import array
import dataclasses
from pathlib import Path
import struct
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from keygrid_ros.messages import Header, PointCloud2, PointField, Time, from_msg
from keygrid_ros.perception.pointcloud2 import (
    PointCloud2Error,
    create_cloud,
    create_cloud_xyz32,
    dtype_from_fields,
    fields_from_dtype,
    pack_rgb,
    read_points,
    read_points_numpy,
    read_xyz,
    unpack_rgb,
    validate_cloud,
)

from conftest import require

F32 = PointField.FLOAT32
HEADER = Header(stamp=Time(sec=3, nanosec=5), frame_id='cam')


def xyz_fields(datatype: int = F32, start: int = 0) -> list[PointField]:
    size = 4 if datatype == F32 else 8
    return [PointField(n, start + i * size, datatype, 1) for i, n in enumerate('xyz')]


def manual_cloud(values: np.ndarray, fields: list[PointField], point_step: int, height: int, width: int,
                 row_pad: int = 0, big: bool = False, data_type=bytes, is_dense: bool = False) -> PointCloud2:
    """Pack ``values`` ((H*W, k), one column per field) by hand with struct, so tests do not trust the encoder."""
    codes = {1: 'b', 2: 'B', 3: 'h', 4: 'H', 5: 'i', 6: 'I', 7: 'f', 8: 'd'}
    order = '>' if big else '<'
    row_step = width * point_step + row_pad
    buf = bytearray(row_step * height)
    for i, row in enumerate(values):
        r, c = divmod(i, width)
        for f, v in zip(fields, row):
            v = float(v) if f.datatype >= 7 else int(v)
            struct.pack_into(order + codes[f.datatype], buf, r * row_step + c * point_step + f.offset, v)
    return PointCloud2(header=HEADER, height=height, width=width, fields=fields, is_bigendian=big,
                       point_step=point_step, row_step=row_step, data=data_type(buf), is_dense=is_dense)


# -------------------------------------------------------------------------------------------- messages basics
def test_time_ns_round_trip():
    for ns in (0, 1, 1_700_000_000_123_456_789, -1, -1_500_000_000):
        t = Time.from_ns(ns)
        assert 0 <= t.nanosec < 1_000_000_000
        assert t.to_ns() == ns
    assert Time.from_ns(-1) == Time(sec=-1, nanosec=999_999_999)


def test_point_field_constants_match_sensor_msgs():
    assert (PointField.INT8, PointField.UINT8, PointField.INT16, PointField.UINT16) == (1, 2, 3, 4)
    assert (PointField.INT32, PointField.UINT32, PointField.FLOAT32, PointField.FLOAT64) == (5, 6, 7, 8)
    assert [f.name for f in dataclasses.fields(PointField)] == ['name', 'offset', 'datatype', 'count']


# ------------------------------------------------------------------------------------------------ round trips
def test_xyz32_unorganised_round_trip(rng):
    pts = rng.normal(size=(50, 3)).astype(np.float32)
    cloud = create_cloud_xyz32(HEADER, pts)
    assert (cloud.height, cloud.width, cloud.point_step, cloud.row_step) == (1, 50, 12, 600)
    assert isinstance(cloud.data, bytes) and len(cloud.data) == 600
    assert cloud.is_bigendian == (sys.byteorder == 'big') and cloud.is_dense
    assert cloud.header is HEADER
    np.testing.assert_array_equal(read_xyz(cloud, skip_nans=False), pts)
    structured = read_points(cloud)
    assert structured.dtype.names == ('x', 'y', 'z') and structured.shape == (50,)
    np.testing.assert_array_equal(structured['y'], pts[:, 1])


def test_xyz32_organised_round_trip_keeps_rows_and_nans(rng):
    grid = rng.normal(size=(4, 7, 3)).astype(np.float32)  # H != W catches a (width, height) reshape
    grid[1, 2] = np.nan
    cloud = create_cloud_xyz32(HEADER, grid)
    assert (cloud.height, cloud.width, cloud.row_step) == (4, 7, 84)
    assert not cloud.is_dense
    np.testing.assert_array_equal(read_xyz(cloud, organized=True), grid)
    organised = read_points(cloud, reshape_organized_cloud=True)
    assert organised.shape == (4, 7)
    np.testing.assert_array_equal(organised['x'], grid[..., 0])
    flat = read_xyz(cloud)  # default skip_nans drops the NaN pixel
    assert flat.shape == (27, 3)
    np.testing.assert_array_equal(flat, np.delete(grid.reshape(-1, 3), 9, axis=0))


def test_is_dense_reflects_nan_and_inf():
    assert create_cloud_xyz32(HEADER, np.zeros((3, 3))).is_dense
    assert not create_cloud_xyz32(HEADER, [[0, 0, np.inf]]).is_dense
    assert not create_cloud_xyz32(HEADER, [[np.nan, 0, 0]]).is_dense
    fields = [*xyz_fields(), PointField('intensity', 12, F32, 1)]
    assert not create_cloud(HEADER, fields, [(0, 0, 0, np.nan)]).is_dense
    int_fields = [*xyz_fields(), PointField('ring', 12, PointField.UINT16, 1)]
    assert create_cloud(HEADER, int_fields, [(0, 0, 0, 7)]).is_dense


def test_create_cloud_from_tuples_matches_hand_packing():
    pts = [(0.0, 0.1, 0.2), (1.0, 1.1, 1.2), (4.0, np.nan, 4.2)]
    cloud = create_cloud(HEADER, xyz_fields(), pts)
    expected = manual_cloud(np.array(pts), xyz_fields(), 12, 1, 3)
    assert cloud.data == expected.data
    assert (cloud.point_step, cloud.row_step, cloud.height, cloud.width) == (12, 36, 1, 3)
    assert create_cloud(HEADER, xyz_fields(), []).width == 0


def test_create_cloud_structured_rgb_intensity_and_point_step_padding(rng):
    n = 20
    rgb = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    fields = [*xyz_fields(), PointField('rgb', 16, F32, 1), PointField('intensity', 20, PointField.UINT16, 1)]
    points = np.zeros(n, dtype=[('x', 'f4'), ('y', 'f4'), ('z', 'f4'), ('rgb', 'f4'), ('intensity', 'u2')])
    for k in 'xyz':
        points[k] = rng.normal(size=n)
    points['rgb'] = pack_rgb(rgb)
    points['intensity'] = np.arange(n)
    cloud = create_cloud(HEADER, fields, points, point_step=32)
    assert (cloud.point_step, cloud.row_step) == (32, 32 * n)
    raw = np.frombuffer(cloud.data, np.uint8).reshape(n, 32)
    assert not raw[:, 12:16].any() and not raw[:, 22:].any()  # padding bytes are zero, not garbage
    back = read_points(cloud)
    assert back.dtype.itemsize == 32 and back.dtype.names == ('x', 'y', 'z', 'rgb', 'intensity')
    np.testing.assert_array_equal(unpack_rgb(back['rgb']), rgb)
    np.testing.assert_array_equal(back['intensity'], np.arange(n))
    xyz = read_xyz(cloud, skip_nans=False)
    np.testing.assert_array_equal(xyz, np.stack([points['x'], points['y'], points['z']], 1))
    assert np.shares_memory(xyz, np.frombuffer(cloud.data, np.uint8))


def test_create_cloud_without_fields_uses_structured_dtype():
    points = np.zeros((2, 3), dtype=[('x', '<f8'), ('y', '<f8'), ('z', '<f8'), ('label', '<i4')])
    points['z'] = 2.5
    points['label'] = 9
    cloud = create_cloud(HEADER, None, points)
    assert (cloud.height, cloud.width, cloud.point_step) == (2, 3, 28)
    assert [f.datatype for f in cloud.fields] == [8, 8, 8, 5]
    np.testing.assert_array_equal(read_xyz(cloud, organized=True, dtype=np.float64)[..., 2], 2.5)
    assert (read_points(cloud, ['label'])['label'] == 9).all()


def test_count_greater_than_one_expands_like_sensor_msgs_py():
    pts = np.arange(12, dtype=np.float32).reshape(4, 3)
    fields = [PointField('v', 0, F32, 3)]
    cloud = create_cloud(HEADER, fields, pts)
    out = read_points(cloud)
    assert out.dtype.names == ('v_0', 'v_1', 'v_2')
    np.testing.assert_array_equal(read_points_numpy(cloud), pts)
    sub = np.zeros(4, dtype=[('v', 'f4', (3,))])
    sub['v'] = pts
    assert create_cloud(HEADER, fields, sub).data == cloud.data
    assert fields_from_dtype(sub.dtype) == [PointField('v', 0, F32, 3)]


def test_empty_field_name_gets_placeholder():
    cloud = manual_cloud(np.ones((2, 2)), [PointField('', 0, F32, 1), PointField('b', 4, F32, 1)], 8, 1, 2)
    assert read_points(cloud).dtype.names == ('unnamed_field_0', 'b')


# ----------------------------------------------------------------------------------------------- NaN semantics
def test_skip_nans_only_looks_at_selected_fields():
    fields = [*xyz_fields(), PointField('intensity', 12, F32, 1), PointField('ring', 16, PointField.UINT8, 1)]
    vals = np.array([[0, 0, 1, 1, 0], [0, np.nan, 1, 1, 1], [0, 0, 1, np.nan, 2], [1, 1, 1, 1, 3]])
    cloud = manual_cloud(vals, fields, 20, 1, 4)
    assert read_points(cloud, skip_nans=True)['ring'].tolist() == [0, 3]
    assert read_points(cloud, ['x', 'y', 'z'], skip_nans=True).shape == (3,)
    assert read_points(cloud, ['intensity', 'ring'], skip_nans=True)['ring'].tolist() == [0, 1, 3]
    assert read_points(cloud, ['ring'], skip_nans=True).shape == (4,)  # integer fields cannot be NaN


def test_skip_nans_does_not_trust_is_dense():
    cloud = manual_cloud(np.array([[0, 0, np.nan], [1, 2, 3]]), xyz_fields(), 12, 1, 2, is_dense=True)
    assert read_points(cloud, skip_nans=True).shape == (1,)
    assert read_xyz(cloud).shape == (1, 3)


def test_read_xyz_skip_drops_inf_but_read_points_keeps_it():
    cloud = create_cloud_xyz32(HEADER, [[0, 0, np.inf], [1, 2, 3]])
    assert read_xyz(cloud).tolist() == [[1, 2, 3]]
    assert read_points(cloud, skip_nans=True).shape == (2,)


def test_organised_read_xyz_keeps_nans_even_with_skip_nans():
    grid = np.full((2, 3, 3), np.nan, np.float32)
    out = read_xyz(create_cloud_xyz32(HEADER, grid), skip_nans=True, organized=True)
    assert out.shape == (2, 3, 3) and np.isnan(out).all()


def test_reshape_with_dropping_is_refused():
    cloud = create_cloud_xyz32(HEADER, np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match='reshape_organized_cloud'):
        read_points(cloud, skip_nans=True, reshape_organized_cloud=True)
    assert read_points(create_cloud_xyz32(HEADER, np.zeros((3, 3))), reshape_organized_cloud=True).shape == (3,)


def test_uvs_index_the_whole_cloud_before_nan_skipping():
    grid = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    grid[0, 1, 0] = np.nan
    cloud = create_cloud_xyz32(HEADER, grid)
    assert read_points(cloud, uvs=[5, 0])['x'].tolist() == [15.0, 0.0]
    assert read_points(cloud, uvs=np.array([[2, 1], [0, 0]]))['x'].tolist() == [15.0, 0.0]  # (u, v) pairs
    assert read_points(cloud, uvs=[1, 5], skip_nans=True)['x'].tolist() == [15.0]
    with pytest.raises(PointCloud2Error, match='outside'):
        read_points(cloud, uvs=[6])
    with pytest.raises(PointCloud2Error, match='outside'):
        read_points(cloud, uvs=[(3, 0)])


# ------------------------------------------------------------------------------------------------ layouts
def test_row_padding_is_honoured(rng):
    vals = rng.normal(size=(6, 3))
    cloud = manual_cloud(vals, xyz_fields(), 16, 2, 3, row_pad=10)
    assert cloud.row_step == 58
    np.testing.assert_allclose(read_xyz(cloud, skip_nans=False), vals.astype(np.float32))
    organised = read_xyz(cloud, organized=True)
    np.testing.assert_allclose(organised, vals.astype(np.float32).reshape(2, 3, 3))
    assert np.shares_memory(organised, np.frombuffer(cloud.data, np.uint8))
    np.testing.assert_allclose(read_points(cloud, reshape_organized_cloud=True)['z'], vals[:, 2].reshape(2, 3))


def test_big_endian_input_is_swapped_to_native(rng):
    vals = rng.normal(size=(5, 4))
    vals[:, 3] = np.arange(5)
    fields = [*xyz_fields(PointField.FLOAT64), PointField('t', 24, PointField.INT32, 1)]
    cloud = manual_cloud(vals, fields, 32, 1, 5, big=True)
    out = read_points(cloud)
    assert all(out.dtype.fields[n][0].isnative for n in out.dtype.names)
    np.testing.assert_array_equal(out['x'], vals[:, 0])
    np.testing.assert_array_equal(out['t'], np.arange(5))
    np.testing.assert_array_equal(read_xyz(cloud, skip_nans=False, dtype=np.float64), vals[:, :3])
    np.testing.assert_array_equal(read_xyz(cloud, skip_nans=False), vals[:, :3].astype(np.float32))
    assert read_xyz(cloud).dtype == np.float32 and read_xyz(cloud).dtype.isnative
    assert bytes(cloud.data) == bytes(manual_cloud(vals, fields, 32, 1, 5, big=True).data)  # input not mutated


def test_float64_xyz_zero_copy_and_cast(rng):
    vals = rng.normal(size=(8, 3))
    cloud = manual_cloud(vals, xyz_fields(PointField.FLOAT64), 24, 1, 8)
    out64 = read_xyz(cloud, skip_nans=False, dtype=np.float64)
    np.testing.assert_array_equal(out64, vals)
    assert np.shares_memory(out64, np.frombuffer(cloud.data, np.uint8))
    np.testing.assert_array_equal(read_xyz(cloud, skip_nans=False), vals.astype(np.float32))


def test_scattered_and_mixed_type_xyz_fields(rng):
    vals = rng.normal(size=(4, 3))
    fields = [PointField('z', 0, F32, 1), PointField('x', 8, PointField.FLOAT64, 1), PointField('y', 16, F32, 1)]
    cloud = manual_cloud(vals[:, [2, 0, 1]], fields, 20, 2, 2)
    np.testing.assert_allclose(read_xyz(cloud, organized=True), vals.reshape(2, 2, 3).astype(np.float32))
    ints = manual_cloud(np.array([[1, 2, 3]]), [PointField(n, 2 * i, PointField.INT16, 1) for i, n in
                                                enumerate('xyz')], 6, 1, 1)
    assert read_xyz(ints).tolist() == [[1.0, 2.0, 3.0]]


@pytest.mark.parametrize('data_type', [bytes, bytearray, memoryview, lambda b: array.array('B', b),
                                       lambda b: np.frombuffer(b, np.uint8).copy()])
def test_zero_copy_for_every_buffer_type(data_type, rng):
    vals = rng.normal(size=(6, 3))
    cloud = manual_cloud(vals, xyz_fields(), 12, 2, 3, data_type=data_type)
    base = np.frombuffer(cloud.data, np.uint8)
    xyz = read_xyz(cloud, skip_nans=False)
    structured = read_points(cloud)
    np.testing.assert_allclose(xyz, vals.astype(np.float32))
    assert np.shares_memory(xyz, base) and np.shares_memory(structured, base)
    owned = read_xyz(cloud, skip_nans=False, copy=True)
    assert not np.shares_memory(owned, base)
    np.testing.assert_array_equal(owned, xyz)


def test_list_data_and_duck_typed_message():
    data = list(struct.pack('<3f', 1, 2, 3))
    msg = SimpleNamespace(height=1, width=1, fields=[SimpleNamespace(name=n, offset=4 * i, datatype=7, count=1)
                                                     for i, n in enumerate('xyz')],
                          is_bigendian=False, point_step=12, row_step=12, data=data, is_dense=True)
    assert read_xyz(msg).tolist() == [[1, 2, 3]]
    ours = from_msg(PointCloud2, msg)
    assert isinstance(ours.fields[0], PointField) and ours.fields[2].offset == 8
    assert read_xyz(ours).tolist() == [[1, 2, 3]]


def test_dtype_from_fields():
    dt = dtype_from_fields(xyz_fields(), point_step=16)
    assert dt.itemsize == 16 and dt.fields['z'][1] == 8
    assert dtype_from_fields(xyz_fields()).itemsize == 12
    assert dtype_from_fields(xyz_fields(), is_bigendian=True).fields['x'][0] == np.dtype('>f4')


# ---------------------------------------------------------------------------------------------- validation
def _good(**changes):
    cloud = manual_cloud(np.zeros((4, 3)), xyz_fields(), 12, 2, 2)
    for k, v in changes.items():
        setattr(cloud, k, v)
    return cloud


@pytest.mark.parametrize(
    ('changes', 'message'),
    [
        ({'data': b'\0' * 47}, r'data holds 47 bytes but row_step \* height = 24 \* 2 = 48'),
        ({'row_step': 20}, r'row_step 20 is smaller than width \* point_step = 2 \* 12 = 24'),
        ({'point_step': 8, 'row_step': 16, 'data': b'\0' * 32}, "field 'z'.*ends at byte 12, beyond point_step 8"),
        ({'fields': [PointField('x', 0, 9, 1)]}, "field 'x' has unknown datatype code 9"),
        ({'fields': [PointField('x', 0, 0, 1)]}, 'unknown datatype code 0'),
        ({'fields': [PointField('x', 0, F32, 0)]}, "field 'x' has count 0"),
        ({'fields': [PointField('x', 0, F32, 1), PointField('x', 4, F32, 1)]}, "duplicate field name 'x'"),
        ({'fields': [PointField('v', 0, F32, 2), PointField('v_1', 8, F32, 1)]}, "duplicate field name 'v_1'"),
        ({'fields': [PointField('x', -4, F32, 1)]}, 'offset=-4 is outside the uint32 range'),
        ({'fields': []}, 'cloud has 4 points but no fields'),
        ({'width': 2**32}, r'width=4294967296 is outside the uint32 range'),
        ({'height': -1}, r'height=-1 is outside'),
        ({'width': 2**32 - 1, 'height': 2**32 - 1}, 'row_step 24 is smaller'),
        ({'width': 2**20, 'height': 2**20, 'row_step': 12 * 2**20}, r'data holds 48 bytes but .* are expected'),
        ({'height': '2'}, 'height must be an integer'),
        ({'data': None}, 'data must be a byte buffer'),
        ({'data': [1, 2, 300]}, 'data must be a byte buffer'),
        ({'fields': [PointField('x', 0, F32, 2**31)]}, 'more than 65536 values per point'),
    ],
)
def test_malformed_clouds_name_the_problem(changes, message):
    with pytest.raises(PointCloud2Error, match=message):
        read_points(_good(**changes))
    with pytest.raises(PointCloud2Error):
        validate_cloud(_good(**changes))


def test_missing_xyz_and_unknown_field_names():
    cloud = manual_cloud(np.zeros((1, 2)), [PointField('x', 0, F32, 1), PointField('y', 4, F32, 1)], 8, 1, 1)
    with pytest.raises(PointCloud2Error, match="no 'z' field"):
        read_xyz(cloud)
    with pytest.raises(PointCloud2Error, match="no field 'rgb'"):
        read_points(cloud, ['x', 'rgb'])
    with pytest.raises(PointCloud2Error, match="no 'height' attribute"):
        read_xyz(SimpleNamespace(width=1))


def test_longer_data_is_accepted_and_tail_ignored():
    cloud = _good(data=b'\0' * 48 + b'junk')
    assert read_xyz(cloud, skip_nans=False).shape == (4, 3)


def test_empty_clouds():
    assert read_xyz(PointCloud2()).shape == (0, 3)
    assert read_points(PointCloud2()).shape == (0,)
    empty = create_cloud_xyz32(HEADER, np.zeros((0, 3)))
    assert (empty.width, empty.height, empty.data) == (0, 1, b'')
    assert read_xyz(empty, organized=True).shape == (1, 0, 3)
    assert read_xyz(_good(height=0, data=b''), organized=True).shape == (0, 2, 3)


def test_rgb_pack_unpack_round_trip():
    rgb = np.array([[255, 0, 10], [1, 2, 3]], np.uint8)
    packed = pack_rgb(rgb)
    assert packed.dtype == np.float32
    assert packed.view(np.uint32).tolist() == [0xFF000A, 0x010203]
    np.testing.assert_array_equal(unpack_rgb(packed), rgb)
    np.testing.assert_array_equal(unpack_rgb(packed.view(np.uint32) | 0xFF000000), rgb)  # rgba alpha ignored


# ------------------------------------------------------------------------------------------------- real data
def _read_bag_message(bag: Path):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        conn, _, raw = next(iter(reader.messages()))
        return reader.deserialize(raw, conn.msgtype)


def test_real_kinect_cloud_from_moveit_bag(shared_data):
    msg = _read_bag_message(require(shared_data / 'moveit' / 'perception_tutorial_ros2_mcap'))
    assert (msg.height, msg.width, msg.point_step) == (480, 640, 32)
    assert [f.name for f in msg.fields] == ['x', 'y', 'z', 'rgb']
    organised = read_xyz(msg, organized=True)
    assert organised.shape == (480, 640, 3) and np.shares_memory(organised, msg.data)
    flat = read_xyz(msg)
    assert 230_000 < len(flat) < 236_000 and np.isfinite(flat).all()
    # Optical frame: z forward and positive; a table scene within a few metres.
    assert (flat[:, 2] > 0.3).all() and np.median(flat[:, 2]) < 3.0
    # Same set of points through the structured path.
    structured = read_points(msg, ['x', 'y', 'z'], skip_nans=True)
    assert len(structured) == len(flat)
    np.testing.assert_array_equal(structured['z'], flat[:, 2])
    # Organised structure: valid pixels project back to their own column (x/z grows with u).
    u = np.arange(640)
    row = organised[240]
    ok = np.isfinite(row[:, 2])
    slope = np.polyfit(u[ok], row[ok, 0] / row[ok, 2], 1)[0]
    assert 1 / 700 < slope < 1 / 400  # 1 / focal length of a Kinect (about 525 px)
    colours = unpack_rgb(read_points(msg, ['rgb'])['rgb'])
    assert colours.shape == (307200, 3) and colours.std() > 10
    ours = from_msg(PointCloud2, msg)
    assert ours.header.frame_id == 'camera_rgb_optical_frame' and ours.header.stamp.sec == msg.header.stamp.sec
    assert np.shares_memory(read_xyz(ours, skip_nans=False), msg.data)
