"""``keygrid simulate``: one garment deformation sequence (.npz), or a whole dataset split.

One sequence::

    keygrid simulate --garment tshirt --motion fold --frames 128 --seed 3 --out tshirt_fold_3.npz

prints the physics checks and the seconds it took, and as its last stdout line one JSON object
(simulator settings, timings, checks). ``--garment`` also takes an OBJ file (units guessed, y-up;
drop and drag only, since folds need the pattern's landmarks).

A dataset (garments x motions x seeds, train/val, manifest, parallel, resumable)::

    keygrid simulate --split-config dataset.yaml --out DATA_DIR [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
import sys
import time

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from keygrid_ros.data.garments import GARMENTS
    from keygrid_ros.data.simulate import MOTIONS

    parser.add_argument('--garment', default='tshirt',
                        help=f'garment pattern ({", ".join(GARMENTS)}) or an OBJ mesh file')
    parser.add_argument('--motion', choices=MOTIONS, default='drop')
    parser.add_argument('--frames', type=int, default=128, help='output frames (default 128, like Key-Grid)')
    parser.add_argument('--seed', type=int, default=0, help='randomises the garment size and the motion')
    parser.add_argument('--out', required=True, help='output .npz (or the dataset folder with --split-config)')
    parser.add_argument('--layers', type=int, choices=(1, 2), default=1, help='1: flat, 2: front/back sewn')
    parser.add_argument('--vertices', type=int, default=2000, help='target vertex count of pattern garments')
    parser.add_argument('--fold', default=None, help='fold kind: half, bottom_up, sleeve (default: random)')
    parser.add_argument('--duration', type=float, default=None, help='simulated seconds (default per motion)')
    parser.add_argument('--sim-hz', type=float, default=None, help='substep rate (default 600)')
    parser.add_argument('--iterations', type=int, default=None, help='VBD iterations per substep (default 5)')
    contact = parser.add_mutually_exclusive_group()
    contact.add_argument('--self-contact', dest='self_contact', action='store_true', default=None,
                         help='force self-contact on (default: on for folds and two-layer garments)')
    contact.add_argument('--no-self-contact', dest='self_contact', action='store_false')
    parser.add_argument('--device', default='cpu', help="warp device: 'cpu' or 'cuda' / 'cuda:N'")
    parser.add_argument('--fast', action='store_true', help='300 Hz substeps: about 2x faster, stretchier')
    parser.add_argument('--strict', action='store_true', help='exit 1 when a physics check fails')
    parser.add_argument('--split-config', default=None, help='YAML/JSON dataset config: build a whole split')
    parser.add_argument('--workers', type=int, default=None, help='parallel processes for --split-config')


def sim_config(args: argparse.Namespace):
    from keygrid_ros.data.simulate import SimConfig

    cfg = SimConfig(frames=args.frames, duration=args.duration, self_contact=args.self_contact, device=args.device)
    if args.fast:
        cfg.sim_hz = 300.0
    if args.sim_hz:
        cfg.sim_hz = args.sim_hz
    if args.iterations:
        cfg.iterations = args.iterations
    return cfg


def load_garment(spec: str, seed: int, layers: int = 1, vertices: int = 2000):
    """A pattern garment by name, or a mesh file wrapped as a :class:`Garment` without landmarks."""
    import numpy as np

    from keygrid_ros.data.garments import GARMENTS, Garment, make_garment
    from keygrid_ros.data.meshes import load_mesh

    if spec in GARMENTS:
        return make_garment(spec, seed, target_vertices=vertices, layers=layers)
    path = Path(spec)
    if not path.exists():
        raise SystemExit(f'keygrid simulate: unknown garment {spec!r} (not a pattern name nor a file)')
    mesh = load_mesh(path)
    v = mesh.vertices - mesh.vertices.mean(axis=0)
    return Garment(path.stem, v, mesh.faces, v[:, :2].copy(), np.zeros(len(v), np.int8), {}, 1, {})


def run(args: argparse.Namespace) -> int:
    if args.split_config:
        from keygrid_ros.data.build_dataset import build, load_config

        config = load_config(args.split_config)
        manifest = build(config, args.out, workers=args.workers)
        failed = sum(not e.get('checks', {}).get('pass', False) for e in manifest['sequences'])
        print(json.dumps({'sequences': len(manifest['sequences']), 'failed_checks': failed,
                          'manifest': str(Path(args.out) / 'manifest.json')}))
        return 1 if args.strict and failed else 0

    from keygrid_ros.data.sequences import Sequence, save_sequence
    from keygrid_ros.data.simulate import physics_checks, simulate

    garment = load_garment(args.garment, args.seed, args.layers, args.vertices)
    config = sim_config(args)
    start = time.perf_counter()
    last = [start]

    def progress(frame: int, frames: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 10 or frame == frames - 1:
            last[0] = now
            print(f'  frame {frame + 1}/{frames}  {now - start:.0f} s', file=sys.stderr, flush=True)

    result = simulate(garment, args.motion, seed=args.seed, config=config, fold=args.fold, progress=progress)
    checks = physics_checks(result, args.motion, garment.layers)
    info = dict(result.info, garment=garment.name, layers=garment.layers, pattern=garment.params, checks=checks)
    save_sequence(args.out, Sequence(result.vertices, result.faces, garment.name, args.motion,
                                     result.keypoints if len(result.keypoint_names) else None,
                                     result.keypoint_names or None, info))
    print(f'{args.out}: {garment.name} {args.motion}, {result.vertices.shape[0]} frames x '
          f'{result.vertices.shape[1]} vertices in {info["seconds"]:.1f} s', file=sys.stderr)
    for key, value in checks.items():
        print(f'  {key}: {value:.4g}' if isinstance(value, float) else f'  {key}: {value}', file=sys.stderr)
    print(json.dumps(info, default=float))
    return 1 if args.strict and not checks['pass'] else 0
