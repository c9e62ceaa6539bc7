"""``keygrid train --config FILE.yaml [key=value ...] [--resume [RUN]]``: train Key-Grid from sequence files.

Works as is on one CPU or GPU, and under ``torchrun --nproc_per_node N -m keygrid_ros.cli train ...`` (or
``torchrun --nproc_per_node N $(which keygrid) train ...``) with DDP. The last stdout line (rank 0) is a
JSON summary: run folder, model file, steps, clouds seen, clouds/s, best and last validation DAS.
Exit status 3 when training stopped on a NaN/inf loss (the last good checkpoint is kept).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--config', help='training config (YAML); see config/train_keygrid.yaml')
    parser.add_argument('overrides', nargs='*', metavar='KEY=VALUE',
                        help='override settings, e.g. epochs=10 lr=0.05 model.grid_resolution=[16,16,16]')
    parser.add_argument('--resume', nargs='?', const=True, default=False, metavar='RUN',
                        help='continue a run exactly: its folder, checkpoint or run name, or (bare) the run named by '
                             'run_name / the newest run under out_dir')


def run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .trainer import NonFiniteLossError, train

    try:
        config = load_config(args.config, args.overrides)
    except (OSError, ValueError) as exc:
        print(f'keygrid train: {exc}', file=sys.stderr)
        return 2
    if not config.train:
        print('keygrid train: no training data (set train: [...] in the config or train=PATH)', file=sys.stderr)
        return 2
    try:
        result = train(config, resume=args.resume)
    except NonFiniteLossError as exc:
        print(f'keygrid train: {exc}', file=sys.stderr)
        return 3
    except FileNotFoundError as exc:
        print(f'keygrid train: {exc}', file=sys.stderr)
        return 2
    if int(os.environ.get('RANK', '0')) == 0:
        best = result.run_dir / 'model_best.safetensors'
        summary = {
            'run_dir': str(result.run_dir),
            'model': str(best if best.is_file() else result.run_dir / 'model_last.safetensors'),
            'steps': result.step,
            'epochs': result.epoch,
            'clouds_seen': result.clouds_seen,
            'clouds_per_s': round(result.clouds_per_s, 3),
            'best_das': result.best_das,
            'last_das': result.last_das,
        }
        print(json.dumps(summary), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m keygrid_ros.train.cli`` (handy under torchrun)."""
    parser = argparse.ArgumentParser(prog='keygrid train', description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    return run(parser.parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
