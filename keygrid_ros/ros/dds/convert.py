"""Any duck-typed ROS message (ours, rosbags', rclpy's) <-> the cyclonedds IdlStruct of the same ROS type.

Conversion is by field name, driven by the IdlStruct's annotations (a plan built once per class): nested
messages recurse, sequences of messages map item by item, ``uint8[]`` buffers pass as one memoryview (no copy),
everything else is taken as it is. Incoming IdlStruct messages need no conversion for the node (it is
duck-typed); :func:`from_dds` turns them into our dataclasses where a plain copy is wanted (tests).
"""

from __future__ import annotations

import functools
import typing
from typing import Any

import numpy as np

from keygrid_ros.messages import from_msg, ros_type_of
from keygrid_ros.ros.dds import types as T


@functools.cache
def _plan(cls: type) -> tuple[tuple[str, str, Any], ...]:
    """Per field of ``cls``: (name, kind, sub-class) with kind in struct / structs / bytes / plain."""
    from cyclonedds.idl import IdlStruct
    from cyclonedds.idl.types import sequence, uint8

    plan = []
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        if name == 'ROS_TYPE':
            continue
        if isinstance(hint, type) and issubclass(hint, IdlStruct):
            plan.append((name, 'struct', hint))
        elif isinstance(hint, sequence) and isinstance(hint.subtype, type) and issubclass(hint.subtype, IdlStruct):
            plan.append((name, 'structs', hint.subtype))
        elif isinstance(hint, sequence) and hint.subtype == uint8:
            plan.append((name, 'bytes', None))
        else:
            plan.append((name, 'plain', None))
    return tuple(plan)


def as_bytes(value: Any) -> bytes | memoryview:
    """A uint8[] value (bytes, array.array, ndarray, list of ints) as something BytesMachine can write."""
    if isinstance(value, (bytes, bytearray)):
        return value
    if isinstance(value, np.ndarray):
        return memoryview(np.ascontiguousarray(value)).cast('B')
    if isinstance(value, memoryview):
        return value.cast('B') if value.format != 'B' or value.ndim != 1 else value
    try:
        return memoryview(value).cast('B')
    except TypeError:  # a list of ints
        return bytes(value)


def _build(cls: type, message: Any) -> Any:
    kwargs = {}
    for name, kind, sub in _plan(cls):
        if not hasattr(message, name):
            continue  # keep the IdlStruct default
        value = getattr(message, name)
        if kind == 'struct':
            kwargs[name] = value if type(value) is sub else _build(sub, value)
        elif kind == 'structs':
            kwargs[name] = [v if type(v) is sub else _build(sub, v) for v in value]
        elif kind == 'bytes':
            kwargs[name] = as_bytes(value)
        elif isinstance(value, (np.generic,)):
            kwargs[name] = value.item()
        else:
            kwargs[name] = value
    return cls(**kwargs)


def to_dds(message: Any, ros_type: str | None = None) -> Any:
    """Convert ``message`` to the IdlStruct class registered for its ROS type (ours: ``ROS_TYPE``)."""
    ros_type = ros_type or ros_type_of(message) or getattr(message, '__msgtype__', None)
    cls = T.BY_ROS_TYPE.get(ros_type)
    if cls is None:
        raise TypeError(f'no DDS type for {type(message).__name__} (ROS type {ros_type!r})')
    if type(message) is cls:
        return message
    return _build(cls, message)


def from_dds(cls: type, message: Any) -> Any:
    """An IdlStruct message as one of our dataclasses (``keygrid_ros.messages``)."""
    return from_msg(cls, message)
