"""``keygrid detect``: the detector node without ROS 2 installed.

    keygrid detect --bag IN_BAG --out OUT_BAG [--params FILE.yaml] [--set name:=value ...]
    keygrid detect --transport dds [--params FILE.yaml] [--set name:=value ...] [--domain N]

``--bag`` replays a rosbag2 (mcap or sqlite3) through the node and writes the outputs to a new bag;
``--transport dds`` joins a live ROS 2 graph over DDS (cyclonedds) like ``ros2 run keygrid_ros detector`` would.
Parameters come from a ROS parameters file (``config/detect.yaml`` layout) and ``--set`` overrides, validated
against the schema. Exit status: 0 done, 1 the node could not start (message says why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from keygrid_ros import params as schema

LOG = logging.getLogger('keygrid.detect')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--transport', choices=('bag', 'dds'), help="'bag' (implied by --bag) or 'dds'")
    parser.add_argument('--bag', metavar='IN_BAG', help='input rosbag2 (directory, .mcap or .db3)')
    parser.add_argument('--out', metavar='OUT_BAG', help='output rosbag2 directory (must not exist)')
    parser.add_argument('--params', metavar='FILE', help='ROS 2 parameters file (default: the schema defaults)')
    parser.add_argument('--set', metavar='NAME:=VALUE', action='append', default=[],
                        help='override one parameter (repeatable), e.g. --set target_frame:=base_link')
    parser.add_argument('--model', help='shortcut for --set model_path:=MODEL (model_type is read from the file)')
    parser.add_argument('--namespace', default='', help='node namespace (topic names as under ros2 run)')
    bag = parser.add_argument_group('bag transport')
    bag.add_argument('--topic', help='input PointCloud2 topic (default: the bag\'s only one)')
    bag.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap', help='output storage (default mcap)')
    bag.add_argument('--copy-input', action='store_true', help='also copy the input clouds to the output bag')
    bag.add_argument('--json', action='store_true', help='print the summary as one JSON line (last line)')
    dds = parser.add_argument_group('dds transport')
    dds.add_argument('--domain', type=int, default=None, help='ROS_DOMAIN_ID (default: $ROS_DOMAIN_ID or 0)')
    dds.add_argument('--points', default='points', help="input topic (remaps 'points'), e.g. /camera/depth/points")
    dds.add_argument('--distro', choices=('humble', 'jazzy'), default=None,
                     help='ROS 2 distro of the graph (graph info and discovery layout; default: $ROS_DISTRO or '
                          'humble)')
    dds.add_argument('--duration', type=float, default=0.0, help='stop after this many seconds (0 = until Ctrl-C)')


def model_overrides(model: str) -> list[str]:
    """``--model FILE`` as parameter overrides: ``model_path``, and ``model_type`` read from the file itself, so
    a USEEK student needs no second flag. An unreadable file sets only the path: the node then says why."""
    overrides = [f'model_path:={model}']
    try:
        from keygrid_ros.model.io import ModelFileError
        from keygrid_ros.model.student import model_type_of
        from keygrid_ros.ros.node import NodeStartupError, resolve_model_path

        overrides.append(f'model_type:={model_type_of(resolve_model_path(model))}')
    except (ModelFileError, NodeStartupError, OSError):
        pass
    return overrides


def load_values(args: argparse.Namespace) -> dict[str, Any]:
    """Schema defaults <- parameters file <- --model <- --set (validated; raises ParameterError)."""
    values = schema.load_yaml(args.params) if args.params else schema.defaults()
    overrides = list(args.set)
    if args.model:
        overrides = model_overrides(args.model) + overrides
    return schema.apply_overrides(values, overrides)


def run(args: argparse.Namespace) -> int:
    transport = args.transport or ('bag' if args.bag else None)
    if transport is None:
        print('keygrid detect: give --bag IN --out OUT, or --transport dds', file=sys.stderr)
        return 2
    if transport == 'bag' and not (args.bag and args.out):
        print('keygrid detect --bag needs both --bag IN_BAG and --out OUT_BAG', file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    elif logging.getLogger().level > logging.INFO:
        logging.getLogger('keygrid').setLevel(logging.INFO)  # the node's own messages are worth seeing

    from keygrid_ros.perception.cloud_io import CloudIOError
    from keygrid_ros.ros.node import NodeStartupError

    try:
        values = load_values(args)
        if transport == 'bag':
            return _run_bag(args, values)
        from keygrid_ros.ros.dds.transport import run_dds

        return run_dds(values, domain=args.domain, namespace=args.namespace, points=args.points,
                       distro=args.distro, duration=args.duration)
    except (schema.ParameterError, NodeStartupError, CloudIOError, FileExistsError) as exc:
        print(f'keygrid detect: {exc}', file=sys.stderr)
        return 1


def _run_bag(args: argparse.Namespace, values: dict[str, Any]) -> int:
    from keygrid_ros.ros.bag_transport import run_bag

    summary = run_bag(args.bag, args.out, values, topic=args.topic, storage=args.storage,
                      copy_input=args.copy_input, namespace=args.namespace,
                      logger=logging.getLogger('keygrid.detect.node'))
    result = summary.to_dict()
    result['out'] = args.out
    print(f'{summary.clouds} clouds on {summary.input_topic}: {summary.detected} with a garment, '
          f'{summary.clouds - summary.detected} without')
    for reason, count in summary.reasons.items():
        print(f'  {count} x {reason}')
    print(f'wrote {args.out}: ' + ', '.join(f'{t} ({n})' for t, n in summary.written.items()))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0
