"""Experiment (session 11): the node itself, on rendered depth-camera bags, scored against the simulation.

``keygrid render --mesh-out`` writes, next to each bag, the meshes of the frames it rendered (table frame,
with each frame's message stamp). This script runs ``keygrid detect`` over each bag (target frame ``table``,
the node's defaults plus any ``--set``), reads the keypoints it published, matches them to the frames by
stamp and scores them like ``keygrid evaluate`` (DAS protocols B and A, coverage). What it measures that the
evaluator does not: a partial view from one camera, depth noise, and the node's whole front end (crop, table,
cluster, voxel grid, FPS). Frames where the node found no garment are not scored (``scored`` says how many).

    python docs/experiments/node_on_bags.py models/keygrid_tshirt.safetensors out/bags/tshirt_fold_10000 \\
        --set tracking.enabled:=true

Each bag ``DIR/NAME`` needs its meshes at ``DIR/NAME.mesh.npz`` (``keygrid render --sequence SEQ --out
DIR/NAME --mesh-out DIR/NAME.mesh.npz``). One JSON line per bag, then one for their mean.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import subprocess
import sys
import tempfile

import numpy as np

from keygrid_ros.data.sequences import load_sequence
from keygrid_ros.train.evaluate import FramePredictions, score_sequence
from keygrid_ros.viz import frames_from_bag


def node_keypoints(model: str, bag: Path, settings: list[str]) -> list:
    """The node's published keypoints on ``bag`` (:func:`keygrid_ros.viz.frames_from_bag` views)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / 'out'
        command = [sys.executable, '-m', 'keygrid_ros.cli', 'detect', '--bag', str(bag), '--out', str(out),
                   '--model', model, '--set', 'target_frame:=table', '--set', 'max_age_s:=0.0']
        for setting in settings:
            command += ['--set', setting]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return frames_from_bag(out)


def score_bag(model: str, bag: Path, mesh: Path, settings: list[str]) -> dict:
    sequence = load_sequence(mesh)
    frame_of = {int(s): i for i, s in enumerate(sequence.info['stamps_ns'])}
    views = [v for v in node_keypoints(model, bag, settings) if v.stamp_ns in frame_of]
    frames = np.array([frame_of[v.stamp_ns] for v in views])
    keypoints = np.stack([v.keypoints for v in views])  # (T, K, 3) table frame = the mesh's frame
    vertices = sequence.vertices[frames].astype(np.float64)  # (T, V, 3)
    nearest = np.stack([((v[None] - k[:, None]) ** 2).sum(-1).argmin(1) for v, k in zip(vertices, keypoints)])
    all_vertices = np.tile(np.arange(sequence.num_vertices), (len(frames), 1))
    result = score_sequence(sequence, FramePredictions(frames, keypoints, nearest, all_vertices))
    return {'bag': bag.name, 'motion': result['motion'], 'frames': sequence.frames, 'scored': len(frames),
            'das': round(result['das'], 1), 'das_A': round(result['das_reference_frame'], 1),
            'coverage': round(result['coverage'], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('model')
    parser.add_argument('bags', nargs='+', type=Path)
    parser.add_argument('--set', action='append', default=[], metavar='NAME:=VALUE', help='node parameter')
    args = parser.parse_args()
    rows = []
    for bag in args.bags:
        rows.append(score_bag(args.model, bag, bag.with_name(bag.name + '.mesh.npz'), args.set))
        print(json.dumps({**rows[-1], 'settings': args.set}), flush=True)
    by_motion = {}
    for row in rows:
        by_motion.setdefault(row['motion'], []).append(row['das'])
    mean = {key: round(float(np.mean([r[key] for r in rows])), 3) for key in ('das', 'coverage')}
    print(json.dumps({'model': args.model, 'settings': args.set, **mean,
                      **{m: round(float(np.mean(v)), 1) for m, v in by_motion.items()}}), flush=True)


if __name__ == '__main__':
    main()
