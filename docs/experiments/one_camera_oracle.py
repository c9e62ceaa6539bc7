"""Experiment (session 15): what a perfect tracker scores from one camera, on the rendered bags' meshes.

The node sees a garment from one camera (``keygrid render``), so cloth under a folded flap or under the
garment itself is not in its cloud. Is DAS from one camera bounded by that, or by the tracker? This script
scores an oracle on the meshes the bags were rendered from (``keygrid render --mesh-out``):

- its keypoints are the model's own keypoints on frame 0 (the vertices nearest to them,
  :func:`keygrid_ros.train.tracked_targets.reference_vertices`, on the whole mesh), followed exactly by
  vertex index through the sequence;
- ``kept``: every keypoint is where its vertex is, seen or not (a tracker that knows where hidden cloth lies);
- ``snapped``: a keypoint whose vertex the camera does not see is moved to the nearest vertex it does see
  (the node's keypoints are points of its cloud). The camera is the one ``keygrid render`` placed, with its
  default arguments (``camera_for``); visibility is ``keygrid_ros.data.camera.visible_vertices``.

    python docs/experiments/one_camera_oracle.py models/keygrid_pants.safetensors out/bags/pants_*.mesh.npz

One JSON line per sequence (DAS of both, the share of keypoint-frames whose vertex is hidden), then one per
oracle with the per-motion figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from keygrid_ros.data.camera import visible_vertices
from keygrid_ros.data.dataset import SequenceDataset
from keygrid_ros.data.render_cli import add_arguments, camera_for
from keygrid_ros.data.sequences import load_sequence
from keygrid_ros.model.io import load_model
from keygrid_ros.train import evaluate
from keygrid_ros.train.tracked_targets import reference_vertices


def oracle_keypoints(vertices: np.ndarray, faces: np.ndarray, chosen: np.ndarray, camera) -> tuple[np.ndarray, ...]:
    """(T, K, 3) kept and snapped keypoints for vertices (T, V, 3) and the chosen vertex ids (K,), and the
    (T, K) hidden flags."""
    kept = vertices[:, chosen].astype(np.float64)
    snapped = kept.copy()
    hidden = np.zeros(kept.shape[:2], dtype=bool)
    for t, frame in enumerate(vertices.astype(np.float64)):
        seen = visible_vertices(frame, faces, camera)
        hidden[t] = ~seen[chosen]
        if hidden[t].any() and seen.any():
            visible = frame[seen]
            for k in np.flatnonzero(hidden[t]):
                snapped[t, k] = visible[np.linalg.norm(visible - kept[t, k], axis=1).argmin()]
    return kept, snapped, hidden


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('model')
    parser.add_argument('meshes', nargs='+', type=Path, help='the bags\' --mesh-out sequence files')
    args = parser.parse_args()
    render = argparse.ArgumentParser()
    add_arguments(render)
    render_defaults = render.parse_args(['--sequence', '-', '--out', '-'])
    model, _ = load_model(args.model)
    files = sorted(args.meshes, key=str)
    chosen = reference_vertices(model, SequenceDataset(files, model.config.num_points, seed=0, keypoints=False))
    scores: dict[str, list] = {'kept': [], 'snapped': []}
    for path, ids in zip(files, chosen):
        seq = load_sequence(path)
        kept, snapped, hidden = oracle_keypoints(seq.vertices, seq.faces, ids, camera_for(seq.vertices,
                                                                                          render_defaults))
        line = {'sequence': path.name, 'hidden_share': round(float(hidden.mean()), 3)}
        for name, keypoints in (('kept', kept), ('snapped', snapped)):
            frames = np.arange(seq.frames)
            pred = evaluate.FramePredictions(frames, keypoints, np.tile(ids, (seq.frames, 1)),
                                             np.tile(np.arange(seq.num_vertices), (seq.frames, 1)))
            result = evaluate.score_sequence(seq, pred)
            scores[name].append(result)
            line[name] = round(result['das'], 1)
        print(json.dumps(line), flush=True)
    for name, per_sequence in scores.items():
        summary = evaluate.summarize(per_sequence)
        print(json.dumps({'oracle': name, 'das': round(summary['das'], 1),
                          **{m: round(v['das'], 1) for m, v in summary['by_motion'].items()}}))


if __name__ == '__main__':
    main()
