"""``keygrid demo``: the README's first command.

For now the main job is the front end (issue 2 of the roadmap): it builds the bundled sample, a
deterministic 640x480 depth-camera view of a wrinkled T-shirt on a table packed as a driver would
pack a PointCloud2, decodes it through the same codec the node uses, runs the same preprocessing
(``config/detect.yaml`` defaults), prints what each stage kept and how long it took, and draws the
isolated garment. Keypoint detection on a recorded fold replaces this once the model ships.
"""

from __future__ import annotations

import argparse

from keygrid_ros.perception.cloud_cli import add_frontend_arguments, run_frontend
from keygrid_ros.perception.pointcloud2 import read_xyz


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_frontend_arguments(parser)
    parser.set_defaults(png='out/demo/frontend.png')


def run(args: argparse.Namespace) -> int:
    from keygrid_ros.bench.preprocess import synthetic_message

    message, transform = synthetic_message()
    points = read_xyz(message, skip_nans=False, organized=True)
    result, total_ms = run_frontend(points, transform, args,
                                    'bundled sample: synthetic 640x480 depth view of a T-shirt on a table')
    if args.png:
        print(f'  picture: {args.png}')
    return 0 if result.ok else 1
