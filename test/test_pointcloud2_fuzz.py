"""Fuzz the PointCloud2 codec against a slow, independent per-point ``struct`` decoder.

For random (often malformed) layouts the codec must either decode exactly what the reference decodes, or raise
PointCloud2Error exactly when the reference finds the message malformed; no other exception, no hang.
"""

from __future__ import annotations

import array
import math
import struct
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import numpy as np

from keygrid_ros.messages import Header, PointField
from keygrid_ros.perception.pointcloud2 import PointCloud2Error, create_cloud, read_points, read_xyz

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FMT = {1: 'b', 2: 'B', 3: 'h', 4: 'H', 5: 'i', 6: 'I', 7: 'f', 8: 'd'}
U32 = 2**32 - 1


class MalformedError(Exception):
    """The reference decoder's verdict."""


def _u32(v):
    if not isinstance(v, int) or not 0 <= v <= U32:
        raise MalformedError(v)
    return v


def reference_layout(msg):
    """Spec of a well-formed cloud, written independently of the codec: [(name, offset, code)], or MalformedError."""
    height, width = _u32(msg.height), _u32(msg.width)
    point_step, row_step = _u32(msg.point_step), _u32(msg.row_step)
    out, names = [], set()
    for i, f in enumerate(msg.fields):
        name = f.name or f'unnamed_field_{i}'
        offset, count = _u32(f.offset), _u32(f.count)
        if f.datatype not in FMT or count < 1:
            raise MalformedError('datatype/count')
        size = struct.calcsize(FMT[f.datatype])
        if offset + count * size > point_step:
            raise MalformedError('field beyond point_step')
        if len(out) + count > 65536:
            raise MalformedError('absurd count')
        for k in range(count):
            sub = name if count == 1 else f'{name}_{k}'
            if sub in names:
                raise MalformedError('duplicate')
            names.add(sub)
            out.append((sub, offset + k * size, f.datatype))
    if height * width and not out:
        raise MalformedError('no fields')
    if row_step < width * point_step:
        raise MalformedError('row_step')
    if len(bytes(msg.data)) < row_step * height:
        raise MalformedError('short data')
    return out


def reference_points(msg, layout):
    """Decode every point with struct.unpack_from: a list of {name: value} in row-major order."""
    data = bytes(msg.data)
    order = '>' if msg.is_bigendian else '<'
    points = []
    if msg.height * msg.width == 0:  # do not loop over 2**31 empty rows
        return points
    for r in range(msg.height):
        for c in range(msg.width):
            base = r * msg.row_step + c * msg.point_step
            points.append({n: struct.unpack_from(order + FMT[code], data, base + off)[0] for n, off, code in layout})
    return points


def same(a, b):
    a, b = float(a), float(b)
    return (math.isnan(a) and math.isnan(b)) or a == b


def f32(v):
    """What float32 makes of a value (inf when out of range), as read_xyz casts before testing finiteness."""
    with np.errstate(over='ignore'):
        return float(np.float32(v))


MUTATIONS = [
    ('data_delta', -1), ('data_delta', -5), ('row_step_delta', -1), ('point_step_delta', -1), ('datatype', 0),
    ('datatype', 9), ('count', 0), ('count', 3), ('count', 2**31), ('offset', -2), ('offset', 2**32),
    ('duplicate', None), ('width', 2**32 - 1), ('height', 2**31), ('width', 2**32), ('no_fields', None),
    ('height', None), ('width', 1.5), ('point_step', '8'), ('fields', 3), ('data', object()), ('data', [1, 999]),
]


@st.composite
def clouds(draw):
    """Mostly well-formed clouds (random layouts, padding, byte order, NaNs), about a third with one defect."""
    names = draw(st.lists(st.sampled_from(['x', 'y', 'z', 'rgb', 'i', 'x_0', '']), min_size=1, max_size=5,
                          unique=True))
    fields, end = [], 0
    for name in names:
        code = draw(st.integers(1, 8))
        size = struct.calcsize(FMT[code])
        offset = max(0, end + draw(st.integers(-4, 4)))  # gaps and overlaps are both legal
        count = draw(st.sampled_from([1, 1, 1, 2]))
        fields.append(SimpleNamespace(name=name, offset=offset, datatype=code, count=count))
        end = max(end, offset + count * size)
    if draw(st.booleans()):  # a plausible xyz block, so the fast paths get exercised
        code, size = draw(st.sampled_from([(7, 4), (7, 4), (8, 8), (3, 2)]))
        start, spread = draw(st.integers(0, 8)), draw(st.sampled_from([1, 1, 2]))
        fields = [f for f in fields if f.name not in 'xyz' or not f.name]
        for k, name in enumerate('xyz'):
            fields.insert(k, SimpleNamespace(name=name, offset=start + k * size * spread, datatype=code, count=1))
            end = max(end, start + (k * spread + 1) * size)
    point_step = end + draw(st.integers(0, 8))
    width, height = draw(st.integers(0, 5)), draw(st.integers(0, 4))
    row_step = width * point_step + draw(st.sampled_from([0, 0, 1, 7]))
    length = row_step * height + draw(st.sampled_from([0, 0, 0, 3]))
    mutation = draw(st.sampled_from(MUTATIONS)) if draw(st.integers(0, 2)) == 0 else None
    if mutation:
        what, value = mutation
        if what == 'data_delta':
            length = max(0, length + value)
        elif what == 'row_step_delta':
            row_step = max(0, row_step + value)
        elif what == 'point_step_delta':
            point_step = max(0, point_step + value)
        elif what in ('datatype', 'count', 'offset'):
            setattr(draw(st.sampled_from(fields)), what, value)
        elif what == 'duplicate':
            fields.append(SimpleNamespace(**vars(fields[0])))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    data = bytearray(rng.integers(0, 256, length, dtype=np.uint8).tobytes())
    big = draw(st.booleans())
    for pos in rng.integers(0, max(length, 1), draw(st.integers(0, 6))):  # plant NaNs, in both byte orders
        nan = draw(st.sampled_from([struct.pack('>f', math.nan), struct.pack('<f', math.nan),
                                    struct.pack('>d', math.nan), struct.pack('<d', math.nan)]))
        data[pos:pos + len(nan)] = nan
        del data[length:]
    wrap = draw(st.sampled_from([bytes, bytearray, lambda b: array.array('B', b),
                                 lambda b: np.frombuffer(bytes(b), np.uint8)]))
    msg = SimpleNamespace(height=height, width=width, fields=fields, is_bigendian=big, point_step=point_step,
                          row_step=row_step, data=wrap(bytes(data)), is_dense=draw(st.booleans()))
    if mutation and mutation[0] in ('width', 'height', 'point_step', 'fields', 'data'):
        setattr(msg, *mutation)
    elif mutation and mutation[0] == 'no_fields':
        msg.fields = []
    return msg


def reference_or_none(msg):
    try:
        return reference_layout(msg)
    except (MalformedError, TypeError, ValueError, AttributeError):
        return None


@SETTINGS
@given(clouds(), st.booleans())
def test_read_points_matches_reference_or_raises(msg, skip_nans):
    layout = reference_or_none(msg)
    try:
        got = read_points(msg, skip_nans=skip_nans)
    except PointCloud2Error:
        assert layout is None, 'codec rejected a cloud the reference decodes'
        return
    assert layout is not None, 'codec decoded a cloud the reference rejects'
    expected = reference_points(msg, layout)
    if skip_nans:
        floats = [n for n, _, code in layout if code >= 7]
        expected = [p for p in expected if not any(math.isnan(p[n]) for n in floats)]
    assert got.dtype.names == tuple(n for n, _, _ in layout)
    assert got.shape == (len(expected),)
    assert all(got.dtype.fields[n][0].isnative for n in got.dtype.names)
    for row, want in zip(got, expected):
        for name, value in want.items():
            assert same(row[name], value), (name, row[name], value)


@SETTINGS
@given(clouds(), st.booleans())
def test_read_xyz_matches_reference_or_raises(msg, organized):
    layout = reference_or_none(msg)
    has_xyz = layout is not None and {'x', 'y', 'z'} <= {n for n, _, _ in layout}
    n_points = None if layout is None else msg.height * msg.width
    try:
        got = read_xyz(msg, skip_nans=True, organized=organized)
    except PointCloud2Error:
        assert not has_xyz or layout is None
        return
    assert layout is not None and (has_xyz or n_points == 0)
    if n_points == 0:
        assert got.size == 0
        return
    rows = [[f32(p[k]) for k in 'xyz'] for p in reference_points(msg, layout)]
    if organized:
        assert got.shape == (msg.height, msg.width, 3)
        got = got.reshape(-1, 3)
    else:
        rows = [r for r in rows if all(math.isfinite(v) for v in r)]
    assert got.shape == (len(rows), 3) and got.dtype == np.float32
    for have, want in zip(got.tolist(), rows):
        assert all(same(a, b) for a, b in zip(have, want)), (have, want)


@st.composite
def packable(draw):
    """Valid field layouts (gaps allowed, no overlap) with random values, for create_cloud round trips."""
    offset, fields, cols = 0, [], []
    for i in range(draw(st.integers(1, 5))):
        offset += draw(st.integers(0, 3))
        code = draw(st.integers(1, 8))
        count = draw(st.sampled_from([1, 1, 2]))
        fields.append(PointField(name=f'f{i}', offset=offset, datatype=code, count=count))
        offset += count * struct.calcsize(FMT[code])
        cols += [code] * count
    point_step = offset + draw(st.integers(0, 5))
    shape = draw(st.sampled_from([(0,), (1,), (7,), (2, 3), (3, 1)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = np.zeros((*shape, len(cols)))
    for k, code in enumerate(cols):
        info = np.iinfo(np.dtype(FMT[code])) if code < 7 else None
        values[..., k] = rng.integers(info.min, info.max, size=shape, endpoint=True) if info else \
            rng.normal(size=shape) * 1e3
        if code >= 7 and draw(st.booleans()):
            values[..., k].flat[::3] = np.nan
    return fields, point_step, values, cols


@SETTINGS
@given(packable())
def test_create_cloud_round_trips_and_matches_struct_packing(case):
    fields, point_step, values, cols = case
    cloud = create_cloud(Header(), fields, values, point_step=point_step)
    shape = values.shape[:-1]
    assert (cloud.height, cloud.width) == ((1, shape[0]) if len(shape) == 1 else shape)
    assert cloud.point_step == point_step and cloud.row_step == point_step * cloud.width
    assert len(cloud.data) == cloud.row_step * cloud.height
    flat = values.reshape(-1, len(cols))
    layout = reference_layout(cloud)
    expected = bytearray(len(cloud.data))
    order = '>' if cloud.is_bigendian else '<'
    for i, row in enumerate(flat):
        for (_, off, code), v in zip(layout, row):
            v = float(np.float32(v)) if code == 7 else (float(v) if code == 8 else int(v))
            struct.pack_into(order + FMT[code], expected, i * point_step + off, v)
    assert cloud.data == bytes(expected)
    assert cloud.is_dense == bool(np.isfinite(flat[:, [k for k, c in enumerate(cols) if c >= 7]]).all())
    back = read_points(cloud)
    for k, name in enumerate(back.dtype.names):
        np.testing.assert_array_equal(back[name].astype(np.float64), flat[:, k].astype(np.dtype(FMT[cols[k]])))
