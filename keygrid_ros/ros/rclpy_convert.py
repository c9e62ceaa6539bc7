"""Everything the rclpy adapter needs that is more than a call into ROS: kept here, importable without ROS.

* :func:`to_rclpy` copies one of our message dataclasses into a rosidl-generated rclpy message, driven by the
  class's ``get_fields_and_field_types()`` (nested messages recurse; ``uint8[]`` becomes ``array.array('B')``,
  the fast path of rosidl's setters; ``byte`` fields become length-1 ``bytes``; numbers get the exact Python
  type the generated setters assert).
* :func:`parameter_descriptor_fields` turns a ``ParamSpec`` into ``rcl_interfaces/ParameterDescriptor`` fields.
* :func:`plain_parameter_value` turns rclpy parameter values (``array.array`` for arrays) into schema types.
* :func:`matrix_from_tf` (re-exported) turns a tf2 ``TransformStamped`` into the node's 4x4.
"""

from __future__ import annotations

import array
from collections.abc import Callable
import importlib
from typing import Any

import numpy as np

from keygrid_ros.params import ParamSpec
from keygrid_ros.ros.tf_buffer import matrix_from_transform

_FLOATS = {'float', 'double', 'float32', 'float64'}
_INTS = {'int8', 'uint8', 'int16', 'uint16', 'int32', 'uint32', 'int64', 'uint64', 'char'}
_BYTES = {'octet', 'byte'}


def message_class(ros_type: str, importer: Callable[[str], Any] = importlib.import_module) -> type:
    """``geometry_msgs/msg/PoseArray`` (or ``geometry_msgs/PoseArray``) -> the generated rclpy class."""
    parts = ros_type.split('/')
    package, name = parts[0], parts[-1]
    return getattr(importer(f'{package}.msg'), name)


def _element_type(field_type: str) -> str:
    """``sequence<geometry_msgs/Pose, 10>`` -> ``geometry_msgs/Pose``; ``double[3]`` -> ``double``."""
    if field_type.startswith('sequence<'):
        return field_type[len('sequence<'):-1].split(',')[0].strip()
    return field_type.split('[')[0]


def _is_sequence(field_type: str) -> bool:
    return field_type.startswith('sequence<') or field_type.endswith(']')


def _scalar(value: Any, field_type: str) -> Any:
    base = field_type.split('<')[0]  # bounded strings: string<=256
    if base in _FLOATS:
        return float(value)
    if base in _INTS:
        return int(value)
    if base in _BYTES:
        return bytes([int(value)]) if not isinstance(value, (bytes, bytearray)) else bytes(value)
    if base == 'boolean':
        return bool(value)
    if base in ('string', 'wstring'):
        return str(value)
    return value


def to_rclpy(message: Any, cls: type, importer: Callable[[str], Any] = importlib.import_module) -> Any:
    """A new ``cls`` instance with every field of ``cls`` copied from ``message`` (missing ones: defaults)."""
    out = cls()
    for name, field_type in cls.get_fields_and_field_types().items():
        if not hasattr(message, name):
            continue
        value = getattr(message, name)
        if _is_sequence(field_type):
            element = _element_type(field_type)
            if element in ('uint8', 'octet'):
                buffer = array.array('B')
                buffer.frombytes(bytes(value) if isinstance(value, (list, tuple)) else memoryview(value).cast('B'))
                value = buffer
            elif '/' in element:
                element_cls = message_class(element, importer)
                value = [to_rclpy(v, element_cls, importer) for v in value]
            else:
                value = [_scalar(v, element) for v in value]
        elif '/' in field_type:
            value = to_rclpy(value, type(getattr(out, name)), importer)
        else:
            value = _scalar(value, field_type)
        setattr(out, name, value)
    return out


def parameter_descriptor_fields(spec: ParamSpec) -> dict[str, Any]:
    """Keyword arguments for ``rcl_interfaces.msg.ParameterDescriptor`` plus the ranges as plain tuples.

    Returns ``{'description', 'read_only', 'additional_constraints', 'floating_point_range', 'integer_range'}``
    where the two ranges are ``[(from, to)]`` or ``[]`` (the adapter wraps them in the range messages).
    """
    constraints = []
    if spec.choices:
        constraints.append('one of: ' + ', '.join(spec.choices))
    if spec.length is not None:
        constraints.append(f'exactly {spec.length} numbers')
    floating, integer = [], []
    if spec.min is not None or spec.max is not None:
        lo = spec.min if spec.min is not None else -np.inf
        hi = spec.max if spec.max is not None else np.inf
        if spec.type is float:
            floating = [(float(lo), float(hi))]
        elif spec.type is int:
            integer = [(int(lo), int(hi))]
    return {
        'description': spec.description,
        'read_only': spec.read_only,
        'additional_constraints': '; '.join(constraints),
        'floating_point_range': floating,
        'integer_range': integer,
    }


def plain_parameter_value(value: Any) -> Any:
    """rclpy hands arrays over as ``array.array`` (or numpy): the schema wants lists."""
    if isinstance(value, (array.array, np.ndarray, tuple)):
        return [v.item() if isinstance(v, np.generic) else v for v in list(value)]
    return value


def matrix_from_tf(transform_stamped: Any) -> np.ndarray:
    """tf2 ``TransformStamped`` (target <- source, from ``Buffer.lookup_transform``) -> (4, 4)."""
    return matrix_from_transform(transform_stamped.transform)
