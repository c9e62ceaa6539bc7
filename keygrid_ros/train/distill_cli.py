"""``keygrid distill --teacher MODEL --config FILE.yaml [key=value ...] [--resume [RUN]]``: USEEK student from Key-Grid.

Distils a Key-Grid model file into an SE(3)-invariant SPRIN student (``keygrid_ros.train.distill``); works on
one CPU or GPU and under ``torchrun --nproc_per_node N -m keygrid_ros.train.distill_cli ...`` (DDP). The last
stdout line (rank 0) is a JSON summary: run folder, student model file, teacher, steps, clouds/s, best and
last validation BCE, the student's validation DAS aligned and under SE(3), and the teacher's.
Exit status 2 on a bad config, data or teacher, 3 when training stopped on a NaN/inf loss.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--teacher', help='Key-Grid model file (.safetensors); overrides teacher: in the config')
    parser.add_argument('--init', metavar='STUDENT',
                        help='student file to start from instead of random weights (fine-tuning); its architecture '
                             'must match student: in the config; overrides init: in the config')
    parser.add_argument('--config', help='distillation config (YAML); see config/distill_useek.yaml')
    parser.add_argument('overrides', nargs='*', metavar='KEY=VALUE',
                        help='override settings, e.g. epochs=5 lr=3e-4 student.preset=tiny')
    parser.add_argument('--resume', nargs='?', const=True, default=False, metavar='RUN',
                        help='continue a run exactly: its folder, checkpoint or run name, or (bare) the run named by '
                             'run_name / the newest run under out_dir')


def _das(report: dict | None, key: str) -> float | None:
    entry = (report or {}).get(key)
    return None if not entry else entry.get('das')


def run(args: argparse.Namespace) -> int:
    from ..model.io import ModelFileError
    from .distill import distill, load_config
    from .evaluate import to_json
    from .trainer import NonFiniteLossError

    try:
        config = load_config(args.config, args.overrides, teacher=args.teacher, init=args.init)
    except (OSError, ValueError) as exc:
        print(f'keygrid distill: {exc}', file=sys.stderr)
        return 2
    if not config.train:
        print('keygrid distill: no training data (set train: [...] in the config or train=PATH)', file=sys.stderr)
        return 2
    if not config.teacher:
        print('keygrid distill: no teacher (give --teacher MODEL or set teacher: in the config)', file=sys.stderr)
        return 2
    try:
        result = distill(config, resume=args.resume)
    except NonFiniteLossError as exc:
        print(f'keygrid distill: {exc}', file=sys.stderr)
        return 3
    except (FileNotFoundError, ModelFileError, ValueError) as exc:
        print(f'keygrid distill: {exc}', file=sys.stderr)
        return 2
    if int(os.environ.get('RANK', '0')) == 0:
        best = result.run_dir / 'model_best.safetensors'
        report = result.last_report
        summary = {
            'run_dir': str(result.run_dir),
            'model': str(best if best.is_file() else result.run_dir / 'model_last.safetensors'),
            'teacher': config.teacher,
            'steps': result.step,
            'epochs': result.epoch,
            'clouds_seen': result.clouds_seen,
            'clouds_per_s': round(result.clouds_per_s, 3),
            'best_bce': result.best_bce,
            'last_bce': None if report is None else report['bce'],
            'keypoint_error': None if report is None else report['keypoint_error'],
            'student_das': _das(report, 'das'),
            'student_das_se3': _das(report, 'das_se3'),
            'teacher_das': _das(result.teacher_das, 'das'),
            'teacher_das_se3': _das(result.teacher_das, 'das_se3'),
        }
        print(to_json(summary), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m keygrid_ros.train.distill_cli`` (handy under torchrun)."""
    parser = argparse.ArgumentParser(prog='keygrid distill', description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    return run(parser.parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
