"""``keygrid bench {preprocess,model,node,tracking} --json``: medians, never timed unit tests.

Each benchmark is a module ``keygrid_ros.bench.<name>`` with ``add_arguments(parser)`` and
``run(args) -> dict``; this front end prints a human summary, or with ``--json`` one JSON object
as the last line of stdout (the contract other tools parse).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

BENCHMARKS = {
    'preprocess': 'PointCloud2 bytes -> normalised model input (crop, table, cluster, FPS)',
    'model': 'Key-Grid inference (batch 1 and 32) and a training step (batch 8)',
    'node': 'end to end over DDS loopback: cloud published -> keypoints received',
    'tracking': 'the keypoint tracker (tracking.enabled) per frame: cpd (the whole garment) or icp (K patches)',
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest='bench', metavar='BENCHMARK', required=True)
    for name, help_text in BENCHMARKS.items():
        bench_parser = sub.add_parser(name, help=help_text, description=help_text)
        bench_parser.add_argument('--json', action='store_true',
                                  help='print one JSON object as the last line of stdout')
        try:
            module = importlib.import_module(f'keygrid_ros.bench.{name}')
        except ModuleNotFoundError as exc:
            if not (exc.name or '').startswith('keygrid_ros'):
                raise
            bench_parser.set_defaults(_missing=True)
            continue
        module.add_arguments(bench_parser)


def run(args: argparse.Namespace) -> int:
    if getattr(args, '_missing', False):
        print(f'keygrid bench {args.bench}: not available in this version yet', file=sys.stderr)
        return 2
    module = importlib.import_module(f'keygrid_ros.bench.{args.bench}')
    result = module.run(args)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f'{key:>24}: {value}')
    return 0
