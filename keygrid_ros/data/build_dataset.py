"""Build a train/validation split of simulated sequences (garments x motions x seeds) with a manifest.

The config (YAML or JSON)::

    garments: [tshirt, pants, towel]     # pattern names
    motions: [drop, drag, fold]
    layers: [1]                          # 1 and/or 2 (two-layer only where the garment has it)
    splits: {train: 8, val: 2}           # seeds per (garment, motion, layers); or explicit seed lists
    folds: cycle                         # fold kind per seed: cycle (default) or random
    frames: 128
    vertices: 2000
    sim: {sim_hz: 600, iterations: 5}    # any SimConfig field

Validation seeds start at 10000, so validation garments are unseen sizes/proportions, not just
unseen motions. A garment folds in several ways (``simulate.FOLDS``: half, bottom up, sleeve); with
``folds: cycle`` the kind is the garment's sorted kinds[seed % n], so every split with at least n seeds
trains and validates on every kind. ``folds: random`` lets the seed draw it (how ``split_small`` was
built: its 3 training seeds never drew the half fold its validation seed drew).

Files are ``<split>/<garment>[_2l]_<motion>_<seed>.npz``; a file that already exists
and reads back is skipped (resumable: kill and rerun). Sequences run in parallel processes (Newton on
CPU uses one core each); each finished sequence logs one progress line, and ``manifest.json`` is
rewritten after each one.

Run as ``keygrid simulate --split-config FILE --out DIR`` or
``python -m keygrid_ros.data.build_dataset FILE DIR [--workers N]``.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
import json
import logging
import os
from pathlib import Path
import sys
import time

log = logging.getLogger(__name__)

VAL_SEED_BASE = 10000


@dataclass
class Job:
    split: str
    garment: str
    motion: str
    seed: int
    layers: int
    path: str
    fold: str | None = None  # the fold kind, or None: the seed draws it


def load_config(path: str | Path) -> dict:
    text = Path(path).read_text(encoding='utf-8')
    if Path(path).suffix == '.json':
        return json.loads(text)
    import yaml

    return yaml.safe_load(text) or {}


FOLD_PLANS = ('cycle', 'random')


def fold_kind(garment: str, seed: int, plan: str) -> str | None:
    """The fold kind of ``garment``'s fold with ``seed`` under ``plan`` (None: drawn from the seed)."""
    from keygrid_ros.data.simulate import FOLDS

    kinds = sorted(FOLDS.get(garment, ()))
    return kinds[seed % len(kinds)] if plan == 'cycle' and kinds else None


def plan_jobs(config: dict, out: str | Path) -> list[Job]:
    """Every (split, garment, motion, layers, seed) of ``config``, with its output path and fold kind."""
    from keygrid_ros.data.garments import GARMENTS

    out = Path(out)
    folds = config.get('folds', 'cycle')
    if folds not in FOLD_PLANS:
        raise ValueError(f'folds: {folds!r}; choose from {FOLD_PLANS}')
    garments = config.get('garments', list(GARMENTS))
    motions = config.get('motions', ['drop', 'drag', 'fold'])
    layer_list = config.get('layers', [1])
    splits = config.get('splits', {'train': 4, 'val': 1})
    jobs = []
    for split, seeds in splits.items():
        if isinstance(seeds, int):
            base = VAL_SEED_BASE if split != 'train' else 0
            seeds = list(range(base, base + seeds))
        for garment in garments:
            if garment not in GARMENTS:
                raise ValueError(f'unknown garment {garment!r}')
            for layers in layer_list:
                if layers == 2 and not GARMENTS[garment]:
                    continue
                for motion in motions:
                    for seed in seeds:
                        tag = f'{garment}_2l' if layers == 2 else garment
                        path = out / split / f'{tag}_{motion}_{seed}.npz'
                        fold = fold_kind(garment, int(seed), folds) if motion == 'fold' else None
                        jobs.append(Job(split, garment, motion, int(seed), int(layers), str(path), fold))
    return jobs


def _readable(path: Path) -> dict | None:
    """The stored info of a finished sequence file, or ``None`` when it is missing or broken."""
    if not path.exists():
        return None
    try:
        from keygrid_ros.data.sequences import load_npz

        seq = load_npz(path)
        return {'frames': seq.frames, 'vertices': seq.num_vertices, **seq.info}
    except (ValueError, OSError):
        return None


def run_job(job: Job, config: dict) -> dict:
    """Simulate one job and write its file; returns its manifest entry (run in a worker process)."""
    import warp as wp

    from keygrid_ros.data.garments import make_garment
    from keygrid_ros.data.sequences import Sequence, save_sequence
    from keygrid_ros.data.simulate import SimConfig, physics_checks, simulate

    wp.config.quiet = True
    garment = make_garment(job.garment, job.seed, target_vertices=config.get('vertices', 2000), layers=job.layers)
    sim = SimConfig(frames=config.get('frames', 128), **config.get('sim', {}))
    result = simulate(garment, job.motion, seed=job.seed, config=sim, fold=job.fold)
    checks = physics_checks(result, job.motion, garment.layers)
    info = dict(result.info, garment=garment.name, layers=garment.layers, pattern=garment.params, checks=checks)
    save_sequence(job.path, Sequence(result.vertices, result.faces, garment.name, job.motion, result.keypoints,
                                     result.keypoint_names, info))
    return _entry(job, {'frames': result.vertices.shape[0], 'vertices': result.vertices.shape[1], **info})


def _entry(job: Job, info: dict) -> dict:
    return dict(asdict(job), frames=info.get('frames'), vertices=info.get('vertices'),
                seconds=info.get('seconds'), fold=info.get('fold'), checks=info.get('checks', {}))


def write_manifest(out: Path, config: dict, entries: list[dict]) -> dict:
    entries = sorted(entries, key=lambda e: e['path'])
    manifest = {
        'config': config,
        'splits': {s: [os.path.relpath(e['path'], out) for e in entries if e['split'] == s]
                   for s in sorted({e['split'] for e in entries})},
        'sequences': [dict(e, path=os.path.relpath(e['path'], out)) for e in entries],
    }
    tmp = out / 'manifest.json.tmp'
    tmp.write_text(json.dumps(manifest, indent=1, default=float), encoding='utf-8')
    tmp.replace(out / 'manifest.json')
    return manifest


def build(config: dict, out: str | Path, workers: int | None = None, resume: bool = True) -> dict:
    """Simulate every job of ``config`` into ``out`` (skipping finished files) and write the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(config, out)
    entries, todo, mismatched = [], [], []
    for job in jobs:
        info = _readable(Path(job.path)) if resume else None
        if info is not None and job.fold is not None and info.get('fold') != job.fold:
            mismatched.append(f'{job.path} (folds {info.get("fold")!r}, the plan says {job.fold!r})')
        (entries.append(_entry(job, info)) if info is not None else todo.append(job))
    if mismatched:
        # Never overwrite a finished simulation: it may have taken many minutes. The user decides.
        raise ValueError('these files do not match the plan; move them away or build into another folder '
                         '(or set folds: random): ' + '; '.join(mismatched))
    total = len(jobs)
    log.warning('dataset %s: %d sequences, %d already done, %d to simulate', out, total, len(entries), len(todo))
    workers = workers or max(1, min(len(todo), (os.cpu_count() or 2)))
    start = time.perf_counter()
    if todo:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(run_job, job, config): job for job in todo}
            for n, future in enumerate(as_completed(futures), 1):
                job = futures[future]
                try:
                    entry = future.result()
                except Exception as exc:  # one bad sequence must not lose the others
                    print(f'[{len(entries) + 1}/{total}] FAILED {job.path}: {exc}', file=sys.stderr, flush=True)
                    continue
                entries.append(entry)
                elapsed = time.perf_counter() - start
                eta = elapsed / n * (len(todo) - n)
                failed = [k for k, v in entry['checks'].items() if k.endswith('_ok') and not v]
                ok = 'ok' if entry['checks'].get('pass') else 'CHECKS FAILED: ' + ', '.join(failed or ['finite'])
                print(f'[{len(entries)}/{total}] {job.path} {entry["seconds"]:.0f} s {ok}  '
                      f'(elapsed {elapsed:.0f} s, eta {eta:.0f} s)', file=sys.stderr, flush=True)
                write_manifest(out, config, entries)
    return write_manifest(out, config, entries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='YAML or JSON dataset config')
    parser.add_argument('out', help='dataset folder')
    parser.add_argument('--workers', type=int, default=None)
    parser.add_argument('--no-resume', action='store_true', help='simulate again even where files exist')
    args = parser.parse_args(argv)
    manifest = build(load_config(args.config), args.out, args.workers, resume=not args.no_resume)
    print(json.dumps({'sequences': len(manifest['sequences']), 'splits': {k: len(v) for k, v in
                                                                          manifest['splits'].items()}}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
