"""sensor_msgs/PointCloud2 <-> numpy, zero-copy where the layout allows.

Duck-typed on attribute names (``height``, ``width``, ``fields[i].name/offset/datatype/count``, ``is_bigendian``,
``point_step``, ``row_step``, ``data``, ``is_dense``), so rclpy messages, rosbags/cyclonedds dataclasses and
``keygrid_ros.messages.PointCloud2`` all work. ``data`` may be bytes, bytearray, memoryview, array.array('B') or
a numpy array.

Semantics follow ``sensor_msgs_py.point_cloud2`` (ROS 2 rolling) except where noted:

* Empty field names become ``unnamed_field_<i>``; a field with ``count > 1`` is expanded into scalar fields
  ``<name>_0 .. <name>_<count-1>`` (as sensor_msgs_py does); ``count == 0`` is rejected.
* Rows may be padded (``row_step > width * point_step``); sensor_msgs_py ignores ``row_step`` and misreads such
  clouds. Data longer than ``row_step * height`` is accepted and the tail ignored; shorter data is an error.
* ``reshape_organized_cloud`` gives shape ``(height, width)`` (sensor_msgs_py rolling reshapes to
  ``(width, height)``, common_interfaces#236, which scrambles rows).
* ``skip_nans`` drops points where any selected floating-point field is NaN, whatever ``is_dense`` says
  (sensor_msgs_py trusts ``is_dense``; drivers that set it wrongly then leak NaNs).
* ``uvs`` index the *whole* cloud (flat indices ``v * width + u``, or ``(u, v)`` pairs) and are applied before
  ``skip_nans`` (as in ROS 1; the ROS 2 port indexes the already-filtered array).
* Results are in native byte order; big-endian clouds are byte-swapped (one copy) only on little-endian hosts.
* Returned arrays may be views of the message buffer: read-only for bytes, *writable and aliasing the message*
  for bytearray/array.array/ndarray buffers. Copy before modifying (``read_xyz(..., copy=True)``).

Malformed messages raise ``PointCloud2Error`` (a ValueError) naming the problem; nothing reads out of bounds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
import operator
import sys
from typing import Any

import numpy as np

from keygrid_ros.messages import Header, PointCloud2, PointField

#: PointField datatype code -> numpy type (without byte order).
DATATYPES: dict[int, np.dtype] = {
    PointField.INT8: np.dtype(np.int8),
    PointField.UINT8: np.dtype(np.uint8),
    PointField.INT16: np.dtype(np.int16),
    PointField.UINT16: np.dtype(np.uint16),
    PointField.INT32: np.dtype(np.int32),
    PointField.UINT32: np.dtype(np.uint32),
    PointField.FLOAT32: np.dtype(np.float32),
    PointField.FLOAT64: np.dtype(np.float64),
}
_CODE_OF: dict[np.dtype, int] = {v: k for k, v in DATATYPES.items()}
_TYPE_NAMES = {1: 'INT8', 2: 'UINT8', 3: 'INT16', 4: 'UINT16', 5: 'INT32', 6: 'UINT32', 7: 'FLOAT32', 8: 'FLOAT64'}

UNNAMED_FIELD_PREFIX = 'unnamed_field'
_UINT32_MAX = 2**32 - 1
#: Upper bound on scalar values per point (after count expansion). Real descriptors stay far below it (SHOT: 352);
#: it stops a forged ``count`` from making us build a dtype with billions of names.
MAX_VALUES_PER_POINT = 65536

_HOST_BIG = sys.byteorder == 'big'


class PointCloud2Error(ValueError):
    """A PointCloud2 message is malformed, or lacks what the caller asked for."""


# ------------------------------------------------------------------------------------------------ layout parsing
@dataclass(frozen=True)
class FieldLayout:
    """One scalar field of a point after count expansion: name, byte offset in the point, numpy type (native)."""

    name: str
    offset: int
    dtype: np.dtype


@dataclass(frozen=True)
class CloudLayout:
    """A validated PointCloud2 layout plus the message bytes as a flat ``uint8`` array (no copy)."""

    height: int
    width: int
    point_step: int
    row_step: int
    is_bigendian: bool
    fields: tuple[FieldLayout, ...]
    buffer: np.ndarray

    @property
    def n_points(self) -> int:
        return self.height * self.width

    @property
    def needs_swap(self) -> bool:
        return self.is_bigendian != _HOST_BIG

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> FieldLayout | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None

    def dtype(self, names: Sequence[str] | None = None) -> np.dtype:
        """Structured dtype in the *message's* byte order, itemsize ``point_step``."""
        order = '>' if self.is_bigendian else '<'
        chosen = self.fields if names is None else [self.field(n) for n in names]
        return np.dtype(
            {
                'names': [f.name for f in chosen],
                'formats': [f.dtype.newbyteorder(order) for f in chosen],
                'offsets': [f.offset for f in chosen],
                'itemsize': self.point_step,
            }
        )

    def view(self, dtype: np.dtype, offset: int = 0, shape_tail: tuple[int, ...] = (),
             strides_tail: tuple[int, ...] = ()) -> np.ndarray:
        """``(height, width, *shape_tail)`` view of the buffer starting ``offset`` bytes into each point."""
        shape = (self.height, self.width, *shape_tail)
        if self.n_points == 0:
            return np.empty(shape, dtype)
        return np.ndarray(shape=shape, dtype=dtype, buffer=self.buffer, offset=offset,
                          strides=(self.row_step, self.point_step, *strides_tail))


def _uint32(value: Any, what: str) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise PointCloud2Error(f'{what} must be an integer, got {type(value).__name__} {value!r}') from None
    if not 0 <= number <= _UINT32_MAX:
        raise PointCloud2Error(f'{what}={number} is outside the uint32 range of sensor_msgs/PointCloud2')
    return number


def _attr(obj: Any, name: str, what: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise PointCloud2Error(f'{what} has no {name!r} attribute (is it a sensor_msgs/PointCloud2?)') from None


def parse_fields(fields: Iterable[Any], point_step: int | None = None) -> tuple[FieldLayout, ...]:
    """Validate PointField-like objects and expand ``count > 1`` into scalar fields.

    Raises PointCloud2Error for unknown datatypes, negative/absurd offsets or counts, duplicate names and (when
    ``point_step`` is given) fields that end beyond the point.
    """
    try:
        fields = list(fields)
    except TypeError:
        raise PointCloud2Error(f'fields must be a sequence of PointField, got {type(fields).__name__}') from None
    out: list[FieldLayout] = []
    seen: set[str] = set()
    for i, f in enumerate(fields):
        name = _attr(f, 'name', f'fields[{i}]')
        if not isinstance(name, str):
            raise PointCloud2Error(f'fields[{i}].name must be a string, got {type(name).__name__}')
        name = name or f'{UNNAMED_FIELD_PREFIX}_{i}'
        offset = _uint32(_attr(f, 'offset', f'field {name!r}'), f'field {name!r} offset')
        code = _attr(f, 'datatype', f'field {name!r}')
        try:
            code = operator.index(code)
        except TypeError:
            raise PointCloud2Error(f'field {name!r} datatype must be an integer code, got {code!r}') from None
        if code not in DATATYPES:
            raise PointCloud2Error(f'field {name!r} has unknown datatype code {code} (expected 1..8, INT8..FLOAT64)')
        count = _uint32(_attr(f, 'count', f'field {name!r}'), f'field {name!r} count')
        if count == 0:
            raise PointCloud2Error(f'field {name!r} has count 0 (a field must hold at least one value)')
        if len(out) + count > MAX_VALUES_PER_POINT:
            raise PointCloud2Error(f'fields hold more than {MAX_VALUES_PER_POINT} values per point (field {name!r} '
                                   f'has count {count}); refusing an absurd layout')
        np_type = DATATYPES[code]
        end = offset + count * np_type.itemsize
        if point_step is not None and end > point_step:
            raise PointCloud2Error(f'field {name!r} ({count} x {_TYPE_NAMES[code]} at offset {offset}) ends at byte '
                                   f'{end}, beyond point_step {point_step}')
        for k in range(count):
            sub = name if count == 1 else f'{name}_{k}'
            if sub in seen:
                raise PointCloud2Error(f'duplicate field name {sub!r}')
            seen.add(sub)
            out.append(FieldLayout(sub, offset + k * np_type.itemsize, np_type))
    return tuple(out)


def _byte_array(data: Any) -> np.ndarray:
    """The message payload as a flat uint8 array, sharing memory whenever the buffer is contiguous."""
    if isinstance(data, np.ndarray):
        if data.dtype.hasobject:
            raise PointCloud2Error('data is an object array, expected bytes')
        if not data.flags.c_contiguous:
            data = np.ascontiguousarray(data)
        return data.reshape(-1).view(np.uint8)
    try:
        view = memoryview(data)
    except TypeError:
        view = None
    if view is not None:
        try:
            return np.frombuffer(data, dtype=np.uint8)
        except (TypeError, ValueError, BufferError):
            pass
        try:  # non-contiguous buffers: one copy
            return np.frombuffer(view.tobytes(), dtype=np.uint8)
        except (TypeError, ValueError, BufferError) as err:
            raise PointCloud2Error(f'data buffer is unreadable: {err}') from None
    # A plain list of ints (hand-built messages): validate the range instead of silently wrapping.
    try:
        arr = np.asarray(data)
    except (TypeError, ValueError) as err:
        raise PointCloud2Error(f'data must be a byte buffer, got {type(data).__name__}: {err}') from None
    if arr.size == 0:
        return np.zeros(0, np.uint8)
    if arr.dtype.kind not in 'iu' or arr.min() < 0 or arr.max() > 255:
        raise PointCloud2Error(f'data must be a byte buffer, got {type(data).__name__} of {arr.dtype}')
    return arr.reshape(-1).astype(np.uint8)


def cloud_layout(cloud: Any) -> CloudLayout:
    """Validate a PointCloud2-like message and describe its layout. Raises PointCloud2Error when malformed."""
    height = _uint32(_attr(cloud, 'height', 'cloud'), 'height')
    width = _uint32(_attr(cloud, 'width', 'cloud'), 'width')
    point_step = _uint32(_attr(cloud, 'point_step', 'cloud'), 'point_step')
    row_step = _uint32(_attr(cloud, 'row_step', 'cloud'), 'row_step')
    is_bigendian = bool(_attr(cloud, 'is_bigendian', 'cloud'))
    fields = parse_fields(_attr(cloud, 'fields', 'cloud'), point_step)
    n_points = height * width
    if n_points and not fields:
        raise PointCloud2Error(f'cloud has {n_points} points but no fields')
    if row_step < width * point_step:
        raise PointCloud2Error(f'row_step {row_step} is smaller than width * point_step = {width} * {point_step} '
                               f'= {width * point_step}')
    buffer = _byte_array(_attr(cloud, 'data', 'cloud'))
    expected = row_step * height
    if buffer.size < expected:
        raise PointCloud2Error(f'data holds {buffer.size} bytes but row_step * height = {row_step} * {height} = '
                               f'{expected} bytes are expected')
    return CloudLayout(height, width, point_step, row_step, is_bigendian, fields, buffer)


def validate_cloud(cloud: Any) -> None:
    """Raise PointCloud2Error when ``cloud`` is not a well-formed PointCloud2."""
    cloud_layout(cloud)


def dtype_from_fields(fields: Iterable[Any], point_step: int | None = None, is_bigendian: bool = False) -> np.dtype:
    """Structured numpy dtype for PointFields (count expanded to ``<name>_<k>``), itemsize ``point_step``.

    Without ``point_step`` the itemsize is the end of the last field (no padding).
    """
    if point_step is not None:
        point_step = _uint32(point_step, 'point_step')
    parsed = parse_fields(fields, point_step)
    order = '>' if is_bigendian else '<'
    itemsize = point_step if point_step is not None else max((f.offset + f.dtype.itemsize for f in parsed), default=0)
    return np.dtype(
        {
            'names': [f.name for f in parsed],
            'formats': [f.dtype.newbyteorder(order) for f in parsed],
            'offsets': [f.offset for f in parsed],
            'itemsize': itemsize,
        }
    )


def fields_from_dtype(dtype: np.dtype) -> list[PointField]:
    """PointFields describing a structured dtype; sub-array fields ``(name, t, (k,))`` become ``count=k``."""
    dtype = np.dtype(dtype)
    if dtype.names is None:
        raise PointCloud2Error(f'expected a structured dtype, got {dtype}')
    out = []
    for name in dtype.names:
        sub, offset = dtype.fields[name][:2]
        count = 1
        if sub.subdtype is not None:
            sub, shape = sub.subdtype
            count = int(np.prod(shape))
        code = _CODE_OF.get(sub.newbyteorder('='))
        if code is None:
            raise PointCloud2Error(f'field {name!r} has type {sub}, which PointField cannot represent')
        out.append(PointField(name=name, offset=offset, datatype=code, count=count))
    return out


# ------------------------------------------------------------------------------------------------------- reading
def _native(arr: np.ndarray) -> np.ndarray:
    """Byte-swap into native order only when some field is not native (one copy then).

    The copy gets a *packed* dtype: fields may legally overlap (e.g. ``rgb`` and ``rgba``), and swapping them in
    place, or ``astype`` to the same offsets, would let one field's bytes clobber another's.
    """
    dt = arr.dtype
    if all(dt.fields[n][0].isnative for n in dt.names):
        return arr
    packed = np.dtype([(n, dt.fields[n][0].newbyteorder('=')) for n in dt.names])
    out = np.empty(arr.shape, packed)
    for name in dt.names:
        out[name] = arr[name]
    return out


def _flat_indices(uvs: Any, layout: CloudLayout) -> np.ndarray:
    idx = uvs if isinstance(uvs, np.ndarray) else np.asarray(list(uvs))
    if idx.size == 0:
        return np.zeros(0, np.intp)
    if idx.dtype.kind not in 'iu':
        raise ValueError(f'uvs must be integer indices or (u, v) pairs, got {idx.dtype}')
    if idx.ndim == 2 and idx.shape[1] == 2:
        u, v = idx[:, 0].astype(np.int64), idx[:, 1].astype(np.int64)
        if (u < 0).any() or (u >= layout.width).any() or (v < 0).any() or (v >= layout.height).any():
            raise PointCloud2Error(f'uvs (u, v) pairs fall outside the {layout.width} x {layout.height} cloud')
        return v * layout.width + u
    if idx.ndim != 1:
        raise ValueError(f'uvs must have shape (K,) or (K, 2), got {idx.shape}')
    idx = idx.astype(np.int64)
    if (idx < 0).any() or (idx >= layout.n_points).any():
        raise PointCloud2Error(f'uvs indices fall outside the cloud of {layout.n_points} points')
    return idx


def _not_nan_mask(points: np.ndarray) -> np.ndarray:
    keep = np.ones(points.shape, bool)
    for name in points.dtype.names:
        if points.dtype.fields[name][0].kind == 'f':
            keep &= ~np.isnan(points[name])
    return keep


def read_points(cloud: Any, field_names: Iterable[str] | None = None, skip_nans: bool = False,
                uvs: Iterable[Any] | None = None, reshape_organized_cloud: bool = False) -> np.ndarray:
    """Structured array of the cloud's points, ``(N,)`` or ``(height, width)`` with ``reshape_organized_cloud``.

    The dtype keeps the message's offsets and ``itemsize == point_step`` (restricted to ``field_names``); it is a
    zero-copy view when the cloud is native-endian and, for the flat result, rows are unpadded. A cloud that must
    be byte-swapped comes back as a copy with a packed native dtype (same names, no padding). See the module
    docstring for where this differs from sensor_msgs_py. Raises PointCloud2Error for a malformed cloud or an
    unknown field name; ValueError when ``reshape_organized_cloud`` is combined with ``skip_nans`` or ``uvs``.
    """
    layout = cloud_layout(cloud)
    names = None
    if field_names is not None:
        names = [field_names] if isinstance(field_names, str) else list(field_names)
        missing = [n for n in names if layout.field(n) is None]
        if missing:
            raise PointCloud2Error(f'cloud has no field {missing[0]!r} (fields: {", ".join(layout.names)})')
        if len(set(names)) != len(names):
            raise ValueError(f'field_names repeats a name: {names}')
    organised = reshape_organized_cloud and layout.height > 1
    if organised and (skip_nans or uvs is not None):
        raise ValueError('reshape_organized_cloud cannot be combined with skip_nans or uvs (they drop points)')
    points = layout.view(layout.dtype(names))
    if not organised:
        points = points.reshape(-1)
        if uvs is not None:
            points = points[_flat_indices(uvs, layout)]
        if skip_nans:
            points = points[_not_nan_mask(points)]
    return _native(points)


def read_points_numpy(cloud: Any, field_names: Iterable[str] | None = None, skip_nans: bool = False,
                      uvs: Iterable[Any] | None = None, reshape_organized_cloud: bool = False) -> np.ndarray:
    """Like ``read_points`` but unstructured ``(N, k)`` / ``(H, W, k)``; the selected fields must share a type."""
    points = read_points(cloud, field_names, skip_nans, uvs, reshape_organized_cloud)
    types = {points.dtype.fields[n][0] for n in points.dtype.names}
    if len(types) > 1:
        raise ValueError(f'fields {points.dtype.names} do not share one type ({sorted(map(str, types))}); '
                         'use read_points')
    if not points.dtype.names:
        return np.empty((*points.shape, 0))
    return np.stack([points[n] for n in points.dtype.names], axis=-1)


def read_xyz(cloud: Any, skip_nans: bool = True, organized: bool = False, dtype: Any = np.float32, *,
             copy: bool = False) -> np.ndarray:
    """The x, y, z fields as a plain float array: ``(N, 3)``, or ``(height, width, 3)`` with ``organized``.

    Fast path: when x, y, z share the requested type, sit back to back (y = x + s, z = x + 2s) and the cloud is
    native-endian, the result is a strided view of the message buffer (no per-point work, no copy, for
    ``organized=True`` or for unpadded rows with ``skip_nans=False``). Otherwise it is one vectorised copy.

    ``skip_nans`` (flat output only) drops points whose x, y or z is not finite (NaN or +-inf, as PCL's
    ``removeNaNFromPointCloud``). Organised output always keeps every pixel, NaN included. The result may alias the
    message (see the module docstring); pass ``copy=True`` for an array you own.
    Raises PointCloud2Error when the cloud is malformed or lacks x, y or z.
    """
    out_dtype = np.dtype(dtype)
    if out_dtype.kind != 'f':
        raise ValueError(f'read_xyz returns floats; dtype {out_dtype} is not a floating type')
    layout = cloud_layout(cloud)
    if layout.n_points == 0:  # e.g. a default-constructed message, which has no fields at all
        return np.empty((layout.height, layout.width, 3) if organized else (0, 3), out_dtype)
    xyz = []
    for name in ('x', 'y', 'z'):
        f = layout.field(name)
        if f is None:
            raise PointCloud2Error(f'cloud has no {name!r} field (fields: {", ".join(layout.names) or "none"})')
        xyz.append(f)
    fx, fy, fz = xyz
    order = '>' if layout.is_bigendian else '<'
    step = fx.dtype.itemsize
    # float64 -> float32 turns out-of-range values into inf (then dropped by skip_nans): no warning wanted.
    with np.errstate(over='ignore', invalid='ignore'):
        if fx.dtype == fy.dtype == fz.dtype and fy.offset == fx.offset + step and fz.offset == fx.offset + 2 * step:
            grid = layout.view(fx.dtype.newbyteorder(order), fx.offset, (3,), (step,))
        else:  # scattered or mixed-type fields: gather them, one copy
            grid = np.empty((layout.height, layout.width, 3), out_dtype)
            for k, f in enumerate(xyz):
                grid[..., k] = layout.view(f.dtype.newbyteorder(order), f.offset)
        if grid.dtype != out_dtype:  # also covers non-native byte order
            grid = grid.astype(out_dtype)
    if organized:
        out = grid
    else:
        out = grid.reshape(-1, 3)
        if skip_nans:
            keep = np.isfinite(out[:, 0])
            keep &= np.isfinite(out[:, 1])
            keep &= np.isfinite(out[:, 2])
            if not keep.all():
                out = _select_rows(out, keep)
    if copy and np.may_share_memory(out, layout.buffer):
        out = out.copy()
    return out


def _select_rows(rows: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``rows[keep]`` for an ``(N, k)`` array; copies each row as one opaque item when the row is contiguous,
    which is about 4x faster than numpy's element-wise 2-D boolean indexing (0.4 vs 1.9 ms for 640x480)."""
    if rows.shape[0] and rows.strides[1] == rows.itemsize:
        whole = rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize)))[:, 0]
        return whole[keep].view(rows.dtype).reshape(-1, rows.shape[1])
    return rows[keep]


# ------------------------------------------------------------------------------------------------------ creating
def _structured_points(points: Any, dtype: np.dtype) -> np.ndarray:
    """Pack ``points`` into a zero-initialised array of the packed ``dtype`` (padding bytes stay 0)."""
    names = dtype.names
    if isinstance(points, np.ndarray) and points.dtype.names is not None:
        out = np.zeros(points.shape, dtype)
        for name in names:
            if name in points.dtype.names:
                out[name] = points[name]
                continue
            # count > 1 fields are expanded to name_k; accept a sub-array field 'name' of shape (count,)
            base, _, k = name.rpartition('_')
            if base in points.dtype.names and k.isdigit() and points.dtype.fields[base][0].subdtype is not None:
                out[name] = points[base][..., int(k)]
                continue
            raise PointCloud2Error(f'points have no field {name!r} (they have: {", ".join(points.dtype.names)})')
        return out
    arr = np.asarray(points)
    if arr.dtype.kind not in 'biuf':
        raise ValueError(f'points must be numeric, got {arr.dtype}')
    if arr.ndim < 2 or arr.shape[-1] != len(names):
        raise ValueError(f'points must have shape (N, {len(names)}) or (H, W, {len(names)}) for fields {names}, '
                         f'got {arr.shape}')
    out = np.zeros(arr.shape[:-1], dtype)
    for k, name in enumerate(names):
        out[name] = arr[..., k]
    return out


def _is_dense(points: np.ndarray) -> bool:
    """PCL's definition: no point has a NaN or infinite value in a floating-point field."""
    for name in points.dtype.names:
        if points.dtype.fields[name][0].kind == 'f' and not np.isfinite(points[name]).all():
            return False
    return True


def create_cloud(header: Any, fields: Iterable[Any] | None, points: Any, point_step: int | None = None
                 ) -> PointCloud2:
    """Build a native-endian PointCloud2 (our dataclass, ``data`` as bytes).

    ``points``: a structured array (fields matched by name; ``fields=None`` derives them from its dtype), an
    unstructured ``(N, k)`` / ``(H, W, k)`` array, or an iterable of per-point tuples. 2-D point grids give an
    organised cloud (``height = H``, ``width = W``). ``is_dense`` is True when no floating-point field holds NaN/inf.
    """
    if fields is None:
        if not (isinstance(points, np.ndarray) and points.dtype.names is not None):
            raise ValueError('fields=None needs a structured points array')
        fields = fields_from_dtype(points.dtype)
    fields = [
        PointField(name=f.name, offset=int(f.offset), datatype=int(f.datatype), count=int(f.count)) for f in fields
    ]
    dtype = dtype_from_fields(fields, point_step).newbyteorder('=')
    if not isinstance(points, np.ndarray):
        points = [tuple(p) for p in points]
        points = np.array(points, dtype=np.float64) if points else np.zeros((0, len(dtype.names)))
    packed = _structured_points(points, dtype)
    if packed.ndim == 1:
        height, width = 1, packed.shape[0]
    elif packed.ndim == 2:
        height, width = packed.shape
    else:
        raise ValueError(f'points must form a list or a 2-D grid of points, got point shape {packed.shape}')
    return PointCloud2(
        header=header if header is not None else Header(),
        height=height,
        width=width,
        fields=fields,
        is_bigendian=_HOST_BIG,
        point_step=dtype.itemsize,
        row_step=dtype.itemsize * width,
        data=packed.tobytes(),
        is_dense=_is_dense(packed),
    )


def xyz32_fields() -> list[PointField]:
    """The x, y, z FLOAT32 fields at offsets 0, 4, 8 (point_step 12)."""
    return [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate('xyz')]


def create_cloud_xyz32(header: Any, points: Any) -> PointCloud2:
    """PointCloud2 with float32 x, y, z from ``(N, 3)`` points, or organised from ``(H, W, 3)``; NaN allowed."""
    arr = np.ascontiguousarray(points, dtype=np.float32)
    if arr.ndim == 2 and arr.shape[1] == 3:
        height, width = 1, arr.shape[0]
    elif arr.ndim == 3 and arr.shape[2] == 3:
        height, width = arr.shape[:2]
    elif arr.size == 0:
        arr, height, width = arr.reshape(0, 3), 1, 0
    else:
        raise ValueError(f'points must have shape (N, 3) or (H, W, 3), got {arr.shape}')
    return PointCloud2(
        header=header if header is not None else Header(),
        height=height,
        width=width,
        fields=xyz32_fields(),
        is_bigendian=_HOST_BIG,
        point_step=12,
        row_step=12 * width,
        data=arr.tobytes(),
        is_dense=bool(np.isfinite(arr).all()),
    )


# ------------------------------------------------------------------------------------------------------ colours
def unpack_rgb(values: np.ndarray) -> np.ndarray:
    """PCL-packed colours (the float32 ``rgb`` or uint32 ``rgba`` field, 0x00RRGGBB) -> ``(..., 3)`` uint8."""
    values = np.asarray(values)
    bits = values.view(np.uint32) if values.dtype.itemsize == 4 and values.dtype.kind == 'f' else values.astype(
        np.uint32)
    return np.stack([(bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF], axis=-1).astype(np.uint8)


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 colours -> float32 values carrying 0x00RRGGBB bits (the PCL ``rgb`` field)."""
    rgb = np.asarray(rgb).astype(np.uint32)
    bits = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return np.ascontiguousarray(bits, dtype=np.uint32).view(np.float32)
