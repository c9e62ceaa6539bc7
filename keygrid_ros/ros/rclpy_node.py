"""The rclpy transport: ``ros2 run keygrid_ros detector`` / ``ros2 launch keygrid_ros detect.launch.py``.

A thin lifecycle adapter around :class:`keygrid_ros.ros.node.DetectorNode`; every decision lives there or in
:mod:`keygrid_ros.ros.rclpy_convert`. Works on Humble and Jazzy: no ``with rclpy.init()`` (Jazzy returns
None), no pre/post set-parameter callbacks (Iron+), no ``LifecycleNode(autostart=)`` (launch_ros, Jazzy+):
``main`` triggers configure and activate itself when the ``autostart`` parameter is true (the default).

Lifecycle (demos/lifecycle_py conventions):

* configure: declare-time parameters are read, TF listener and lifecycle publishers created, the model
  loaded (a missing or corrupt model: FAILURE, the node stays unconfigured and ``main`` exits non-zero);
* activate: the ``points`` subscription (sensor-data QoS) and the worker thread start;
* deactivate: both stop (the model stays loaded); cleanup/shutdown: everything is released (GPU memory too).

Topics and QoS: ``points`` in (SensorDataQoS: best effort, matches every driver); ``keypoints``,
``garment_pose``, ``~/markers``, ``~/cropped_points``, ``/diagnostics`` out (reliable, what RViz requests);
``/tf`` through tf2's TransformBroadcaster. rclpy is imported only when the node starts, so the package
imports without ROS.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from keygrid_ros.params import DETECT_PARAMS
from keygrid_ros.ros import rclpy_convert as convert
from keygrid_ros.ros.node import INPUT, NODE_NAME, OUTPUTS, DetectorNode, NodeStartupError, check_parameter_changes


class Tf2Lookup:
    """``lookup(target, source, stamp_ns, timeout_s) -> (4, 4)`` on a tf2_ros Buffer (raises tf2 errors)."""

    def __init__(self, buffer: Any):
        self.buffer = buffer

    def lookup(self, target: str, source: str, stamp_ns: int, timeout_s: float):
        from rclpy.duration import Duration
        from rclpy.time import Time

        transform = self.buffer.lookup_transform(target, source, Time(nanoseconds=stamp_ns),
                                                 timeout=Duration(nanoseconds=int(timeout_s * 1e9)))
        return convert.matrix_from_tf(transform)


def make_node_class():
    """The LifecycleNode subclass (built on first use: its base class is rclpy's)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
    from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from tf2_ros import Buffer, TransformBroadcaster, TransformListener

    def descriptor(spec) -> ParameterDescriptor:
        fields = convert.parameter_descriptor_fields(spec)
        return ParameterDescriptor(
            description=fields['description'], read_only=fields['read_only'],
            additional_constraints=fields['additional_constraints'],
            floating_point_range=[FloatingPointRange(from_value=lo, to_value=hi, step=0.0)
                                  for lo, hi in fields['floating_point_range']],
            integer_range=[IntegerRange(from_value=lo, to_value=hi, step=0) for lo, hi in fields['integer_range']])

    class KeygridDetector(LifecycleNode):
        """The keygrid detector as a managed node; see the module docstring."""

        def __init__(self, **kwargs: Any):
            self._logic: DetectorNode | None = None
            self._outputs: dict[str, tuple[Any, type]] = {}
            self._subscription = None
            self._tf_buffer = None
            self._tf_listener = None
            self._broadcaster = None
            self._worker: threading.Thread | None = None
            self._stop = threading.Event()
            super().__init__(NODE_NAME, **kwargs)
            self.declare_parameter('autostart', True, ParameterDescriptor(
                description='Configure and activate at start-up (false: wait for lifecycle transitions).',
                read_only=True))
            for spec in DETECT_PARAMS:
                self.declare_parameter(spec.name, spec.default, descriptor(spec))
            self.add_on_set_parameters_callback(self._on_set_parameters)

        # ---------------------------------------------------------------------------------- transitions
        def on_configure(self, state) -> TransitionCallbackReturn:
            """Load the model, create publishers and TF. SUCCESS -> inactive; FAILURE stays unconfigured."""
            values = {s.name: convert.plain_parameter_value(self.get_parameter(s.name).value) for s in DETECT_PARAMS}
            self._tf_buffer = Buffer()
            self._tf_listener = TransformListener(self._tf_buffer, self)
            self._broadcaster = TransformBroadcaster(self)
            for topic in OUTPUTS:
                if topic.name == '/tf':
                    continue  # through the TransformBroadcaster
                cls = convert.message_class(topic.type.ROS_TYPE)
                qos = QoSProfile(depth=topic.depth, reliability=ReliabilityPolicy.RELIABLE)
                self._outputs[topic.name] = (self.create_lifecycle_publisher(cls, topic.name, qos), cls)
            try:
                self._logic = DetectorNode(values, self._publish, tf=Tf2Lookup(self._tf_buffer),
                                           clock=lambda: self.get_clock().now().nanoseconds,
                                           logger=self.get_logger())
            except NodeStartupError as exc:
                self.get_logger().error(str(exc))
                self._release()
                return TransitionCallbackReturn.FAILURE
            return super().on_configure(state)

        def on_activate(self, state) -> TransitionCallbackReturn:
            """Subscribe and start the worker. SUCCESS -> active (lifecycle publishers enabled)."""
            cloud_cls = convert.message_class(INPUT.type.ROS_TYPE)
            self._subscription = self.create_subscription(cloud_cls, INPUT.name, self._logic.on_cloud,
                                                          qos_profile_sensor_data)
            self._stop.clear()
            self._worker = threading.Thread(target=self._logic.spin, args=(self._stop,), name='keygrid_worker',
                                            daemon=True)
            self._worker.start()
            return super().on_activate(state)

        def on_deactivate(self, state) -> TransitionCallbackReturn:
            """Stop the worker and the subscription. SUCCESS -> inactive (model stays loaded)."""
            self._stop_worker()
            return super().on_deactivate(state)

        def on_cleanup(self, state) -> TransitionCallbackReturn:
            """Release model, publishers and TF. SUCCESS -> unconfigured."""
            self._release()
            return super().on_cleanup(state)

        def on_shutdown(self, state) -> TransitionCallbackReturn:
            """From any state: stop and release everything. SUCCESS -> finalized."""
            self._stop_worker()
            self._release()
            return super().on_shutdown(state)

        # ---------------------------------------------------------------------------------- plumbing
        def _stop_worker(self) -> None:
            self._stop.set()
            if self._logic is not None:
                self._logic.close()
            if self._worker is not None:
                self._worker.join(timeout=10.0)
                self._worker = None
            if self._subscription is not None:
                self.destroy_subscription(self._subscription)
                self._subscription = None

        def _release(self) -> None:
            for publisher, _ in self._outputs.values():
                self.destroy_lifecycle_publisher(publisher)
            self._outputs.clear()
            self._logic = None  # drops the model
            self._tf_listener = self._tf_buffer = self._broadcaster = None
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()  # give the GPU memory back while unconfigured
            except ImportError:
                pass

        def _publish(self, name: str, message: Any) -> None:
            if name == '/tf':
                cls = convert.message_class('geometry_msgs/msg/TransformStamped')
                self._broadcaster.sendTransform([convert.to_rclpy(t, cls) for t in message.transforms])
                return
            publisher, cls = self._outputs[name]
            publisher.publish(convert.to_rclpy(message, cls))

        def _on_set_parameters(self, parameters) -> SetParametersResult:
            changes = {p.name: convert.plain_parameter_value(p.value) for p in parameters}
            if self._logic is not None:
                ok, reason = self._logic.set_parameters(changes)
            else:  # not configured yet: validate, the values are read at configure
                current = {s.name: convert.plain_parameter_value(self.get_parameter(s.name).value)
                           for s in DETECT_PARAMS}
                _, reason = check_parameter_changes(current, changes)
                ok = not reason
            return SetParametersResult(successful=ok, reason=reason)

    return KeygridDetector


def main(args: list[str] | None = None) -> int:
    """Console script ``detector``: start, self-activate (autostart), spin; non-zero exit if it cannot start."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.lifecycle import TransitionCallbackReturn

    rclpy.init(args=args)
    node = None
    try:
        node = make_node_class()()
        if node.get_parameter('autostart').value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                return 1  # the reason was logged by on_configure
            if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().error('activation failed')
                return 1
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            if rclpy.ok():  # after Ctrl-C the context is already gone; the process is leaving anyway
                node.trigger_shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
