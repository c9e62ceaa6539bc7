"""``keygrid cloud FILE``: run the front end on one cloud and say what it found.

Reads a .pcd, .npy/.npz or a rosbag2 (first PointCloud2, or ``--topic``/``--index``), runs the same
preprocessing the node runs with the same parameters file, prints points and milliseconds per stage
(or why the frame is unusable), and optionally writes a picture and the model input.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from keygrid_ros.params import apply_overrides, defaults, load_yaml
from keygrid_ros.perception.pointcloud2 import read_xyz
from keygrid_ros.perception.preprocess import PreprocessConfig, Preprocessor, PreprocessResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('cloud', help='.pcd, .npy/.npz ((N, 3) or (H, W, 3) xyz) or a rosbag2 (folder or file)')
    add_frontend_arguments(parser)


def add_frontend_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with ``keygrid demo``."""
    parser.add_argument('--topic', help='bag topic (default: the first PointCloud2 topic)')
    parser.add_argument('--index', type=int, default=0, help='which message of the bag topic')
    parser.add_argument('--params', help='parameters file in the ROS layout (default: built-in defaults, '
                        'the same as config/detect.yaml)')
    parser.add_argument('--set', nargs='*', default=[], metavar='NAME:=VALUE',
                        help='override parameters, e.g. crop.max:=[0.8,0.8,1.6]')
    parser.add_argument('--transform', help='.npy (4, 4) target <- cloud transform (default: identity)')
    parser.add_argument('--png', help='write a picture of the isolated garment here')
    parser.add_argument('--save-input', help='write the normalised model input (N, 3) to this .npy')
    parser.add_argument('--json', action='store_true', help='print the report as one JSON line')


def frontend_params(args: argparse.Namespace) -> dict:
    values = load_yaml(args.params) if args.params else defaults()
    return apply_overrides(values, args.set)


def run_frontend(points: np.ndarray, transform: np.ndarray | None, args: argparse.Namespace,
                 title: str) -> tuple[PreprocessResult, float]:
    """Preprocess ``points`` (..., 3) with the CLI's parameters; returns the result and total ms."""
    preprocess = Preprocessor(PreprocessConfig.from_params(frontend_params(args)))
    preprocess(points, transform)  # warm-up: first-call allocations are not what a node pays per frame
    start = time.perf_counter()
    result = preprocess(points, transform)
    total_ms = (time.perf_counter() - start) * 1e3
    report = result.report
    if args.json:
        print(json.dumps({'input': title, 'ok': result.ok, 'reason': report.reason, 'points': report.points,
                          'stages_ms': {k: round(v, 3) for k, v in report.ms.items()},
                          'total_ms': round(total_ms, 3),
                          'plane': result.plane.coefficients() if result.plane else None}))
    else:
        print(f'{title}')
        for stage, count in report.points.items():
            ms = report.ms.get(stage)
            print(f'  {stage:>10}: {count:>8d} points' + (f'  {ms:7.2f} ms' if ms is not None else ''))
        if result.plane is not None:
            a, b, c, d = result.plane.coefficients()
            print(f'  table plane: {a:+.3f} x {b:+.3f} y {c:+.3f} z {d:+.3f} = 0 '
                  f'({result.plane.inlier_ratio:.0%} of the cropped points)')
        if result.ok:
            extent = np.ptp(result.points, axis=0)
            print(f'  garment: {result.points.shape[0]} points, extent {extent[0]:.2f} x {extent[1]:.2f} x '
                  f'{extent[2]:.2f} m, front end {total_ms:.1f} ms')
        else:
            print(f'  no model input: {report.reason}')
    if result.ok and args.save_input:
        np.save(args.save_input, result.model_input)
    if args.png:
        save_picture(points, transform, result, args.png, title)
    return result, total_ms


def save_picture(points: np.ndarray, transform: np.ndarray | None, result: PreprocessResult, path: str,
                 title: str) -> None:
    """Two panels: the whole cloud (grey) with the model input on top (coloured by FPS rank), from
    above in the target frame, and the model input alone in normalised coordinates."""
    from keygrid_ros.plotting import pyplot, save_figure

    plt = pyplot()

    flat = points.reshape(-1, 3)
    flat = flat[np.isfinite(flat).all(axis=1)]
    if transform is not None:
        flat = flat @ transform[:3, :3].T + transform[:3, 3]
    step = max(1, flat.shape[0] // 40000)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5.5))
    left.scatter(flat[::step, 0], flat[::step, 1], s=0.3, c='0.75', rasterized=True)
    if result.ok:
        rank = np.arange(result.points.shape[0])
        left.scatter(result.points[:, 0], result.points[:, 1], s=2, c=rank, cmap='viridis')
        right.scatter(result.model_input[:, 0], result.model_input[:, 1], s=3, c=result.model_input[:, 2],
                      cmap='magma')
        right.set_title('model input (normalised, colour = height)')
        right.set_xlim(-1.05, 1.05)
        right.set_ylim(-1.05, 1.05)
    else:
        right.text(0.5, 0.5, result.report.reason, ha='center', va='center', wrap=True)
    left.set_title(f'{title}\n(grey: cloud, colour: garment points in FPS order)', fontsize=9)
    for axis in (left, right):
        axis.set_aspect('equal')
    left.set_xlabel('x [m]')
    left.set_ylabel('y [m]')
    save_figure(figure, path)


def run(args: argparse.Namespace) -> int:
    from keygrid_ros.perception.cloud_io import load_cloud

    message = load_cloud(args.cloud, topic=args.topic, index=args.index)
    points = read_xyz(message, skip_nans=False, organized=True)
    transform = np.load(args.transform) if args.transform else None
    result, _ = run_frontend(points, transform, args, f'{args.cloud} ({message.width}x{message.height})')
    return 0 if result.ok else 1
