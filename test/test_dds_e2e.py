"""End to end over real DDS on loopback: camera process (30 Hz, 640x480) -> node process -> this process.

Each test gets its own random domain and stays on loopback (ROS_LOCALHOST_ONLY=1), so parallel runs never meet.
The node runs an untrained Key-Grid (256 points, quick on a CPU): its keypoints are still input points, so
they must lie on the garment.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip('cyclonedds')

from node_fixtures import garment_distance, random_keygrid_file  # noqa: E402

from keygrid_ros.bench import node as bench  # noqa: E402
from keygrid_ros.messages import Marker  # noqa: E402

SECOND = 1_000_000_000


def stamp_of(message) -> int:
    return message.header.stamp.sec * SECOND + message.header.stamp.nanosec


@pytest.fixture
def domain():
    return random.randint(30, 80)  # ROS domain ids above 101 can collide with Linux ephemeral ports


def test_camera_to_node_to_subscriber(tmp_path, domain):
    model = random_keygrid_file(tmp_path / 'model.safetensors', num_points=256)
    listener = bench.Listener(domain)
    graph: list = []
    from cyclonedds.core import Listener as DdsListener
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic

    from keygrid_ros.ros.dds import types as T
    from keygrid_ros.ros.dds.qos import ros_qos

    graph_reader = DataReader(
        listener.transport.participant, Topic(listener.transport.participant, 'ros_discovery_info',
                                              T.ParticipantEntitiesInfoHumble),
        qos=ros_qos('graph', 1, reader=True),
        listener=DdsListener(on_data_available=lambda r: graph.extend(r.take(N=16))))
    node = bench.start_node(domain, str(model), ['num_points:=256', 'max_age_s:=0', 'compile:=false'], device='cpu')
    try:
        assert bench.wait_for_node(listener, node), 'node never published diagnostics:\n' + bench._stop(node)
        camera = bench.start_camera(domain, seconds=4.0, rate=30.0, wait_s=1.0)
        out, err = camera.communicate(timeout=180)
        assert camera.returncode == 0, err
        published = json.loads(out.strip().splitlines()[-1])
        deadline = time.monotonic() + 90  # generous: two shared cores may be busy with other jobs
        while time.monotonic() < deadline:  # keep-latest: the node always ends on the last cloud sent
            with listener.lock:
                if listener.keypoints and stamp_of(listener.keypoints[-1][1]) == published['stamps'][-1]:
                    break
            time.sleep(0.5)
        assert node.poll() is None, 'the node died'
    finally:
        log = bench._stop(node)
        listener.close()
        del graph_reader
    assert node.returncode == 0, log

    stamps = set(published['stamps'])
    assert 30 * 4 * 0.8 <= published['published'] <= 30 * 4 * 1.2  # 4 s at 30 Hz
    keypoints = [m for _, m in listener.keypoints]
    markers = [m for _, m in listener.markers]
    poses = [m for _, m in listener.poses]
    assert len(keypoints) >= 2, log[-3000:]
    assert stamp_of(keypoints[-1]) == published['stamps'][-1]  # the newest cloud is never dropped
    assert len(markers) == len(keypoints) == len(poses)  # one set of outputs per processed cloud
    assert len(keypoints) < published['published']  # keep-latest: the slow node skipped clouds, never queued
    for message in keypoints:
        assert message.header.frame_id == 'table'
        assert stamp_of(message) in stamps  # the input stamp, untouched
        assert len(message.poses) == 8
        xyz = np.array([[p.position.x, p.position.y, p.position.z] for p in message.poses])
        assert garment_distance(xyz).max() < 0.01
    assert [stamp_of(m) for m in keypoints] == sorted(stamp_of(m) for m in keypoints)
    for message in markers:
        assert message.markers[0].action == Marker.DELETEALL
        spheres = [m for m in message.markers if m.ns == 'keygrid/keypoints' and m.action == Marker.ADD]
        assert [m.id for m in spheres] == list(range(8))
        assert all(m.header.frame_id == 'table' and stamp_of(m) in stamps for m in spheres)
    # the node announced itself in the ROS graph, with its endpoints
    names = {(n.node_namespace, n.node_name): n for sample in graph
             if isinstance(sample, T.ParticipantEntitiesInfoHumble) for n in sample.node_entities_info_seq}
    entry = names.get(('/', 'keygrid_detector'))
    assert entry is not None, names.keys()
    assert len(entry.writer_gid_seq) == 6 and len(entry.reader_gid_seq) == 3


def test_corrupt_model_is_a_clear_error_and_non_zero_exit(tmp_path, domain):
    corrupt = tmp_path / 'broken.safetensors'
    corrupt.write_bytes(b'{"not": "a model"}')
    result = subprocess.run([sys.executable, '-m', 'keygrid_ros.cli', 'detect', '--transport', 'dds', '--domain',
                             str(domain), '--model', str(corrupt)], env=bench.loopback_env(domain),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert 'broken.safetensors' in result.stderr


def test_node_survives_malformed_clouds(tmp_path, domain):
    """Garbage on the input topic (short data, no z field, empty) over real DDS: the node keeps answering."""
    from keygrid_ros.messages import Header, PointCloud2, PointField, Time
    from keygrid_ros.ros.dds.transport import DdsTransport

    model = random_keygrid_file(tmp_path / 'model.safetensors', num_points=256)
    listener = bench.Listener(domain)
    node = bench.start_node(domain, str(model),
                            ['num_points:=256', 'max_age_s:=0', 'target_frame:=""', 'compile:=false'], device='cpu')
    camera = DdsTransport('bad_camera', domain_id=domain, distro='humble', env=bench.loopback_env(domain))
    publish = camera.publisher(bench.CLOUD_TOPIC, PointCloud2.ROS_TYPE, 'sensor_data', 5)
    try:
        assert bench.wait_for_node(listener, node), bench._stop(node)
        header = Header(stamp=Time.from_ns(time.time_ns()), frame_id='cam')
        xyz = [PointField('x', 0, 7, 1), PointField('y', 4, 7, 1), PointField('z', 8, 7, 1)]
        bad = [PointCloud2(header=header, height=1, width=100, fields=xyz, point_step=12, row_step=1200,
                           data=b'\x00' * 10),
               PointCloud2(header=header, height=1, width=2, fields=xyz[:2], point_step=8, row_step=16,
                           data=b'\x00' * 16),
               PointCloud2(header=header)]
        seen = threading.Event()
        for message in bad:
            time.sleep(1.5)
            publish(message)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not seen.is_set():
            with listener.lock:
                reasons = [m.status[0].message for _, m in listener.diagnostics]
            if any('empty PointCloud2' in r for r in reasons):
                seen.set()
            time.sleep(0.5)
        assert seen.is_set(), reasons
        assert node.poll() is None
        with listener.lock:
            assert all(m.markers[0].action == Marker.DELETEALL for _, m in listener.markers)
            assert len(listener.markers) >= 2  # failed frames clear the markers
    finally:
        log = bench._stop(node)
        camera.close()
        listener.close()
    assert node.returncode == 0, log
