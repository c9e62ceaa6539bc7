"""The Cyclone DDS configuration a ROS 2 node with rmw_cyclonedds would use, plus socket-buffer tuning.

No single configuration discovers every ROS 2 setup (Humble's ``ROS_LOCALHOST_ONLY`` and Jazzy's
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` configurations do not see each other), so we generate exactly the
fragment rmw_cyclonedds generates from the same environment variables (``check_create_domain`` in
rmw_node.cpp: Humble and Jazzy branches), then our tuning, then ``$CYCLONEDDS_URI`` last, as rmw appends it.

Tuning: 640x480 clouds are 3.7 MB; with Cyclone's default receive buffer, best-effort clouds are silently lost
(22-48 % measured). A bigger ``SocketReceiveBufferSize`` (bounded by ``net.core.rmem_max``) and 65500-byte
messages fix it. The *receiving* side needs it: ROS subscribers of our outputs are small messages and need
nothing; a ROS *publisher* of clouds to us is received through this configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
import os

RMEM_MAX_PATH = '/proc/sys/net/core/rmem_max'
MAX_RECEIVE_BUFFER = 8 * 1024 * 1024


def discovery_fragment(distro: str, env: Mapping[str, str] | None = None) -> str:
    """The XML rmw_cyclonedds of ``distro`` ('humble' or 'jazzy') builds from the environment ('' if none)."""
    env = os.environ if env is None else env
    localhost_only = env.get('ROS_LOCALHOST_ONLY', '') == '1'
    if distro == 'humble':
        if not localhost_only:
            return ''
        return ('<CycloneDDS><Domain><General><Interfaces><NetworkInterface address="127.0.0.1"/>'
                '</Interfaces></General></Domain></CycloneDDS>')
    if distro != 'jazzy':
        raise ValueError(f"distro must be 'humble' or 'jazzy', got {distro!r}")
    discovery_range = 'LOCALHOST' if localhost_only else (env.get('ROS_AUTOMATIC_DISCOVERY_RANGE', '') or 'SUBNET')
    peers = [] if localhost_only else [p for p in env.get('ROS_STATIC_PEERS', '').split(';') if p]
    flags = {  # (localhost as peer, static peers, no multicast), per rmw's switch
        'SUBNET': (False, True, False),
        'SYSTEM_DEFAULT': (False, False, False),
        'LOCALHOST': (True, True, True),
        'OFF': (False, False, True),
    }.get(discovery_range, (True, True, True))  # rcl: an invalid value means localhost only
    add_localhost, add_peers, no_multicast = flags
    if not (add_localhost or add_peers or no_multicast):
        return ''
    xml = '<CycloneDDS><Domain>'
    if no_multicast:
        xml += '<General><AllowMulticast>false</AllowMulticast></General>'
    if no_multicast and not add_localhost and not add_peers:
        xml += f'<Discovery><ParticipantIndex>none</ParticipantIndex><Tag>ros_discovery_off_{os.getpid()}</Tag>'
    else:
        xml += ('<Discovery><ParticipantIndex>auto</ParticipantIndex>'
                '<MaxAutoParticipantIndex>32</MaxAutoParticipantIndex>')
    listed = (['localhost'] if add_localhost else []) + (peers if add_peers else [])
    if listed:
        xml += '<Peers>' + ''.join(f'<Peer address="{p}"/>' for p in listed) + '</Peers>'
    return xml + '</Discovery></Domain></CycloneDDS>'


def receive_buffer_bytes() -> int:
    """The socket receive buffer to ask for: up to 8 MiB, never more than the kernel allows."""
    try:
        with open(RMEM_MAX_PATH, encoding='ascii') as stream:
            rmem_max = int(stream.read().strip())
    except (OSError, ValueError):
        return 4 * 1024 * 1024
    return max(min(rmem_max, MAX_RECEIVE_BUFFER), 65536)


def tuning_fragment() -> str:
    return ('<CycloneDDS><Domain><General><MaxMessageSize>65500B</MaxMessageSize></General>'
            f'<Internal><SocketReceiveBufferSize min="default" max="{receive_buffer_bytes()}B"/></Internal>'
            '</Domain></CycloneDDS>')


def cyclone_config(distro: str, env: Mapping[str, str] | None = None) -> str:
    """Comma-separated fragments for ``cyclonedds.domain.Domain(domain_id, config)``; later ones win."""
    env = os.environ if env is None else env
    fragments = [discovery_fragment(distro, env), tuning_fragment(), env.get('CYCLONEDDS_URI', '')]
    return ','.join(f for f in fragments if f)
