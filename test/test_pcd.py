"""PCD reader/writer and the LZF decompressor, on PCL's real table-top clouds and on synthetic files."""

from __future__ import annotations

from pathlib import Path
import struct

import numpy as np
import pytest

from keygrid_ros.perception.pcd import LzfError, PcdError, lzf_decompress, read_pcd, read_pcd_xyz, write_pcd

from conftest import require

KINECT_FOCAL = 525.0


def lzf_compress(data: bytes) -> bytes:
    """A small greedy LZF encoder (test-only), so the decoder meets literals, short, long and overlapping copies."""
    out, literal, table, i = bytearray(), bytearray(), {}, 0

    def flush():
        while literal:
            chunk = literal[:32]
            out.append(len(chunk) - 1)
            out.extend(chunk)
            del literal[:32]

    while i < len(data):
        key = data[i:i + 3]
        j = table.get(key) if len(key) == 3 else None
        if len(key) == 3:
            table[key] = i
        if j is not None and i - j - 1 < 8192:
            length = 3
            while i + length < len(data) and length < 264 and data[j + length] == data[i + length]:
                length += 1
            flush()
            distance, code = i - j - 1, length - 2
            if code < 7:
                out.append((code << 5) | (distance >> 8))
            else:
                out += bytes([(7 << 5) | (distance >> 8), code - 7])
            out.append(distance & 0xFF)
            i += length
        else:
            literal.append(data[i])
            i += 1
    flush()
    return bytes(out)


# ---------------------------------------------------------------------------------------------------------- LZF
@pytest.mark.parametrize('payload', [
    b'',
    b'a',
    bytes(range(256)) * 3,  # literals, then 256-byte-distance copies
    b'\x00' * 5000,  # one overlapping run (distance 1) in long tokens
    b'abcabcabcabcabcabcabcX' * 40,
    np.random.default_rng(7).integers(0, 4, 20000, dtype=np.uint8).tobytes(),  # many short matches
])
def test_lzf_round_trip(payload):
    compressed = lzf_compress(payload)
    assert bytes(lzf_decompress(compressed, len(payload))) == payload


def test_lzf_rejects_corrupt_input():
    good = lzf_compress(b'hello hello hello hello')
    with pytest.raises(LzfError, match='expected 30'):
        lzf_decompress(good, 30)
    with pytest.raises(LzfError, match='overruns'):
        lzf_decompress(good, 5)
    with pytest.raises(LzfError):
        lzf_decompress(good[:-1], 23)
    with pytest.raises(LzfError, match='before the start'):
        lzf_decompress(bytes([0x20, 0x05]), 3)  # a copy from 6 bytes back, at output position 0
    with pytest.raises(LzfError, match='ends inside a token'):
        lzf_decompress(bytes([0xE0]), 10)


# ------------------------------------------------------------------------------------------------- round trips
def _mixed(shape) -> np.ndarray:
    rng = np.random.default_rng(3)
    points = np.zeros(shape, [('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('normal', '<f8', (3,)), ('label', 'u1'),
                              ('ring', '<i2'), ('rgba', '<u4')])
    for name in ('x', 'y', 'z'):
        points[name] = rng.normal(size=shape)
    points['x'].flat[::5] = np.nan
    points['normal'] = rng.normal(size=(*shape, 3))
    points['label'] = rng.integers(0, 256, shape)
    points['ring'] = rng.integers(-300, 300, shape)
    points['rgba'] = rng.integers(0, 2**32, shape, dtype=np.uint64)
    return points


@pytest.mark.parametrize('data', ['ascii', 'binary'])
@pytest.mark.parametrize('shape', [(7,), (3, 4), (0,)])
def test_write_read_round_trip(tmp_path, data, shape):
    points = _mixed(shape)
    path = tmp_path / 'cloud.pcd'
    write_pcd(path, points, data=data, viewpoint=(1, 2, 3, 1, 0, 0, 0))
    cloud = read_pcd(path)
    assert cloud.points.dtype == points.dtype and cloud.points.shape == points.shape
    assert cloud.organized == (len(shape) == 2) and cloud.data_format == data
    assert cloud.viewpoint == (1, 2, 3, 1, 0, 0, 0)
    for name in points.dtype.names:
        np.testing.assert_array_equal(cloud.points[name], points[name])


def test_write_plain_xyz_and_read_xyz_shortcuts(tmp_path):
    grid = np.arange(2 * 3 * 3, dtype=np.float64).reshape(2, 3, 3)
    grid[0, 0] = np.nan
    write_pcd(tmp_path / 'g.pcd', grid)
    np.testing.assert_array_equal(read_pcd_xyz(tmp_path / 'g.pcd', organized=True), grid.astype(np.float32))
    assert read_pcd_xyz(tmp_path / 'g.pcd').shape == (5, 3)
    assert read_pcd(tmp_path / 'g.pcd').points.dtype.names == ('x', 'y', 'z')


def _write_raw(path: Path, header: str, body: bytes) -> Path:
    path.write_bytes(header.encode('ascii') + body)
    return path


def test_binary_compressed_with_padding_fields(tmp_path):
    """A PCL-style binary_compressed file: one LZF block per field, padding fields absent from the blocks."""
    x = np.array([1.5, np.nan, -2.0], '<f4')
    rgba = np.array([0xFF102030, 0xFF000000, 0xFFFFFFFF], '<u4')
    raw = x.tobytes() + rgba.tobytes()
    blob = lzf_compress(raw)
    header = ('# comment\nVERSION .7\nFIELDS x _ rgba\nSIZE 4 1 4\nTYPE F U U\nCOUNT 1 4 1\nWIDTH 3\nHEIGHT 1\n'
              'VIEWPOINT 0 0 0 1 0 0 0\nPOINTS 3\nDATA binary_compressed\n')
    path = _write_raw(tmp_path / 'c.pcd', header, struct.pack('<II', len(blob), len(raw)) + blob + b'\0\0')
    cloud = read_pcd(path)
    assert cloud.points.dtype.names == ('x', 'rgba')
    np.testing.assert_array_equal(cloud.points['x'], x)
    np.testing.assert_array_equal(cloud.points['rgba'], rgba)
    # The same cloud as uncompressed binary keeps the padding bytes inside each record.
    record = np.zeros(3, [('x', '<f4'), ('pad', 'u1', (4,)), ('rgba', '<u4')])
    record['x'], record['pad'], record['rgba'] = x, 7, rgba
    binary = _write_raw(tmp_path / 'b.pcd', header.replace('binary_compressed', 'binary'), record.tobytes())
    np.testing.assert_array_equal(read_pcd(binary).points['rgba'], rgba)


def test_old_header_defaults(tmp_path):
    path = _write_raw(tmp_path / 'old.pcd', 'FIELDS x y z\nPOINTS 2\nDATA ascii\n', b'1 2 3\n4 5 nan\n')
    cloud = read_pcd(path)
    assert cloud.points.shape == (2,) and cloud.points.dtype['x'] == np.float32
    assert np.isnan(cloud.points['z'][1])


# ------------------------------------------------------------------------------------------------ malformed
HEAD = 'VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 2\nHEIGHT 1\nPOINTS 2\n'


@pytest.mark.parametrize(('header', 'body', 'message'), [
    ('VERSION 0.7\nFIELDS x\n', b'', 'no DATA line'),
    (HEAD + 'COLOUR red\nDATA ascii\n', b'', "unknown header line 'COLOUR red'"),
    (HEAD.replace('TYPE F F F', 'TYPE F F Q') + 'DATA ascii\n', b'', "field 'z' has unsupported TYPE Q"),
    (HEAD.replace('SIZE 4 4 4', 'SIZE 4 4') + 'DATA ascii\n', b'', 'SIZE has 2 entries but FIELDS has 3'),
    (HEAD.replace('POINTS 2', 'POINTS 3') + 'DATA ascii\n', b'', r'WIDTH 2 x HEIGHT 1 != POINTS 3'),
    (HEAD.replace('WIDTH 2', 'WIDTH two') + 'DATA ascii\n', b'', 'WIDTH must be integers'),
    (HEAD.replace('FIELDS x y z', 'FIELDS x y x') + 'DATA ascii\n', b'', 'duplicate field names'),
    (HEAD + 'DATA zip\n', b'', "unsupported DATA 'zip'"),
    (HEAD + 'DATA ascii\n', b'1 2 3\n4 5\n', 'ascii body has 5 values, expected 2 points x 3 values = 6'),
    (HEAD + 'DATA ascii\n', b'1 2 3\n4 5 six\n', "field 'z' has a value that is not a float32"),
    (HEAD + 'DATA binary\n', b'\0' * 23, 'binary body has 23 bytes, expected 2 points x 12 bytes = 24'),
    (HEAD + 'DATA binary_compressed\n', struct.pack('<II', 4, 20) + b'abcd', 'uncompressed size 20 != 2 points'),
    (HEAD + 'DATA binary_compressed\n', struct.pack('<II', 40, 24) + b'abcd', 'compressed size 40 exceeds'),
    (HEAD + 'DATA binary_compressed\n', struct.pack('<II', 2, 24) + b'\x05a', 'corrupt LZF data'),
])
def test_malformed_files_name_the_file_and_problem(tmp_path, header, body, message):
    path = _write_raw(tmp_path / 'bad_cloud.pcd', header, body)
    with pytest.raises(PcdError, match=message) as err:
        read_pcd(path)
    assert 'bad_cloud.pcd' in str(err.value)


def test_writer_rejects_what_pcd_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match='cannot be stored'):
        write_pcd(tmp_path / 'b.pcd', np.zeros(2, [('flag', '?')]))
    with pytest.raises(ValueError, match="'ascii' or 'binary'"):
        write_pcd(tmp_path / 'b.pcd', np.zeros((2, 3)), data='binary_compressed')
    with pytest.raises(ValueError, match=r'\(N, 3\)'):
        write_pcd(tmp_path / 'b.pcd', np.zeros((2, 4)))


# ------------------------------------------------------------------------------------------------- real data
@pytest.mark.parametrize(('name', 'finite', 'focal'), [
    ('frame_20121214T142255.814212.pcd', 271575, KINECT_FOCAL),
    ('milk_cartoon_all_small_clorox.pcd', 241407, KINECT_FOCAL),
    ('table_scene_mug_stereo_textured.pcd', 209280, None),  # a stereo rig, other intrinsics
])
def test_real_pcl_clouds(shared_data, name, finite, focal):
    cloud = read_pcd(require(shared_data / 'pcl' / name))
    assert cloud.data_format == 'binary_compressed' and cloud.organized
    assert cloud.points.shape == (480, 640) and cloud.points.dtype.names == ('x', 'y', 'z', 'rgba')
    xyz = cloud.xyz()
    assert len(xyz) == finite
    assert (xyz[:, 2] > 0.4).all() and (xyz[:, 2] < 3.0).all()  # optical frame, metres, a table top
    assert (cloud.points['rgba'] >> 24 == 255).all()  # opaque colours: the rgba block decoded in place
    organised = cloud.xyz(organized=True)
    # Every decoded row and column lies on the pixel ray grid: x/z is linear in u with slope 1/f.
    u = np.arange(640)
    slopes = []
    for row in organised[60::60]:
        ok = np.isfinite(row[:, 2])
        fit = np.polyfit(u[ok], row[ok, 0] / row[ok, 2], 1, full=True)
        assert fit[1][0] / ok.sum() < 1e-8  # residual: the points really are one per column
        slopes.append(fit[0][0])
    if focal:
        assert 1 / np.median(slopes) == pytest.approx(focal, rel=1e-4)
