"""``keygrid bench node``: end-to-end latency over DDS loopback, three processes as on a robot.

    camera process (30 Hz 640x480 PointCloud2 + /tf_static) -> node process (keygrid detect --transport dds)
        -> this process (subscribes to keypoints): latency = receive time - cloud stamp (one host clock)

Reported (last stdout line with ``--json``): ``latency_median_ms``, ``latency_p90_ms``, ``rate_hz`` (keypoint
messages per second over the run), ``published``, ``received``, plus the node's per-stage medians from its
diagnostics. Targets: CPU median <= 80 ms at >= 12 Hz; GPU <= 10 ms at 30 Hz.

The same helpers drive ``test/test_dds_e2e.py``. Everything stays on loopback (``ROS_LOCALHOST_ONLY=1``, a
random domain id) so parallel runs never see each other.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import random
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

CLOUD_TOPIC = '/camera/depth/points'
CAMERA_FRAME = 'camera_depth_optical_frame'
TABLE_FRAME = 'table'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', help='model file (default: the package model; an untrained Key-Grid if absent)')
    parser.add_argument('--seconds', type=float, default=10.0, help='how long the camera publishes')
    parser.add_argument('--rate', type=float, default=30.0, help='camera rate (Hz)')
    parser.add_argument('--device', default='auto', help='node inference device')
    parser.add_argument('--set', action='append', default=[], help='extra node parameters, name:=value')
    parser.add_argument('--domain', type=int, default=None, help='DDS domain (default: random 81-101)')


# ------------------------------------------------------------------------------------------------ processes
def loopback_env(domain: int) -> dict[str, str]:
    """Environment for a process that must stay on loopback in its own domain."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_LOCALHOST_ONLY='1', ROS_DISTRO='humble')
    env.pop('CYCLONEDDS_URI', None)
    root = str(Path(__file__).resolve().parents[2])
    env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '') if env.get('PYTHONPATH') else root
    return env


def start_node(domain: int, model: str, sets: list[str] | None = None, device: str = 'auto') -> subprocess.Popen:
    """The detector node in its own process (``keygrid detect --transport dds``), target frame = table."""
    command = [sys.executable, '-m', 'keygrid_ros.cli', 'detect', '--transport', 'dds', '--domain', str(domain),
               '--points', CLOUD_TOPIC, '--model', model, '--set', f'target_frame:={TABLE_FRAME}',
               '--set', f'device:={device}']
    for item in sets or []:
        command += ['--set', item]
    return subprocess.Popen(command, env=loopback_env(domain), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def start_camera(domain: int, seconds: float, rate: float, wait_s: float = 0.0) -> subprocess.Popen:
    """The camera in its own process: prints one JSON line ``{"published": n, "stamps": [...]}`` at the end."""
    command = [sys.executable, '-m', 'keygrid_ros.bench.node', '--camera', '--seconds', str(seconds),
               '--rate', str(rate), '--wait', str(wait_s)]
    return subprocess.Popen(command, env=loopback_env(domain), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def camera_main(seconds: float, rate: float, wait_s: float) -> int:
    """Publish the synthetic 640x480 garment scene at ``rate`` Hz, stamped just before each write."""
    from dataclasses import replace

    from keygrid_ros.bench.preprocess import synthetic_message
    from keygrid_ros.messages import Header, Time
    from keygrid_ros.perception.postprocess import quaternion_from_matrix
    from keygrid_ros.ros.dds.transport import DdsTransport
    from keygrid_ros.ros.rosbag_io import static_transform

    transport = DdsTransport('keygrid_bench_camera')
    message, table_from_camera = synthetic_message()
    tf = static_transform(TABLE_FRAME, CAMERA_FRAME, table_from_camera[:3, 3],
                          quaternion_from_matrix(table_from_camera[:3, :3]), time.time_ns())
    from keygrid_ros.messages import TFMessage

    transport.publisher('/tf_static', TFMessage.ROS_TYPE, 'tf_static', 1)(TFMessage(transforms=[tf]))
    publish = transport.publisher(CLOUD_TOPIC, message.ROS_TYPE, 'sensor_data', 5)
    time.sleep(wait_s)  # let discovery finish before the first frame
    stamps = []
    period = 1.0 / rate
    start = time.monotonic()
    next_time = start
    while time.monotonic() - start < seconds:
        stamp = time.time_ns()
        publish(replace(message, header=Header(stamp=Time.from_ns(stamp), frame_id=CAMERA_FRAME)))
        stamps.append(stamp)
        next_time += period
        time.sleep(max(0.0, next_time - time.monotonic()))
    time.sleep(0.5)  # reliable tf_static / last samples drain before the participant goes
    print(json.dumps({'published': len(stamps), 'stamps': stamps}))
    transport.close()
    return 0


class Listener:
    """Subscribes to the node's outputs in this process and timestamps every arrival."""

    def __init__(self, domain: int):
        from keygrid_ros.ros.dds.transport import DdsTransport

        env = loopback_env(domain)
        self.transport = DdsTransport('keygrid_bench_listener', domain_id=domain, distro='humble', env=env)
        self.lock = threading.Lock()
        self.keypoints: list[tuple[int, Any]] = []  # (receive ns, PoseArray)
        self.markers: list[tuple[int, Any]] = []
        self.poses: list[tuple[int, Any]] = []
        self.diagnostics: list[tuple[int, Any]] = []
        self.diagnostics_seen = threading.Event()
        prefix = '/keygrid_detector'
        for name, ros_type, store in (('/keypoints', 'geometry_msgs/msg/PoseArray', self.keypoints),
                                      ('/garment_pose', 'geometry_msgs/msg/PoseStamped', self.poses),
                                      (f'{prefix}/markers', 'visualization_msgs/msg/MarkerArray', self.markers),
                                      ('/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray', self.diagnostics)):
            self.transport.subscribe(name, ros_type, self._store(store), qos='reliable', depth=50)

    def _store(self, store: list):
        def callback(message: Any) -> None:
            now = time.time_ns()
            with self.lock:
                store.append((now, message))
            if store is self.diagnostics:
                self.diagnostics_seen.set()
        return callback

    def close(self) -> None:
        self.transport.close()


def wait_for_node(listener: Listener, node: subprocess.Popen, timeout: float = 120.0) -> bool:
    """True once the node's first diagnostics arrive; False on timeout or when the node process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listener.diagnostics_seen.wait(0.5):
            return True
        if node.poll() is not None:
            return False
    return False


def latency_ms(received: list[tuple[int, Any]]) -> np.ndarray:
    return np.array([(now - (m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec)) / 1e6
                     for now, m in received])


def _ensure_model(path: str | None, num_points: int) -> tuple[str, str]:
    """(model path, description): the given/package model, else an untrained Key-Grid in a temp file."""
    from keygrid_ros.ros.node import NodeStartupError, resolve_model_path

    if path:
        return path, path
    try:
        from keygrid_ros.params import defaults

        return str(resolve_model_path(defaults()['model_path'])), 'package model'
    except NodeStartupError:
        import torch

        from keygrid_ros.model.config import KeyGridConfig
        from keygrid_ros.model.io import save_model
        from keygrid_ros.model.keygrid import KeyGrid

        torch.manual_seed(0)
        target = Path(tempfile.mkdtemp(prefix='keygrid_bench_')) / 'untrained.safetensors'
        save_model(target, KeyGrid(KeyGridConfig(num_points=num_points, use_decoder=False)), encoder_only=True)
        return str(target), 'untrained Key-Grid (no trained model shipped; latency is what matters here)'


def _stop(process: subprocess.Popen, timeout: float = 10.0) -> str:
    if process.poll() is None:
        process.send_signal(2)  # SIGINT: the node shuts down cleanly
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.stdout.read() if process.stdout else ''


def run(args: argparse.Namespace) -> dict:
    domain = args.domain if args.domain is not None else random.randint(81, 101)  # <= 101: clear of ephemeral ports
    from keygrid_ros.params import apply_overrides, defaults

    num_points = apply_overrides(defaults(), args.set)['num_points']
    model, model_note = _ensure_model(args.model, num_points)
    listener = Listener(domain)
    node = start_node(domain, model, args.set, args.device)
    try:
        if not wait_for_node(listener, node):
            raise RuntimeError('the node did not come up:\n' + _stop(node))
        camera = start_camera(domain, args.seconds, args.rate, wait_s=1.0)
        out, err = camera.communicate(timeout=args.seconds + 120)
        time.sleep(2.0)  # the last frame in flight
        published = json.loads(out.strip().splitlines()[-1])['published'] if out.strip() else 0
    finally:
        node_log = _stop(node)
        listener.close()
    with listener.lock:
        keypoints = list(listener.keypoints)
        diagnostics = [m for _, m in listener.diagnostics]
    lat = latency_ms(keypoints)
    times = np.array([now for now, _ in keypoints], dtype=np.float64) / 1e9
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
    stages = {}
    for message in diagnostics:
        for kv in message.status[0].values:
            if kv.key.startswith('ms.'):
                stages.setdefault(kv.key[3:], []).append(float(kv.value))
    result = {
        'benchmark': 'node',
        'transport': 'dds loopback (cyclonedds, 3 processes)',
        'model': model_note,
        'device': args.device,
        'published': int(published),
        'received': len(keypoints),
        'latency_median_ms': round(float(np.median(lat)), 2) if lat.size else None,
        'latency_p90_ms': round(float(np.percentile(lat, 90)), 2) if lat.size else None,
        'rate_hz': round(float(rate), 2),
        'input_rate_hz': args.rate,
        'node_stage_median_ms': {k: round(float(np.median(v)), 2) for k, v in stages.items()},
        'cpu_count': os.cpu_count(),
        'load_average_1min': round(os.getloadavg()[0], 2),  # other jobs on the same cores skew every number
        'targets': {'cpu': {'latency_median_ms': 80, 'rate_hz': 12}, 'gpu': {'latency_median_ms': 10, 'rate_hz': 30}},
    }
    if not keypoints:
        result['node_log_tail'] = node_log[-2000:]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description='camera helper process of keygrid bench node')
    parser.add_argument('--camera', action='store_true')
    parser.add_argument('--seconds', type=float, default=5.0)
    parser.add_argument('--rate', type=float, default=30.0)
    parser.add_argument('--wait', type=float, default=0.0)
    args = parser.parse_args(argv)
    if args.camera:
        return camera_main(args.seconds, args.rate, args.wait)
    parser.print_help()
    return 2


if __name__ == '__main__':
    sys.exit(main())
