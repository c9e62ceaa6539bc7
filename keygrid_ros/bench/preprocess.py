"""``keygrid bench preprocess``: PointCloud2 bytes -> normalised model input, per frame.

The default input is the deterministic synthetic 640x480 scene (table, draped T-shirt, NaN holes,
flying pixels) packed the way RGB-D drivers pack clouds (x y z + rgb, point_step 16, so the decoder
gets a strided, not a contiguous, layout). ``--cloud`` takes a real cloud (.pcd, .npy, or a rosbag2)
instead. Reported: median and p90 of the whole path, the median of every stage, and the points each
stage kept.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from keygrid_ros.messages import Header, PointCloud2, PointField, Time
from keygrid_ros.params import load_yaml
from keygrid_ros.perception.pointcloud2 import create_cloud, read_xyz
from keygrid_ros.perception.preprocess import PreprocessConfig, Preprocessor
from keygrid_ros.perception.synthetic import synthetic_scene


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--cloud', help='a real cloud (.pcd, .npy/.npz, rosbag2) instead of the synthetic scene')
    parser.add_argument('--transform', help='with --cloud: a .npy (4, 4) target <- cloud transform')
    parser.add_argument('--params', help='parameters file (ROS layout, e.g. config/detect.yaml)')
    parser.add_argument('--repeats', type=int, default=60, help='timed frames (after 5 warm-up frames)')
    parser.add_argument('--device', default='cpu', help="torch device for the torch stages, or 'all' for every "
                        'device present (cpu, and cuda where available)')
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0 = torch default)')
    parser.add_argument('--robot', type=float, nargs='+', metavar='XYZ',
                        help='robot frame origins in the target frame (x y z for each): time the self-filter too '
                        '(self_filter.radius and self_filter.chain from --params)')


def synthetic_message() -> tuple[PointCloud2, np.ndarray]:
    """The synthetic scene as a driver-style PointCloud2 (x y z rgb, point_step 16) + its transform."""
    scene = synthetic_scene()
    height, width, _ = scene.points.shape
    packed = np.zeros((height, width), dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('rgb', '<f4')])
    packed['x'], packed['y'], packed['z'] = scene.points[..., 0], scene.points[..., 1], scene.points[..., 2]
    packed['rgb'] = np.frombuffer(np.full(height * width, 0x808080, '<u4').tobytes(), '<f4').reshape(height, width)
    fields = [PointField(name, offset, PointField.FLOAT32, 1) for name, offset in
              (('x', 0), ('y', 4), ('z', 8), ('rgb', 12))]
    header = Header(stamp=Time(sec=0, nanosec=0), frame_id='camera_depth_optical_frame')
    return create_cloud(header, fields, packed), scene.table_from_camera


def _load_message(args) -> tuple[PointCloud2, np.ndarray | None, str]:
    if not args.cloud:
        message, transform = synthetic_message()
        return message, transform, 'synthetic 640x480 T-shirt on a table'
    from keygrid_ros.perception.cloud_io import load_cloud

    transform = np.load(args.transform) if args.transform else None
    return load_cloud(args.cloud), transform, args.cloud


def _bench_device(message, transform, config, device: str, repeats: int, robot: np.ndarray | None = None) -> dict:
    preprocess = Preprocessor(config, device=device)
    totals, stages = [], {}
    result = None
    for i in range(repeats + 5):
        start = time.perf_counter()
        points = read_xyz(message, skip_nans=False, organized=True)
        decoded = time.perf_counter()
        result = preprocess(points, transform, robot=robot)
        end = time.perf_counter()
        if i < 5:
            continue
        totals.append((end - start) * 1e3)
        stages.setdefault('decode', []).append((decoded - start) * 1e3)
        for name, ms in result.report.ms.items():
            stages.setdefault(name, []).append(ms)
    totals_arr = np.asarray(totals)
    return {
        'median_ms': round(float(np.median(totals_arr)), 3),
        'p90_ms': round(float(np.percentile(totals_arr, 90)), 3),
        'min_ms': round(float(totals_arr.min()), 3),
        'stages_ms': {name: round(float(np.median(values)), 3) for name, values in stages.items()},
        'points': result.report.points,
        'points_out': int(result.model_input.shape[0]) if result.ok else 0,
        'reason': result.report.reason,
        'device': device,
    }


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = PreprocessConfig.from_params(load_yaml(args.params) if args.params else None)
    message, transform, source = _load_message(args)
    devices = [args.device]
    if args.device == 'all':
        devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    robot = None
    if args.robot:
        if len(args.robot) % 3:
            raise SystemExit(f'--robot takes x y z per frame: {len(args.robot)} numbers given')
        robot = np.asarray(args.robot, dtype=np.float64).reshape(-1, 3)
    results = {device: _bench_device(message, transform, config, device, args.repeats, robot)
               for device in devices}
    headline = results[devices[0]]
    out = dict(headline)
    out.update({
        'benchmark': 'preprocess',
        'input': source,
        'input_points': int(message.width * message.height),
        'repeats': args.repeats,
        'threads': torch.get_num_threads(),
        'torch': torch.__version__,
        'target_ms': 25.0,
    })
    for device in devices[1:]:
        out[device] = results[device]
    return out
