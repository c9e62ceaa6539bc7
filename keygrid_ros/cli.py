"""The ``keygrid`` command: one entry point, one subcommand per job.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their subcommand runs, so ``keygrid --help`` stays instant and a
missing optional dependency of one job never breaks the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: name -> (module, one-line help). Order is the order ``keygrid --help`` lists them.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    'demo': ('keygrid_ros.demo', 'run the main job on the bundled sample and print what it found'),
    'detect': ('keygrid_ros.ros.detect_cli', 'run the detector node over a rosbag2 or live over DDS'),
    'simulate': ('keygrid_ros.data.simulate_cli', 'simulate a garment deformation sequence (.npz)'),
    'render': ('keygrid_ros.data.render_cli', 'render a sequence through a virtual depth camera into a rosbag2'),
    'align': ('keygrid_ros.data.align', "turn sequences into the garment's canonical heading (Key-Grid's setting)"),
    'train': ('keygrid_ros.train.cli', 'train Key-Grid from sequence files'),
    'distill': ('keygrid_ros.train.distill_cli', 'distil a Key-Grid model into an SE(3)-invariant USEEK student'),
    'evaluate': ('keygrid_ros.train.evaluate_cli', 'measure keypoint consistency (DAS) and robustness'),
    'name-keypoints': ('keygrid_ros.train.name_keypoints',
                       "name a model's keypoints after the ground-truth landmarks they track"),
    'export-model': ('keygrid_ros.model.export_cli',
                     'copy a model file with its weights stored in float16 (half the size) or float32'),
    'compare': ('keygrid_ros.train.compare', "put several models' robustness sweeps side by side (PNG + table)"),
    'predict': ('keygrid_ros.train.predict_cli', 'write the keypoints of every frame of a sequence'),
    'viz': ('keygrid_ros.viz', 'draw keypoints over several frames (PNG) from an output bag or a predict file'),
    'bench': ('keygrid_ros.bench.cli', 'benchmarks: preprocess, model, node (medians in ms, --json)'),
    'cloud': ('keygrid_ros.perception.cloud_cli', 'inspect a point cloud file or bag and run the front end on it'),
}


def _load(name: str):
    module_name, _ = SUBCOMMANDS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith('keygrid_ros'):
            return None  # the job has not been built yet; say so instead of crashing
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='keygrid', description=__doc__.splitlines()[0])
    parser.add_argument('-v', '--verbose', action='count', default=0, help='more logging (-vv for debug)')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name, (_module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse only the global part first; the subcommand builds its own parser on demand.
    head, rest = [], []
    for i, arg in enumerate(argv):
        if arg in SUBCOMMANDS:
            head, rest = argv[:i + 1], argv[i + 1:]
            break
    else:
        head = argv
    args = parser.parse_args(head)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format='%(levelname)s %(name)s: %(message)s')
    if not args.command:
        parser.print_help()
        return 2
    module = _load(args.command)
    if module is None:
        print(f'keygrid {args.command}: not available in this version yet', file=sys.stderr)
        return 2
    sub_parser = argparse.ArgumentParser(prog=f'keygrid {args.command}',
                                         description=SUBCOMMANDS[args.command][1])
    module.add_arguments(sub_parser)
    sub_args = sub_parser.parse_args(rest)
    try:
        return int(module.run(sub_args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
