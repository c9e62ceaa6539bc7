"""``keygrid compare``: several models' robustness sweeps side by side, as one PNG and one markdown table.

An ablation study is several ``keygrid evaluate --sweep`` runs (one per model); their JSON files are what this
reads, so nothing is scored twice and any sweep run earlier, on any machine, can join the comparison::

    keygrid evaluate --model runs/full/model_last.safetensors --data val/ --sweep --sweep-out sweeps/full
    keygrid evaluate --model runs/nogrid/model_last.safetensors --data val/ --sweep --sweep-out sweeps/nogrid
    keygrid compare sweeps/full.json sweeps/nogrid.json --labels 'Key-Grid' 'no grid heatmap' --out ablation

writes ``ablation.png`` (one line per model against noise and against input points, bars for clean and
SE(3)) and ``ablation.md`` (the table, also printed), in the protocol chosen by ``--metric``. Sweeps over
different data or levels are refused unless ``--allow-mismatch``: such numbers are not comparable. The data is
known by content (each sweep file lists its sequences' fingerprints), so the same files at another path, on
another machine, are the same data; sweep files older than the fingerprints are compared by path.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
from typing import Any

#: The simulator's motions in the order the paper's tables give them; other names follow alphabetically.
MOTION_ORDER = ('drop', 'drag', 'fold')
METRICS = {'das_correspondence': 'DAS (B)', 'das_reference_frame': 'DAS (A)', 'coverage': 'coverage'}


class SweepFileError(ValueError):
    """A file that is not a ``keygrid evaluate --sweep`` JSON, or sweeps that cannot be compared."""


def load_sweep(path: str | Path) -> dict[str, Any]:
    """The sweep in ``path`` (``keygrid evaluate --sweep``'s JSON), checked for the keys the comparison reads."""
    path = Path(path)
    try:
        sweep = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SweepFileError(f'{path}: not a readable JSON file ({exc})') from None
    if not isinstance(sweep, dict) or not isinstance(sweep.get('clean'), dict):
        raise SweepFileError(f"{path}: no 'clean' entry; is it the JSON that keygrid evaluate --sweep writes?")
    for key in ('noise', 'points'):
        if not isinstance(sweep.get(key), list) or not all(isinstance(e, dict) for e in sweep[key]):
            raise SweepFileError(f"{path}: '{key}' must be a list of entries, as keygrid evaluate --sweep writes")
    return sweep


def levels(sweep: dict[str, Any]) -> tuple[tuple[float, ...], tuple[int, ...], bool]:
    """The sweep's noise sigmas, point counts, and whether it has the SE(3) entry."""
    return (tuple(e['sigma'] for e in sweep['noise']), tuple(e['points'] for e in sweep['points']),
            isinstance(sweep.get('se3'), dict))


def same_data(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two sweeps were scored on the same sequences: by content where both carry ``data_fingerprints``
    (what ``keygrid evaluate --sweep`` writes; copies of the data on other machines match), else by path."""
    if a.get('data_fingerprints') and b.get('data_fingerprints'):
        return sorted(a['data_fingerprints']) == sorted(b['data_fingerprints'])
    return set(a.get('data') or ()) == set(b.get('data') or ())


def check_comparable(sweeps: dict[str, dict[str, Any]]) -> None:
    """Raise :class:`SweepFileError` unless every sweep has the same levels and was scored on the same data."""
    first_label, first = next(iter(sweeps.items()))
    first_levels = levels(first)
    for label, sweep in sweeps.items():
        if levels(sweep) != first_levels:
            raise SweepFileError(f'{label!r} and {first_label!r} were swept over different levels '
                                 f'({levels(sweep)} against {first_levels})')
        if not same_data(sweep, first):
            raise SweepFileError(f'{label!r} and {first_label!r} were scored on different data')


def _score(entry: dict[str, Any] | None, metric: str) -> str:
    value = None if entry is None else entry.get(metric)
    if value is None:
        return '–'
    return f'{value:.2f}' if metric == 'coverage' else f'{value:.1f}'


def all_levels(sweeps: dict[str, dict[str, Any]]) -> tuple[tuple[float, ...], tuple[int, ...], bool]:
    """Every noise sigma (rising) and point count (falling, as the sweep halves them) that any sweep has, and
    whether any has SE(3): the columns of a comparison, so that under ``--allow-mismatch`` no sweep's level is
    dropped because the first sweep lacks it."""
    found = [levels(sweep) for sweep in sweeps.values()]
    sigmas = sorted({s for f in found for s in f[0]})
    counts = sorted({n for f in found for n in f[1]}, reverse=True)
    return tuple(sigmas), tuple(counts), any(f[2] for f in found)


def sweep_table(sweeps: dict[str, dict[str, Any]], metric: str = 'das_correspondence') -> str:
    """A markdown table: one row per model; clean, per motion (clean), every noise level, every point count and
    SE(3) in ``metric`` (the levels of all sweeps; a level a sweep lacks shows as '–')."""
    sigmas, counts, se3 = all_levels(sweeps)
    found = {m for s in sweeps.values() for m in (s['clean'].get('by_motion') or {})}
    motions = [m for m in MOTION_ORDER if m in found] + sorted(found - set(MOTION_ORDER))
    header = ['model', f'clean {METRICS[metric]}', *motions, *(f'noise {s:g}' for s in sigmas),
              *(f'{n} points' for n in counts), *(['SE(3)'] if se3 else [])]
    rows = []
    for label, sweep in sweeps.items():
        by_motion = sweep['clean'].get('by_motion') or {}
        noise = {e['sigma']: e for e in sweep['noise']}
        points = {e['points']: e for e in sweep['points']}
        cells = [label, _score(sweep['clean'], metric), *(_score(by_motion.get(m), metric) for m in motions),
                 *(_score(noise.get(s), metric) for s in sigmas), *(_score(points.get(n), metric) for n in counts),
                 *([_score(sweep.get('se3'), metric)] if se3 else [])]
        rows.append(cells)
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(cells) + ' |' for cells in rows]
    return '\n'.join(lines)


def plot_sweeps(sweeps: dict[str, dict[str, Any]], path: str | Path, metric: str = 'das_correspondence') -> Path:
    """PNG: ``metric`` against noise sigma and against input points, one line per model; clean and SE(3) bars."""
    from .evaluate import plot_sweep_lines

    lines = [(label, sweep, metric, 'o-') for label, sweep in sweeps.items()]
    return plot_sweep_lines(lines, path, METRICS[metric], top=1.02 if metric == 'coverage' else 102.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('sweeps', nargs='+', metavar='SWEEP_JSON', help='JSON files of keygrid evaluate --sweep')
    parser.add_argument('--labels', nargs='+', default=None, metavar='LABEL',
                        help='one name per file, in order (default: each file name without .json)')
    parser.add_argument('--metric', choices=sorted(METRICS), default='das_correspondence',
                        help='what to compare (default: das_correspondence, the headline DAS)')
    parser.add_argument('--out', default='comparison', metavar='PREFIX',
                        help='writes PREFIX.png and PREFIX.md (default: comparison)')
    parser.add_argument('--allow-mismatch', action='store_true',
                        help='compare sweeps over different data or levels (missing levels show as -)')


def run(args: argparse.Namespace) -> int:
    labels = args.labels or [Path(p).name.removesuffix('.json') for p in args.sweeps]
    if len(labels) != len(args.sweeps):
        print(f'keygrid compare: {len(labels)} labels for {len(args.sweeps)} files', file=sys.stderr)
        return 2
    if len(set(labels)) != len(labels):
        print(f'keygrid compare: labels must differ, got {labels}', file=sys.stderr)
        return 2
    try:
        sweeps = {label: load_sweep(path) for label, path in zip(labels, args.sweeps)}
        if not args.allow_mismatch:
            check_comparable(sweeps)
    except SweepFileError as exc:
        print(f'keygrid compare: {exc}', file=sys.stderr)
        return 2
    table = sweep_table(sweeps, args.metric)
    prefix = Path(args.out)
    markdown = prefix.with_name(prefix.name + '.md')
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(table + '\n')
    plot = plot_sweeps(sweeps, prefix.with_name(prefix.name + '.png'), args.metric)
    print(table)
    print(f'wrote {plot} and {markdown}')
    return 0
