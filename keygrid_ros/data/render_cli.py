"""``keygrid render``: a sequence seen by a virtual depth camera, as a rosbag2 of organised PointCloud2.

::

    keygrid render --sequence tshirt_fold_3.npz --out tshirt_fold_3_bag

Every frame becomes one organised (H x W) ``sensor_msgs/PointCloud2`` (float32 x y z, NaN where the
camera gets no return) in the camera's optical frame, on ``--topic`` at ``--fps``; ``/tf_static``
carries the table -> camera optical frame transform (REP 103/105: the table frame is z up, the optical
frame x right, y down, z forward). By default the camera is a RealSense-D435-like 640x480 (fx = fy =
615) above and in front of the table, tilted 22 degrees, looking at the garment's average position from
0.9-1.2 m, as far as it needs to keep (most of) the motion in view.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--sequence', required=True, help='sequence file (.npz, or any readable sequence with faces)')
    parser.add_argument('--out', required=True, help='output rosbag2 directory (must not exist)')
    parser.add_argument('--topic', default='/camera/depth/color/points')
    parser.add_argument('--frame-id', default='camera_depth_optical_frame', help='the optical frame')
    parser.add_argument('--table-frame', default='table')
    parser.add_argument('--fps', type=float, default=30.0, help='message rate in the bag')
    parser.add_argument('--start', type=float, default=1_700_000_000.0, help='first stamp, seconds since epoch')
    parser.add_argument('--stride', type=int, default=1, help='render every n-th frame')
    parser.add_argument('--max-frames', type=int, default=None)
    parser.add_argument('--eye', type=float, nargs=3, default=None, metavar=('X', 'Y', 'Z'),
                        help='camera position in the table frame (default: back from the target until the motion fits)')
    parser.add_argument('--target', type=float, nargs=3, default=None, metavar=('X', 'Y', 'Z'),
                        help='point looked at (default: the garment mean over the sequence, on the table)')
    parser.add_argument('--size', type=int, nargs=2, default=(640, 480), metavar=('W', 'H'))
    parser.add_argument('--focal', type=float, default=615.0, help='fx = fy in pixels at --size')
    parser.add_argument('--table-size', type=float, nargs=2, default=(1.6, 1.2), metavar=('X', 'Y'))
    parser.add_argument('--no-noise', action='store_true', help='exact depth, no lost pixels')
    parser.add_argument('--noise-scale', type=float, default=1.0,
                        help='multiply the depth noise sigma (1: a D435-like stereo camera, about 2.3 mm at 1.1 m; '
                             '0.25: a structured-light camera of the kind cloth labs use)')
    parser.add_argument('--seed', type=int, default=0, help='noise seed')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    parser.add_argument('--mesh-out', metavar='SEQ.npz',
                        help="also write the rendered frames' meshes as a sequence file (the ground truth of what "
                             "the camera saw; info.stamps_ns holds each frame's message stamp)")
    parser.add_argument('--compress', action='store_true',
                        help='zstd-compress the bag (mcap chunks, like ros2 bag record with the zstd_fast preset)')


def camera_for(vertices: np.ndarray, args: argparse.Namespace):
    """The :class:`DepthCamera` of the arguments for a sequence's vertices (T, V, 3)."""
    from keygrid_ros.data.camera import DepthCamera, DepthNoise, Intrinsics, look_at

    w, h = args.size
    intr = Intrinsics(w, h, args.focal, args.focal, (w - 1) / 2, (h - 1) / 2)
    if args.target is not None:
        target = np.asarray(args.target, dtype=float)
    else:
        centre = vertices.reshape(-1, 3).mean(axis=0)
        target = np.array([centre[0], centre[1], 0.0])
    if args.eye is not None:
        eye = np.asarray(args.eye, dtype=float)
    else:
        # Back off along a 22 degree tilt until most of the motion fits the shorter field of view, but
        # stay within 1.2 m: a table-top camera, and inside the node's default 1.5 m depth crop.
        reach = float(np.percentile(np.linalg.norm(vertices.reshape(-1, 3)[:, :2] - target[:2], axis=1), 95))
        distance = float(np.clip(1.1 * reach * intr.fy / (h / 2), 0.9, 1.2))
        eye = target + distance * np.array([0.0, -0.38, 0.92]) / np.linalg.norm([0.38, 0.92])
    base = DepthNoise()
    noise = DepthNoise.none() if args.no_noise else DepthNoise(
        sigma0=base.sigma0 * args.noise_scale, k=base.k * args.noise_scale)
    return DepthCamera(intr, look_at(eye, target), noise, tuple(args.table_size))


def run(args: argparse.Namespace) -> int:
    from scipy.spatial.transform import Rotation

    from keygrid_ros.data.sequences import load_sequence
    from keygrid_ros.messages import Header, Time
    from keygrid_ros.perception.pointcloud2 import create_cloud_xyz32
    from keygrid_ros.ros.rosbag_io import BagWriter, static_transform

    if args.noise_scale < 0:
        print(f'keygrid render: --noise-scale must be >= 0, got {args.noise_scale}', file=sys.stderr)
        return 2
    seq = load_sequence(args.sequence)
    if seq.faces is None:
        print(f'keygrid render: {args.sequence} has no faces; a depth camera needs a mesh', file=sys.stderr)
        return 2
    frames = list(range(0, seq.frames, max(1, args.stride)))[:args.max_frames]
    camera = camera_for(seq.vertices[frames], args)
    rng = np.random.default_rng(args.seed)
    start_ns = int(round(args.start * 1e9))
    period_ns = int(round(1e9 / args.fps))
    quat = Rotation.from_matrix(camera.pose[:3, :3]).as_quat()  # x, y, z, w
    tf = static_transform(args.table_frame, args.frame_id, camera.pose[:3, 3], quat, start_ns)
    t0 = time.perf_counter()
    valid = []
    with BagWriter(args.out, storage=args.storage, compress=args.compress) as bag:
        bag.write_static_transforms([tf], start_ns)
        for k, frame in enumerate(frames):
            points = camera.render_points(seq.vertices[frame], seq.faces, rng, noise=not args.no_noise)
            valid.append(float(np.isfinite(points[..., 2]).mean()))
            stamp = start_ns + k * period_ns
            bag.write(args.topic, create_cloud_xyz32(Header(Time.from_ns(stamp), args.frame_id), points), stamp)
    seconds = time.perf_counter() - t0
    if args.mesh_out:
        from dataclasses import replace

        from keygrid_ros.data.sequences import save_sequence

        stamps = [start_ns + k * period_ns for k in range(len(frames))]
        info = {**seq.info, 'source': str(args.sequence), 'source_frames': frames, 'stamps_ns': stamps,
                'frame_id': args.table_frame}
        keypoints = seq.keypoints[frames] if seq.keypoints is not None else None
        save_sequence(args.mesh_out, replace(seq, vertices=seq.vertices[frames], keypoints=keypoints, info=info))
    summary = {'bag': str(args.out), 'topic': args.topic, 'frames': len(frames), 'width': camera.intrinsics.width,
               'height': camera.intrinsics.height, 'frame_id': args.frame_id, 'table_frame': args.table_frame,
               'valid_fraction': float(np.mean(valid)), 'seconds': seconds,
               'ms_per_frame': 1000 * seconds / max(len(frames), 1)}
    print(f'{args.out}: {len(frames)} clouds on {args.topic} in {seconds:.1f} s', file=sys.stderr)
    print(json.dumps(summary))
    return 0
