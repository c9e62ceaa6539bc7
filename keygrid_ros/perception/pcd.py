"""PCL ``.pcd`` files: reader (ascii, binary, binary_compressed) and writer (ascii, binary).

Format facts (PCD v0.7, as PCL's ``pcd_io.cpp`` reads and writes it):

* A text header of ``KEY values`` lines (``#`` comments) ending with ``DATA ascii|binary|binary_compressed``;
  the body starts right after that line. ``SIZE`` defaults to 4, ``TYPE`` to F and ``COUNT`` to 1 (old files);
  ``WIDTH``/``HEIGHT`` 0 mean unorganised; ``POINTS`` must equal ``WIDTH * HEIGHT``.
* ``binary``: points packed back to back (no alignment), little-endian. Fields named ``_`` are padding bytes.
* ``binary_compressed``: uint32 compressed size, uint32 uncompressed size, then LZF data which decompresses to
  one block per non-padding field (all x, then all y, ...).
* ``ascii``: one point per line; PCL writes a float ``rgb`` field as its uint32 bit pattern with ``TYPE U``.

Clouds come back as structured arrays: ``(height, width)`` when organised (height > 1), else ``(N,)``; fields with
``COUNT > 1`` are sub-arrays; padding fields are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
import struct
from typing import Any

import numpy as np

_TYPES = {('F', 4): 'f4', ('F', 8): 'f8', ('U', 1): 'u1', ('U', 2): 'u2', ('U', 4): 'u4', ('U', 8): 'u8',
          ('I', 1): 'i1', ('I', 2): 'i2', ('I', 4): 'i4', ('I', 8): 'i8'}
_PAD = '_'
_MAX_HEADER_BYTES = 1 << 16
DEFAULT_VIEWPOINT = (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)


class PcdError(ValueError):
    """A PCD file is malformed; the message names the file."""


class LzfError(ValueError):
    """LZF data is corrupt."""


# --------------------------------------------------------------------------------------------------------- LZF
def lzf_decompress(data: bytes, size: int) -> bytearray:
    """Decompress liblzf data (the format of ``lzf_compress``) into exactly ``size`` bytes.

    Pure Python: one loop iteration per LZF token with slice copies, about 0.25 s for a 640x480 xyz+rgba cloud.
    Raises LzfError on truncated input, back-references before the start, or a size mismatch.
    """
    data = bytes(data)
    out = bytearray(size)
    ip = op = 0
    end_in = len(data)
    try:
        while ip < end_in:
            ctrl = data[ip]
            ip += 1
            if ctrl < 32:  # literal run of ctrl + 1 bytes
                n = ctrl + 1
                if ip + n > end_in or op + n > size:
                    raise LzfError(f'literal run of {n} bytes at input {ip - 1} overruns the input or the output')
                out[op:op + n] = data[ip:ip + n]
                ip += n
                op += n
                continue
            # back-reference: 3 bits length (7 = extended by one byte), 13 bits distance
            length = ctrl >> 5
            if length == 7:
                length += data[ip]
                ip += 1
            ref = op - ((ctrl & 0x1F) << 8) - data[ip] - 1
            ip += 1
            length += 2
            if ref < 0 or op + length > size:
                raise LzfError(f'back-reference at input {ip} points before the start or overruns the output')
            distance = op - ref
            if distance >= length:
                out[op:op + length] = out[ref:ref + length]
            else:  # overlapping copy = the last `distance` bytes repeated
                pattern = bytes(out[ref:op])
                out[op:op + length] = (pattern * (length // distance + 1))[:length]
            op += length
    except IndexError:
        raise LzfError('LZF input ends inside a token') from None
    if op != size:
        raise LzfError(f'LZF data decompressed to {op} bytes, expected {size}')
    return out


# ------------------------------------------------------------------------------------------------------ header
@dataclass
class PcdHeader:
    """The parsed header. ``fields`` keeps padding fields (named ``_``) so the binary layout can be rebuilt."""

    version: str = '0.7'
    fields: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    width: int = 0
    height: int = 0
    viewpoint: tuple[float, ...] = DEFAULT_VIEWPOINT
    points: int = 0
    data: str = ''
    data_offset: int = 0

    def record_dtype(self, with_padding: bool) -> np.dtype:
        """Packed little-endian record of the fields (padding fields renamed ``_<i>`` when kept)."""
        items = []
        for i, (name, size, kind, count) in enumerate(zip(self.fields, self.sizes, self.types, self.counts)):
            if name == _PAD and not with_padding:
                continue
            base = np.dtype('<' + _TYPES[(kind, size)])
            items.append((f'_{i}' if name == _PAD else name, base if count == 1 else (base, (count,))))
        return np.dtype(items)


def _ints(path: Path, key: str, values: list[str]) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise PcdError(f'{path}: {key} must be integers, got {" ".join(values)!r}') from None


def parse_header(raw: bytes, path: Path) -> PcdHeader:
    """Parse the header at the start of ``raw``; PcdError names the file and the offending line."""
    header = PcdHeader()
    seen: set[str] = set()
    pos = 0
    while True:
        end = raw.find(b'\n', pos)
        if end < 0 or end > _MAX_HEADER_BYTES:
            raise PcdError(f'{path}: no DATA line in the header (is this a PCD file?)')
        try:
            line = raw[pos:end].decode('ascii').strip()
        except UnicodeDecodeError:
            raise PcdError(f'{path}: non-ASCII header line at byte {pos}') from None
        pos = end + 1
        if not line or line.startswith('#'):
            continue
        key, *values = line.split()
        key = key.upper()
        seen.add(key)
        if key == 'VERSION':
            header.version = values[0] if values else ''
        elif key in ('FIELDS', 'COLUMNS'):
            header.fields = values
        elif key == 'SIZE':
            header.sizes = _ints(path, key, values)
        elif key == 'TYPE':
            header.types = [v.upper() for v in values]
        elif key == 'COUNT':
            header.counts = _ints(path, key, values)
        elif key in ('WIDTH', 'HEIGHT', 'POINTS'):
            numbers = _ints(path, key, values)
            if len(numbers) != 1 or numbers[0] < 0:
                raise PcdError(f'{path}: {key} needs one non-negative integer, got {line!r}')
            setattr(header, key.lower(), numbers[0])
        elif key == 'VIEWPOINT':
            try:
                header.viewpoint = tuple(float(v) for v in values)
            except ValueError:
                raise PcdError(f'{path}: VIEWPOINT must be 7 numbers, got {line!r}') from None
            if len(header.viewpoint) != 7:
                raise PcdError(f'{path}: VIEWPOINT must be 7 numbers (tx ty tz qw qx qy qz), got {line!r}')
        elif key == 'DATA':
            header.data = values[0].lower() if values else ''
            header.data_offset = pos
            break
        else:
            raise PcdError(f'{path}: unknown header line {line!r}')
    _complete(header, seen, path)
    return header


def _complete(header: PcdHeader, seen: set[str], path: Path) -> None:
    """Apply PCL's defaults for old files and check the header is consistent."""
    n = len(header.fields)
    if not n:
        raise PcdError(f'{path}: header has no FIELDS')
    header.sizes = header.sizes or [4] * n
    header.types = header.types or ['F'] * n
    header.counts = header.counts or [1] * n
    for key, values in (('SIZE', header.sizes), ('TYPE', header.types), ('COUNT', header.counts)):
        if len(values) != n:
            raise PcdError(f'{path}: {key} has {len(values)} entries but FIELDS has {n}')
    for name, size, kind, count in zip(header.fields, header.sizes, header.types, header.counts):
        if (kind, size) not in _TYPES:
            raise PcdError(f'{path}: field {name!r} has unsupported TYPE {kind} with SIZE {size}')
        if count < 1:
            raise PcdError(f'{path}: field {name!r} has COUNT {count}')
    names = [f for f in header.fields if f != _PAD]
    if len(set(names)) != len(names):
        raise PcdError(f'{path}: duplicate field names in FIELDS {" ".join(header.fields)}')
    if header.data not in ('ascii', 'binary', 'binary_compressed'):
        raise PcdError(f'{path}: unsupported DATA {header.data!r} (expected ascii, binary or binary_compressed)')
    if header.width == 0 and header.height == 0:
        header.width, header.height = header.points, 1
    elif header.height == 0:
        header.height = 1
    if 'POINTS' not in seen:
        header.points = header.width * header.height
    if header.width * header.height != header.points:
        raise PcdError(f'{path}: WIDTH {header.width} x HEIGHT {header.height} != POINTS {header.points}')


# -------------------------------------------------------------------------------------------------------- body
@dataclass
class PcdCloud:
    """A loaded PCD cloud: structured ``points`` (``(H, W)`` organised, else ``(N,)``) plus header facts."""

    points: np.ndarray
    viewpoint: tuple[float, ...] = DEFAULT_VIEWPOINT
    data_format: str = 'binary'
    version: str = '0.7'

    @property
    def organized(self) -> bool:
        return self.points.ndim == 2

    def xyz(self, organized: bool = False, skip_nans: bool = True, dtype: Any = np.float32) -> np.ndarray:
        """``(N, 3)`` points (non-finite dropped with ``skip_nans``), or ``(H, W, 3)`` with NaN kept."""
        missing = [k for k in 'xyz' if k not in (self.points.dtype.names or ())]
        if missing:
            raise PcdError(f'cloud has no {missing[0]!r} field (fields: {self.points.dtype.names})')
        grid = np.stack([self.points[k] for k in 'xyz'], axis=-1).astype(dtype, copy=False)
        if organized:
            return grid if self.organized else grid[None]
        flat = grid.reshape(-1, 3)
        return flat[np.isfinite(flat).all(axis=1)] if skip_nans else flat


def _decode_ascii(body: bytes, header: PcdHeader, path: Path) -> np.ndarray:
    record = header.record_dtype(with_padding=True)
    n_values = sum(header.counts)
    tokens = body.split()
    needed = header.points * n_values
    if len(tokens) < needed:
        raise PcdError(f'{path}: ascii body has {len(tokens)} values, expected {header.points} points x '
                       f'{n_values} values = {needed}')
    table = np.array(tokens[:needed]).reshape(header.points, n_values) if needed else np.zeros((0, n_values), 'S1')
    out = np.zeros(header.points, record)
    column = 0
    for name in record.names:
        sub = record.fields[name][0]
        base, shape = (sub.subdtype if sub.subdtype else (sub, ()))
        width = int(np.prod(shape)) if shape else 1
        cells = table[:, column:column + width]
        column += width
        try:
            values = cells.astype(np.float64).astype(base) if base.kind == 'f' else cells.astype(base)
        except (ValueError, OverflowError) as err:
            raise PcdError(f'{path}: field {name!r} has a value that is not a {base}: {err}') from None
        out[name] = values.reshape(out[name].shape)
    return out


def _decode_binary(body: bytes, header: PcdHeader, path: Path) -> np.ndarray:
    record = header.record_dtype(with_padding=True)
    needed = header.points * record.itemsize
    if len(body) < needed:
        raise PcdError(f'{path}: binary body has {len(body)} bytes, expected {header.points} points x '
                       f'{record.itemsize} bytes = {needed}')
    return np.frombuffer(body, dtype=record, count=header.points)


def _decode_compressed(body: bytes, header: PcdHeader, path: Path) -> np.ndarray:
    record = header.record_dtype(with_padding=False)
    if len(body) < 8:
        raise PcdError(f'{path}: binary_compressed body is shorter than its 8-byte size prefix')
    compressed, uncompressed = struct.unpack_from('<II', body, 0)
    expected = header.points * record.itemsize
    if uncompressed != expected:
        raise PcdError(f'{path}: uncompressed size {uncompressed} != {header.points} points x {record.itemsize} '
                       f'bytes = {expected}')
    if len(body) < 8 + compressed:
        raise PcdError(f'{path}: compressed size {compressed} exceeds the {len(body) - 8} bytes in the file')
    try:
        raw = lzf_decompress(body[8:8 + compressed], uncompressed) if expected else bytearray()
    except LzfError as err:
        raise PcdError(f'{path}: corrupt LZF data: {err}') from None
    out = np.empty(header.points, record)
    offset = 0
    for name in record.names:  # one contiguous block per field ("xxxx...yyyy...zzzz...")
        sub = record.fields[name][0]
        block = np.frombuffer(raw, dtype=sub, count=header.points, offset=offset)
        out[name] = block
        offset += header.points * sub.itemsize
    return out


def read_pcd(path: str | Path) -> PcdCloud:
    """Read a ``.pcd`` file. Raises PcdError (naming the file) when it is malformed or truncated."""
    path = Path(path)
    raw = path.read_bytes()
    header = parse_header(raw, path)
    body = raw[header.data_offset:]
    decode = {'ascii': _decode_ascii, 'binary': _decode_binary, 'binary_compressed': _decode_compressed}
    records = decode[header.data](body, header, path)
    # Drop padding fields and settle into a packed, native, writable array.
    wanted = header.record_dtype(with_padding=False).newbyteorder('=')
    points = np.empty(records.shape, wanted)
    for name in wanted.names:
        points[name] = records[name]
    if header.height > 1:
        points = points.reshape(header.height, header.width)
    return PcdCloud(points=points, viewpoint=header.viewpoint, data_format=header.data, version=header.version)


def read_pcd_xyz(path: str | Path, organized: bool = False, skip_nans: bool = True) -> np.ndarray:
    """Shortcut: the x, y, z of a ``.pcd`` file as float32, ``(N, 3)`` or ``(H, W, 3)``."""
    return read_pcd(path).xyz(organized=organized, skip_nans=skip_nans)


# ------------------------------------------------------------------------------------------------------ writer
def _as_structured(points: Any) -> np.ndarray:
    points = np.asarray(points)
    if points.dtype.names is not None:
        return points
    if points.ndim not in (2, 3) or points.shape[-1] != 3 or points.dtype.kind != 'f':
        raise ValueError(f'points must be a structured array or float (N, 3) / (H, W, 3), got {points.dtype} '
                         f'{points.shape}')
    xyz = np.zeros(points.shape[:-1], [('x', '<f4'), ('y', '<f4'), ('z', '<f4')])
    for k, name in enumerate('xyz'):
        xyz[name] = points[..., k]
    return xyz


def _field_specs(dtype: np.dtype) -> list[tuple[str, int, str, int, np.dtype]]:
    """(name, SIZE, TYPE, COUNT, base dtype) per field; PCD has no bool or complex."""
    specs = []
    for name in dtype.names:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f'PCD field names cannot be empty or contain spaces: {name!r}')
        sub = dtype.fields[name][0]
        base, shape = sub.subdtype if sub.subdtype else (sub, ())
        kind = {'f': 'F', 'u': 'U', 'i': 'I'}.get(base.kind)
        if kind is None or (kind, base.itemsize) not in _TYPES:
            raise ValueError(f'field {name!r} of type {base} cannot be stored in a PCD file')
        specs.append((name, base.itemsize, kind, int(np.prod(shape)) if shape else 1, base))
    return specs


def write_pcd(path: str | Path, points: Any, data: str = 'binary',
              viewpoint: tuple[float, ...] = DEFAULT_VIEWPOINT) -> None:
    """Write ``points`` (structured ``(N,)``/``(H, W)``, or float ``(N, 3)``/``(H, W, 3)``) as ascii or binary PCD."""
    if data not in ('ascii', 'binary'):
        raise ValueError(f"data must be 'ascii' or 'binary' (binary_compressed is read-only here), got {data!r}")
    if len(viewpoint) != 7:
        raise ValueError('viewpoint must be 7 numbers: tx ty tz qw qx qy qz')
    structured = _as_structured(points)
    if structured.ndim not in (1, 2):
        raise ValueError(f'points must be a list (N,) or a grid (H, W) of points, got shape {structured.shape}')
    height, width = structured.shape if structured.ndim == 2 else (1, structured.shape[0])
    specs = _field_specs(structured.dtype)
    lines = [
        '# .PCD v0.7 - Point Cloud Data file format',
        'VERSION 0.7',
        'FIELDS ' + ' '.join(s[0] for s in specs),
        'SIZE ' + ' '.join(str(s[1]) for s in specs),
        'TYPE ' + ' '.join(s[2] for s in specs),
        'COUNT ' + ' '.join(str(s[3]) for s in specs),
        f'WIDTH {width}',
        f'HEIGHT {height}',
        'VIEWPOINT ' + ' '.join(f'{float(v):.9g}' for v in viewpoint),
        f'POINTS {width * height}',
        f'DATA {data}',
    ]
    flat = structured.reshape(-1)
    packed = np.dtype([(name, (np.dtype('<' + base.str[1:]), (count,)) if count > 1 else '<' + base.str[1:])
                       for name, _, _, count, base in specs])
    records = np.zeros(flat.shape, packed)
    for name in packed.names:
        records[name] = flat[name]
    with Path(path).open('wb') as out:
        out.write(('\n'.join(lines) + '\n').encode('ascii'))
        if data == 'binary':
            out.write(records.tobytes())
        else:
            out.write(_ascii_body(records, specs).encode('ascii'))


def _ascii_body(records: np.ndarray, specs: list) -> str:
    """One line per point; float32 with 9 and float64 with 17 significant digits, so values round-trip."""
    columns, formats = [], []
    for name, size, kind, count, _ in specs:
        values = records[name].reshape(len(records), count)
        fmt = {('F', 4): '%.9g', ('F', 8): '%.17g'}.get((kind, size), '%d')
        for k in range(count):
            col = values[:, k]
            columns.append((col.astype(np.float64) if kind == 'F' else col).tolist())
            formats.append(fmt)
    row = ' '.join(formats)
    return ''.join(row % values + '\n' for values in zip(*columns))
