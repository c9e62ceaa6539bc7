"""``keygrid bench tracking``: the keypoint tracker's cost per frame (median, p90), K keypoints, N points.

Input: a simulated sequence (``--data``, its first ``--frames`` frames, ``--points`` drawn afresh from the
faces each frame as a depth sensor would) or, by default, a synthetic sheet folded in half over the frames.
Starting keypoints: farthest point sampling of the first frame. The tracker's cost does not depend on the
model; the node adds it to the model's when ``tracking.enabled`` is true.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from keygrid_ros.normalize import Normalization
from keygrid_ros.params import TRACKING_METHODS
from keygrid_ros.perception.sampling import fps_order
from keygrid_ros.perception.tracking import KeypointTracker, TrackerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--data', help='a simulated sequence file (.npz); default: a synthetic folding sheet')
    parser.add_argument('--frames', type=int, default=64, help='frames tracked (default 64)')
    parser.add_argument('--points', type=int, default=2048, help='points per frame (default 2048, the model input)')
    parser.add_argument('--keypoints', type=int, default=8, help='keypoints tracked (default 8)')
    parser.add_argument('--patch-radius', type=float, default=TrackerConfig.patch_radius, help='icp: metres')
    parser.add_argument('--method', choices=TRACKING_METHODS, default=TrackerConfig.method,
                        help='cpd (whole garment, default) or icp (a patch per keypoint)')
    parser.add_argument('--nodes', type=int, default=TrackerConfig.nodes, help='cpd: garment nodes')
    parser.add_argument('--balance', type=float, default=TrackerConfig.balance,
                        help='cpd: how strongly nodes keep their share of the cloud (0 = plain CPD)')


def folding_sheet_frames(frames: int, points: int, seed: int = 0) -> list[np.ndarray]:
    """``frames`` clouds of ``points`` random points on a 0.6 x 0.4 m sheet whose half x > 0.3 turns over."""
    rng = np.random.default_rng(seed)
    clouds = []
    for angle in np.linspace(0, np.pi, frames):
        sheet = np.column_stack([rng.uniform(0, 0.6, points), rng.uniform(0, 0.4, points), np.zeros(points)])
        flap = sheet[:, 0] > 0.3
        c, s = np.cos(angle), np.sin(angle)
        x = sheet[flap, 0] - 0.3
        sheet[flap, 0], sheet[flap, 2] = 0.3 + c * x, s * x + 0.005 * (angle / np.pi)
        clouds.append(sheet)
    return clouds


def sequence_frames(path: str, frames: int, points: int) -> list[np.ndarray]:
    from keygrid_ros.data.dataset import SequenceDataset

    data = SequenceDataset([path], num_points=points, sampling='surface', max_frames=frames, keypoints=False)
    return [Normalization(item['offset'], item['scale']).invert(item['points'].double().numpy())
            for item in (data[i] for i in range(len(data)))]


def run(args: argparse.Namespace) -> dict:
    clouds = sequence_frames(args.data, args.frames, args.points) if args.data else \
        folding_sheet_frames(args.frames, args.points)
    start_points = clouds[0][fps_order(clouds[0], args.keypoints)]
    tracker = KeypointTracker(TrackerConfig(patch_radius=args.patch_radius, method=args.method, nodes=args.nodes,
                                            balance=args.balance))
    times = []
    for cloud in clouds:
        begin = time.perf_counter()
        tracker(cloud, start_points)
        times.append((time.perf_counter() - begin) * 1e3)
    times_arr = np.asarray(times[1:])  # the first frame only starts the tracks
    return {
        'benchmark': 'tracking',
        'input': args.data or 'synthetic folding sheet',
        'frames': len(clouds),
        'points': int(len(clouds[0])),
        'keypoints': args.keypoints,
        'method': args.method,
        'nodes': args.nodes if args.method == 'cpd' else None,
        'balance': args.balance if args.method == 'cpd' else None,
        'median_ms': round(float(np.median(times_arr)), 3),
        'p90_ms': round(float(np.percentile(times_arr, 90)), 3),
        'lost_last_frame': int(tracker.lost.sum()),
    }
