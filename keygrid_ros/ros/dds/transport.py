"""DDS-direct transport: the detector node on a ROS 2 graph through cyclonedds, without ROS 2 installed.

    keygrid detect --transport dds --domain 0 --points /camera/depth/points --set target_frame:=base_link

What makes it look like a ROS 2 node to rmw_cyclonedds peers (facts: ``reference/ros2_wire.md``):
topics ``rt/<fully qualified name>``, types ``<pkg>::msg::dds_::<Name>_`` (``types.py``), XCDR1 keyless
samples, rmw's QoS mapping (``qos.py``), rmw's discovery configuration for the same environment
(``config.py``), participant USER_DATA ``enclave=/;``, on Jazzy endpoint USER_DATA ``typehash=RIHS01_...;``,
and a ``ros_discovery_info`` sample naming the node and its endpoints, so ``ros2 node list`` shows it.

Never import this module in a process that has rclpy loaded (two different libddsc in one process).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import logging
import os
import signal
import threading
import time
from typing import Any

from keygrid_ros.ros.dds import types as T
from keygrid_ros.ros.dds.config import cyclone_config
from keygrid_ros.ros.dds.convert import to_dds
from keygrid_ros.ros.dds.qos import ros_qos
from keygrid_ros.ros.node import resolve_name

LOG = logging.getLogger('keygrid.detect.dds')
DISTROS = ('humble', 'jazzy')


def default_distro() -> str:
    distro = os.environ.get('ROS_DISTRO', '').lower()
    return distro if distro in DISTROS else 'humble'


def fully_qualified(name: str, node_name: str, namespace: str = '', remap: Mapping[str, str] | None = None) -> str:
    """ROS name resolution (see :func:`keygrid_ros.ros.node.resolve_name`)."""
    return resolve_name(name, node_name, namespace, remap)


def dds_topic_name(fq_name: str) -> str:
    """``/camera/points`` -> ``rt/camera/points`` (rmw's ROS topic prefix)."""
    return 'rt' + fq_name


_TYPE_HASHES: dict[str, bytes] = {}


def type_hash_user_data(ros_type: str) -> bytes:
    """``typehash=RIHS01_<hex>;`` for Jazzy endpoints (computed by rosbags from the Jazzy definitions)."""
    if ros_type not in _TYPE_HASHES:
        from rosbags.typesys import Stores, get_typestore

        _TYPE_HASHES[ros_type] = f'typehash={get_typestore(Stores.ROS2_JAZZY).hash_rihs01(ros_type)};'.encode()
    return _TYPE_HASHES[ros_type]


_DOMAINS: dict[int, tuple[Any, str]] = {}
_DOMAINS_LOCK = threading.Lock()


def _domain(domain_id: int, config: str) -> Any:
    """The process's one Cyclone domain object per id (a second ``Domain(id)`` is refused, as rmw knows: it
    reference-counts them). Participants in the same process and domain must share the configuration."""
    from cyclonedds.domain import Domain

    with _DOMAINS_LOCK:
        known = _DOMAINS.get(domain_id)
        if known is None:
            known = (Domain(domain_id, config), config)
            _DOMAINS[domain_id] = known
        elif known[1] != config:
            raise ValueError(f'DDS domain {domain_id} already exists in this process with another configuration')
        return known[0]


class DdsTransport:
    """One DDS participant acting as one ROS 2 node: publishers, subscriptions and the graph entry.

    Thread-safe publishing; subscription callbacks run on Cyclone's receive threads (keep them short: the node
    only drops the message into its one-slot mailbox).
    """

    def __init__(self, node_name: str, namespace: str = '', domain_id: int | None = None, distro: str | None = None,
                 remap: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None):
        from cyclonedds.core import Policy, Qos
        from cyclonedds.domain import DomainParticipant

        env = os.environ if env is None else env
        self.node_name = node_name
        self.namespace = '/' + namespace.strip('/') if namespace.strip('/') else '/'
        self.distro = distro or default_distro()
        if self.distro not in DISTROS:
            raise ValueError(f'distro must be one of {DISTROS}, got {self.distro!r}')
        self.domain_id = int(env.get('ROS_DOMAIN_ID', '0') or 0) if domain_id is None else int(domain_id)
        self.remap = dict(remap or {})
        self.config = cyclone_config(self.distro, env)
        self._domain = _domain(self.domain_id, self.config)
        self.participant = DomainParticipant(self.domain_id, qos=Qos(Policy.Userdata(data=b'enclave=/;')))
        self._topics: dict[str, Any] = {}
        self._writers: list[Any] = []
        self._readers: list[Any] = []
        self._lock = threading.Lock()
        self._graph_writer = None
        self._graph_sample = None

    # ------------------------------------------------------------------------------------------ endpoints
    def _topic(self, name: str, idl_type: type) -> Any:
        from cyclonedds.topic import Topic

        key = f'{name}|{idl_type.__name__}'
        if key not in self._topics:
            self._topics[key] = Topic(self.participant, name, idl_type)
        return self._topics[key]

    def _user_data(self, ros_type: str) -> bytes | None:
        return type_hash_user_data(ros_type) if self.distro != 'humble' else None

    def resolve(self, name: str) -> str:
        ns = '' if self.namespace == '/' else self.namespace
        return fully_qualified(name, self.node_name, ns, self.remap)

    def publisher(self, name: str, ros_type: str, qos: str = 'reliable', depth: int = 10) -> Callable[[Any], None]:
        """A ``publish(message)`` callable for ROS topic ``name`` (any duck-typed message of ``ros_type``)."""
        from cyclonedds.pub import DataWriter

        idl_type = T.BY_ROS_TYPE[ros_type]
        topic = self._topic(dds_topic_name(self.resolve(name)), idl_type)
        writer = DataWriter(self.participant, topic, qos=ros_qos(qos, depth, user_data=self._user_data(ros_type)))
        self._writers.append(writer)
        self._update_graph()

        def publish(message: Any) -> None:
            writer.write(to_dds(message, ros_type))

        return publish

    def subscribe(self, name: str, ros_type: str, callback: Callable[[Any], None], qos: str = 'sensor_data',
                  depth: int = 5, latest_only: bool = False) -> Any:
        """Call ``callback(message)`` (an IdlStruct, duck-typed like ours) for each sample on ``name``.

        ``latest_only``: when several samples are waiting, deliver only the newest (what a keep-latest consumer
        wants; saves deserialising clouds nobody will look at).
        """
        from cyclonedds.core import Listener
        from cyclonedds.sub import DataReader

        idl_type = T.BY_ROS_TYPE[ros_type]
        topic = self._topic(dds_topic_name(self.resolve(name)), idl_type)

        def on_data_available(reader: Any) -> None:
            try:
                samples = [s for s in reader.take(N=64) if isinstance(s, idl_type)]
            except Exception as exc:  # a malformed sample must not kill Cyclone's thread
                LOG.warning(f'dropping undecodable sample on {name}: {exc}')
                return
            for sample in samples[-1:] if latest_only else samples:
                callback(sample)

        reader = DataReader(self.participant, topic,
                            qos=ros_qos(qos, depth, reader=True, user_data=self._user_data(ros_type)),
                            listener=Listener(on_data_available=on_data_available))
        self._readers.append(reader)
        self._update_graph()
        return reader

    # ----------------------------------------------------------------------------------------------- graph
    def _gid(self, entity: Any, size: int) -> bytes:
        return entity.guid.bytes + bytes(size - 16)

    def _update_graph(self) -> None:
        """(Re)publish our ros_discovery_info entry: this participant hosts one node with these endpoints."""
        from cyclonedds.pub import DataWriter

        participant_cls, node_cls, gid_cls, size = T.GRAPH_TYPES[self.distro]
        with self._lock:
            if self._graph_writer is None:
                topic = self._topic('ros_discovery_info', participant_cls)
                self._graph_writer = DataWriter(self.participant, topic, qos=ros_qos('graph', 1))
            node = node_cls(node_namespace=self.namespace, node_name=self.node_name,
                            reader_gid_seq=[gid_cls(data=self._gid(r, size)) for r in self._readers],
                            writer_gid_seq=[gid_cls(data=self._gid(w, size)) for w in self._writers])
            self._graph_sample = participant_cls(gid=gid_cls(data=self._gid(self.participant, size)),
                                                 node_entities_info_seq=[node])
            self._graph_writer.write(self._graph_sample)

    def close(self) -> None:
        """Leave the graph: an empty node list, then delete every entity."""
        with self._lock:
            if self._graph_writer is not None and self._graph_sample is not None:
                participant_cls = type(self._graph_sample)
                try:
                    self._graph_writer.write(participant_cls(gid=self._graph_sample.gid, node_entities_info_seq=[]))
                except Exception:  # shutting down anyway
                    pass
        self._readers.clear()  # dropping the last references deletes the DDS entities
        self._writers.clear()
        self.participant = None


def run_dds(values: Mapping[str, Any], *, domain: int | None = None, namespace: str = '', points: str = 'points',
            distro: str | None = None, duration: float = 0.0, model: Any = None,
            ready: Callable[[], None] | None = None) -> int:
    """Run the detector node over DDS until Ctrl-C / SIGTERM (or ``duration`` seconds). Returns 0."""
    from keygrid_ros.messages import TFMessage
    from keygrid_ros.ros.node import INPUT, NODE_NAME, OUTPUTS, TF_INPUTS, DetectorNode
    from keygrid_ros.ros.tf_buffer import TfBuffer

    logger = logging.getLogger('keygrid.detect.node')
    remap = {INPUT.name: points} if points and points != INPUT.name else {}
    transport = DdsTransport(NODE_NAME, namespace, domain, distro, remap)
    tf = TfBuffer()
    publishers = {topic.name: transport.publisher(topic.name, topic.type.ROS_TYPE, topic.qos, topic.depth)
                  for topic in OUTPUTS}

    def publish(name: str, message: Any) -> None:
        publishers[name](message)

    node = DetectorNode(values, publish, tf=tf, clock=time.time_ns, logger=logger, model=model)
    for topic in TF_INPUTS:
        static = topic.qos == 'tf_static'
        transport.subscribe(topic.name, TFMessage.ROS_TYPE, lambda m, s=static: tf.set_tf_message(m, static=s),
                            qos=topic.qos, depth=topic.depth)
    transport.subscribe(INPUT.name, INPUT.type.ROS_TYPE, node.on_cloud, qos=INPUT.qos, depth=INPUT.depth,
                        latest_only=True)
    logger.info(f"keygrid detector on DDS domain {transport.domain_id} ({transport.distro} layout): "
                f"input {transport.resolve(INPUT.name)}, outputs "
                + ', '.join(transport.resolve(t.name) for t in OUTPUTS))

    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    if duration > 0:
        timer = threading.Timer(duration, stop.set)
        timer.daemon = True
        timer.start()
    if ready is not None:
        ready()
    try:
        node.spin(stop)
    finally:
        node.close()
        transport.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info(f"stopped: {node.stats['detected']} detections, {node.stats['failed']} failed frames, "
                    f'{node.slot.overwritten} clouds replaced by newer ones')
    return 0
