"""ROS 2 QoS profiles -> cyclonedds Qos, as rmw_cyclonedds maps them (``create_readwrite_qos``).

Kinds (``keygrid_ros.ros.node.Topic.qos``): ``sensor_data`` (BEST_EFFORT, VOLATILE, KEEP_LAST depth: rmw's
sensor-data profile, matches reliable and best-effort publishers), ``reliable`` (RELIABLE, VOLATILE, KEEP_LAST
depth: rmw's default profile; what RViz requests), ``tf`` (tf2's dynamic profile: reliable, volatile, depth 100),
``tf_static`` (tf2's static profile: reliable, transient-local, depth 1 for writers / 100 for readers), and
``graph`` (ros_discovery_info: reliable, transient-local, keep last 1 / keep all for the reader).

Always set, as rmw does: WriterDataLifecycle(autodispose=False), automatic liveliness with an infinite lease,
and XCDR1 data representation (rmw_cyclonedds accepts only XCDR1). Jazzy peers also read ``typehash=...;``
from endpoint USER_DATA (informational for DDS RMWs); pass it as ``user_data``.
"""

from __future__ import annotations

from cyclonedds.core import Policy, Qos
from cyclonedds.util import duration

KINDS = ('sensor_data', 'reliable', 'tf', 'tf_static', 'graph')
INFINITE = duration(infinite=True)


def ros_qos(kind: str, depth: int = 10, *, reader: bool = False, user_data: bytes | None = None) -> Qos:
    """The Qos for one endpoint of ``kind`` (see module docstring)."""
    if kind not in KINDS:
        raise ValueError(f'unknown QoS kind {kind!r}; expected one of {KINDS}')
    policies = [
        Policy.DataRepresentation(use_cdrv0_representation=True),
        Policy.Liveliness.Automatic(lease_duration=INFINITE),
    ]
    if not reader:
        policies.append(Policy.WriterDataLifecycle(autodispose=False))
    if kind == 'sensor_data':
        policies += [Policy.Reliability.BestEffort, Policy.Durability.Volatile, Policy.History.KeepLast(depth)]
    elif kind in ('reliable', 'tf'):
        policies += [Policy.Reliability.Reliable(max_blocking_time=INFINITE), Policy.Durability.Volatile,
                     Policy.History.KeepLast(depth)]
    else:  # tf_static, graph: late joiners get the last value
        history = Policy.History.KeepAll if (kind == 'graph' and reader) else Policy.History.KeepLast(
            depth if reader else 1)
        policies += [Policy.Reliability.Reliable(max_blocking_time=INFINITE), Policy.Durability.TransientLocal,
                     history]
        if not reader:
            policies.append(Policy.DurabilityService(cleanup_delay=0, history=Policy.History.KeepLast(1),
                                                     max_samples=-1, max_instances=-1, max_samples_per_instance=-1))
        if kind == 'graph' and reader:
            policies.append(Policy.IgnoreLocal.Participant)
    if user_data:
        policies.append(Policy.Userdata(data=user_data))
    return Qos(*policies)
