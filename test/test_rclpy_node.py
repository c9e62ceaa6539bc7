"""The rclpy adapter, run against a fake ``rclpy`` module tree (rclpy cannot be installed here).

The fakes implement just the API surface the adapter uses, with the checks the real one makes where it matters:
message classes are generated from rosbags' Humble definitions and their setters assert Python types the way
rosidl-generated classes do (float for float64, length-1 bytes for ``byte``, ``array.array('B')`` for uint8[],
instances of the right class for nested messages). The test drives ``main()`` end to end: parameters declared
with descriptors, configure/activate by autostart, a cloud through the subscription, outputs published as rclpy
messages, a live parameter change, a refused read-only change, clean shutdown; and a corrupt model -> exit 1.
"""

from __future__ import annotations

import array
import enum
import sys
import time
import types

from node_fixtures import StubModel, garment_distance, synthetic_cloud, table_tf_message
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from keygrid_ros.messages import DiagnosticStatus, MarkerArray
from keygrid_ros.ros import rclpy_convert
from keygrid_ros.ros.tf_buffer import TfBuffer

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
_BASE = {'float64': 'double', 'float32': 'float', 'bool': 'boolean', 'byte': 'octet', 'char': 'uint8',
         'string': 'string'}
_CLASSES: dict[str, type] = {}


def _rosidl_type(node) -> str:
    kind, spec = node
    if kind == 1:  # BASE
        name, bound = spec
        text = _BASE.get(name, name)
        return f'{text}<={bound}' if name == 'string' and bound else text
    if kind == 2:  # NAME
        package, _, name = spec.split('/')
        return f'{package}/{name}'
    inner, length = spec
    return f'{_rosidl_type(inner)}[{length}]' if kind == 3 else f'sequence<{_rosidl_type(inner)}>'


def fake_message_class(ros_type: str) -> type:
    """A rosidl-like class: get_fields_and_field_types() and type-checking setters."""
    if ros_type in _CLASSES:
        return _CLASSES[ros_type]
    _, fields = TYPESTORE.fielddefs[ros_type]
    field_types = {name: _rosidl_type(node) for name, node in fields}

    def default(field_type):
        if field_type.startswith('sequence<'):
            return array.array('B') if field_type in ('sequence<uint8>', 'sequence<octet>') else []
        if '/' in field_type:
            return message_for(field_type)()
        return {'double': 0.0, 'float': 0.0, 'boolean': False, 'octet': b'\x00'}.get(
            field_type, '' if field_type.startswith('string') else 0)

    def check(name, value):
        field_type = field_types[name]
        if field_type in ('sequence<uint8>', 'sequence<octet>'):
            assert isinstance(value, (array.array, bytes)), (ros_type, name, type(value))
        elif field_type.startswith('sequence<'):
            inner = field_type[9:-1]
            assert isinstance(value, list), (ros_type, name)
            if '/' in inner:
                assert all(isinstance(v, message_for(inner)) for v in value), (ros_type, name)
        elif '/' in field_type:
            assert isinstance(value, message_for(field_type)), (ros_type, name, type(value))
        elif field_type in ('double', 'float'):
            assert type(value) is float, (ros_type, name, type(value))
        elif field_type == 'octet':
            assert isinstance(value, bytes) and len(value) == 1, (ros_type, name, value)
        elif field_type == 'boolean':
            assert type(value) is bool, (ros_type, name)
        elif field_type.startswith('string'):
            assert isinstance(value, str), (ros_type, name)
        else:
            assert type(value) is int, (ros_type, name, type(value))

    class Message:
        __ros_type__ = ros_type

        def __init__(self, **kwargs):
            for name, field_type in field_types.items():
                object.__setattr__(self, name, default(field_type))
            for name, value in kwargs.items():
                setattr(self, name, value)

        def __setattr__(self, name, value):
            assert name in field_types, (ros_type, name)
            check(name, value)
            object.__setattr__(self, name, value)

        @classmethod
        def get_fields_and_field_types(cls):
            return dict(field_types)

    Message.__name__ = ros_type.rsplit('/', 1)[-1]
    _CLASSES[ros_type] = Message
    return Message


def message_for(rosidl_name: str) -> type:
    package, name = rosidl_name.split('/')
    return fake_message_class(f'{package}/msg/{name}')


class _Module(types.ModuleType):
    def __getattr__(self, name):  # message modules: any class on demand
        if name.startswith('_'):
            raise AttributeError(name)
        return fake_message_class(f"{self.__name__.split('.')[0]}/msg/{name}")


class TransitionCallbackReturn(enum.IntEnum):
    SUCCESS = 97
    FAILURE = 98
    ERROR = 99


class Logger:
    def __init__(self):
        self.lines = []

    def _log(self, level):
        return lambda message: self.lines.append((level, message))

    def __getattr__(self, level):
        return self._log(level)


class Parameter:
    def __init__(self, name, value):
        self.name, self.value = name, value


class Publisher:
    def __init__(self, cls, topic, qos):
        self.cls, self.topic, self.qos, self.sent, self.active = cls, topic, qos, [], False

    def publish(self, message):
        assert isinstance(message, self.cls)
        assert self.active, 'lifecycle publisher used while inactive'
        self.sent.append(message)


class LifecycleNode:
    """Just enough of rclpy.lifecycle.LifecycleNode."""

    instances: list = []

    def __init__(self, node_name, **kwargs):
        self.node_name = node_name
        self.parameters, self.descriptors, self.callbacks = {}, {}, []
        self.lifecycle_publishers, self.subscriptions, self.logger = [], [], Logger()
        self.state = 'unconfigured'
        LifecycleNode.instances.append(self)

    def declare_parameter(self, name, value, descriptor):
        self.parameters[name] = Parameter(name, value)
        self.descriptors[name] = descriptor
        return self.parameters[name]

    def get_parameter(self, name):
        return self.parameters[name]

    def set_parameters(self, parameters):
        results = [callback(parameters) for callback in self.callbacks]
        if all(r.successful for r in results):
            for p in parameters:
                self.parameters[p.name] = p
        return results

    def add_on_set_parameters_callback(self, callback):
        self.callbacks.append(callback)

    def create_lifecycle_publisher(self, cls, topic, qos):
        publisher = Publisher(cls, topic, qos)
        self.lifecycle_publishers.append(publisher)
        return publisher

    def destroy_lifecycle_publisher(self, publisher):
        self.lifecycle_publishers.remove(publisher)

    def create_subscription(self, cls, topic, callback, qos):
        self.subscriptions.append((cls, topic, callback, qos))
        return self.subscriptions[-1]

    def destroy_subscription(self, subscription):
        self.subscriptions.remove(subscription)

    def get_clock(self):
        return types.SimpleNamespace(now=lambda: types.SimpleNamespace(nanoseconds=time.time_ns()))

    def get_logger(self):
        return self.logger

    def destroy_node(self):
        self.state = 'destroyed'

    def _transition(self, callback, success_state):
        result = callback(None)
        if result == TransitionCallbackReturn.SUCCESS:
            self.state = success_state
        return result

    def trigger_configure(self):
        return self._transition(self.on_configure, 'inactive')

    def trigger_activate(self):
        return self._transition(self.on_activate, 'active')

    def trigger_shutdown(self):
        return self._transition(self.on_shutdown, 'finalized')

    def on_configure(self, state):
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state):
        for publisher in self.lifecycle_publishers:
            publisher.active = True
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state):
        for publisher in self.lifecycle_publishers:
            publisher.active = False
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state):
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state):
        return TransitionCallbackReturn.SUCCESS


class Tf2Buffer:
    """tf2_ros.Buffer stand-in backed by our TfBuffer (table <- camera known)."""

    def __init__(self):
        self.inner = TfBuffer()
        self.inner.set_tf_message(table_tf_message(), static=True)
        self.calls = []

    def lookup_transform(self, target, source, when, timeout):
        self.calls.append((target, source, when.nanoseconds, timeout.nanoseconds))
        matrix = self.inner.lookup(target, source, when.nanoseconds)
        from keygrid_ros.perception.postprocess import quaternion_from_matrix

        q = quaternion_from_matrix(matrix[:3, :3])
        t = matrix[:3, 3]
        return types.SimpleNamespace(transform=types.SimpleNamespace(
            translation=types.SimpleNamespace(x=t[0], y=t[1], z=t[2]),
            rotation=types.SimpleNamespace(x=q[0], y=q[1], z=q[2], w=q[3])))


@pytest.fixture
def fake_ros(monkeypatch):
    """Inject the fake module tree; ``spin`` runs ``state['during_spin'](node)`` then returns."""
    state = {'during_spin': None, 'broadcast': [], 'inited': False, 'shutdown': False}

    def module(name, **attrs):
        mod = _Module(name) if name.endswith('.msg') and not name.startswith('rcl_') else types.ModuleType(name)
        for key, value in attrs.items():
            setattr(mod, key, value)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod

    class Kw:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    def spin(node):
        state['during_spin'](node)

    rclpy = module('rclpy', init=lambda args=None: state.update(inited=True), ok=lambda: True, spin=spin,
                   try_shutdown=lambda: state.update(shutdown=True))
    rclpy.executors = module('rclpy.executors', ExternalShutdownException=type('ExternalShutdownException',
                                                                                (Exception,), {}))
    rclpy.lifecycle = module('rclpy.lifecycle', LifecycleNode=LifecycleNode,
                             TransitionCallbackReturn=TransitionCallbackReturn)
    rclpy.qos = module('rclpy.qos', QoSProfile=Kw, ReliabilityPolicy=types.SimpleNamespace(RELIABLE='reliable'),
                       qos_profile_sensor_data='sensor_data')
    rclpy.time = module('rclpy.time', Time=Kw)
    rclpy.duration = module('rclpy.duration', Duration=Kw)
    module('rcl_interfaces')
    module('rcl_interfaces.msg', ParameterDescriptor=Kw, FloatingPointRange=Kw, IntegerRange=Kw,
           SetParametersResult=Kw)
    module('tf2_ros', Buffer=Tf2Buffer, TransformListener=lambda buffer, node: None,
           TransformBroadcaster=lambda node: types.SimpleNamespace(sendTransform=state['broadcast'].extend))
    for package in ('geometry_msgs', 'sensor_msgs', 'std_msgs', 'visualization_msgs', 'diagnostic_msgs',
                    'builtin_interfaces', 'tf2_msgs'):
        module(package)
        module(f'{package}.msg')
    monkeypatch.setattr('keygrid_ros.ros.node.load_model', lambda path, model_type, device, **_: StubModel())
    monkeypatch.setattr('keygrid_ros.ros.node.resolve_model_path', lambda path, share=None: path)
    LifecycleNode.instances.clear()
    return state


def to_rclpy_cloud(cloud):
    """A cloud as rclpy would deliver it (data as array.array('B'))."""
    return rclpy_convert.to_rclpy(cloud, fake_message_class('sensor_msgs/msg/PointCloud2'))


def test_main_configures_activates_detects_and_shuts_down(fake_ros):
    from keygrid_ros.ros import rclpy_node

    seen = {}

    def during_spin(node):
        assert node.state == 'active'
        (cls, topic, callback, qos), = node.subscriptions
        assert (topic, qos) == ('points', 'sensor_data')
        node.parameters['target_frame'] = Parameter('target_frame', 'table')  # as if from the params file
        ok = node.set_parameters([Parameter('target_frame', 'table'), Parameter('publish_tf', True)])
        assert all(r.successful for r in ok)
        refused = node.set_parameters([Parameter('device', 'cuda:3')])
        assert not refused[0].successful and 'read-only' in refused[0].reason
        bad = node.set_parameters([Parameter('crop.min', array.array('d', [1.0, 1.0, 9.0]))])
        assert not bad[0].successful
        callback(to_rclpy_cloud(synthetic_cloud(time.time_ns())))
        publishers = {p.topic: p for p in node.lifecycle_publishers}
        deadline = time.monotonic() + 60
        # The worker thread publishes the diagnostics just after the keypoints: wait for both, or a loaded
        # machine can take the snapshot between the two.
        while not (publishers['keypoints'].sent and publishers['/diagnostics'].sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        seen.update({topic: list(p.sent) for topic, p in publishers.items()})

    fake_ros['during_spin'] = during_spin
    assert rclpy_node.main() == 0
    node = LifecycleNode.instances[-1]
    assert node.state == 'destroyed' and fake_ros['shutdown']
    # every schema parameter declared with its description, range and read-only flag
    descriptor = node.descriptors['voxel_size']
    assert descriptor.description and descriptor.floating_point_range[0].to_value == 0.05
    assert node.descriptors['model_path'].read_only and node.descriptors['table.iterations'].integer_range
    assert {'keypoints', 'garment_pose', '~/markers', '~/cropped_points', '/diagnostics'} == set(seen)
    (poses,) = seen['keypoints']
    assert poses.header.frame_id == 'table' and len(poses.poses) == 8
    xyz = np.array([[p.position.x, p.position.y, p.position.z] for p in poses.poses])
    assert garment_distance(xyz).max() < 0.01
    (markers,) = seen['~/markers']
    assert markers.markers[0].action == 3 and isinstance(markers, fake_message_class(MarkerArray.ROS_TYPE))
    assert isinstance(seen['/diagnostics'][0].status[0].level, bytes)
    assert [t.child_frame_id for t in fake_ros['broadcast']] == [f'keygrid_kp_{i}' for i in range(8)]


def test_corrupt_model_fails_configure_and_main_returns_one(fake_ros, monkeypatch):
    from keygrid_ros.perception.detector import ModelLoadError
    from keygrid_ros.ros import rclpy_node

    def broken(path, model_type, device, **_):
        raise ModelLoadError(f'cannot load model {path}: corrupt header')

    monkeypatch.setattr('keygrid_ros.ros.node.load_model', broken)
    fake_ros['during_spin'] = lambda node: pytest.fail('must not spin')
    assert rclpy_node.main() == 1
    node = LifecycleNode.instances[-1]
    assert node.state == 'destroyed' and not node.lifecycle_publishers
    assert any(level == 'error' and 'corrupt header' in text for level, text in node.logger.lines)


def test_conversion_of_every_output_type(fake_ros):
    """Our dataclasses -> rosidl-like classes with strict setters, for each output and the input cloud."""
    from keygrid_ros.messages import DiagnosticArray, KeyValue, Marker, Point, PointCloud2

    cloud = rclpy_convert.to_rclpy(synthetic_cloud(5), fake_message_class(PointCloud2.ROS_TYPE))
    assert isinstance(cloud.data, array.array) and len(cloud.data) == 640 * 480 * 16
    marker = rclpy_convert.to_rclpy(MarkerArray(markers=[Marker(points=[Point(x=1)], id=3)]),
                                    fake_message_class(MarkerArray.ROS_TYPE))
    assert marker.markers[0].points[0].x == 1.0 and marker.markers[0].id == 3
    diagnostics = rclpy_convert.to_rclpy(
        DiagnosticArray(status=[DiagnosticStatus(level=2, values=[KeyValue('a', 'b')])]),
        fake_message_class(DiagnosticArray.ROS_TYPE))
    assert diagnostics.status[0].level == b'\x02' and diagnostics.status[0].values[0].value == 'b'
    from keygrid_ros.perception.pointcloud2 import read_xyz

    assert np.array_equal(read_xyz(cloud, skip_nans=False), read_xyz(synthetic_cloud(5), skip_nans=False),
                          equal_nan=True)
    assert rclpy_convert.plain_parameter_value(array.array('d', [1.0, 2.0])) == [1.0, 2.0]
