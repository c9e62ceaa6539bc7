"""Experiment (session 14): the keypoint tracker on simulated sequences, scored against the simulation.

The model detects keypoints on every frame (fresh surface samples, 2048 points, snapped keypoints, as
``keygrid evaluate --sampling surface --keypoints snapped``); the tracker (``tracking.method: cpd`` unless
``--set method=icp``) carries them from frame to frame as in ``keygrid evaluate --tracking``. Besides DAS it reports
what DAS hides: how far the tracker's ``cpd`` nodes and its keypoints are from their own cloth, frame by frame.
Each node and keypoint is tied to the mesh vertices nearest to it on the frame the tracks start (a keypoint to
its 4 nearest, inverse-distance weighted) and compared with where those vertices are later (the medians over
nodes and over keypoints, averaged over frames, in centimetres: ``node_cm``, ``keypoint_cm``).

    python docs/experiments/tracker_on_sequences.py models/keygrid_pants.safetensors \\
        out/dataset_medium/val/pants_fold_1000?.npz --cache out/predictions --set balance=0

``--set FIELD=VALUE`` sets a field of :class:`keygrid_ros.perception.tracking.TrackerConfig`. ``--cache DIR``
keeps the detections (they do not depend on the tracker), so a second run costs only the tracking.
One JSON line per sequence, then one per motion and one for all.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
import json
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from keygrid_ros.data.dataset import SequenceDataset
from keygrid_ros.data.sequences import load_sequence
from keygrid_ros.perception.tracking import KeypointTracker, TrackerConfig
from keygrid_ros.train import evaluate, metrics
from keygrid_ros.train.evaluate_cli import load_keypoint_fn


def detections(model: str, paths: list[Path], cache: Path | None) -> list[evaluate.FramePredictions]:
    """Each sequence's per-frame detections (with the clouds the model saw), from ``cache`` where it has them.
    The samples are seeded by their place among all ``paths`` (as in ``keygrid evaluate``), cached or not."""
    data = SequenceDataset(paths, num_points=2048, seed=0, cache_size=1, keypoints=False, sampling='surface')
    keypoint_fn = None
    found = []
    for i, path in enumerate(data.files):
        stored = cache / Path(path).name if cache is not None else None
        if stored is not None and stored.exists():
            with np.load(stored) as arrays:
                found.append(evaluate.FramePredictions(**{k: arrays[k] for k in arrays.files}))
            continue
        if keypoint_fn is None:
            keypoint_fn, _ = load_keypoint_fn(model, 'cpu', 'snapped')
        found.append(evaluate.predict_frames(keypoint_fn, data, i))
        if stored is not None:
            stored.parent.mkdir(parents=True, exist_ok=True)
            np.savez(stored, **found[-1]._asdict())
    return found


def track(predictions: evaluate.FramePredictions, vertices: np.ndarray, config: TrackerConfig
          ) -> tuple[evaluate.FramePredictions, float, float]:
    """The tracked (snapped) keypoints, and the nodes' and keypoints' mean median distance (cm) to their cloth.
    ``vertices`` (T, V, 3) the sequence's meshes at the predicted frames."""
    tracker = KeypointTracker(config)
    keypoints, vertex_ids, node_cm, keypoint_cm = [], [], [], []
    tied = None  # (node vertices, keypoint vertices, keypoint weights) from the frame the tracks start
    for t, (cloud, found, samples) in enumerate(zip(predictions.clouds, predictions.keypoints,
                                                   predictions.sample_indices)):
        tracked = tracker(cloud, found)
        nearest = metrics.nearest_index(tracked[None], cloud[None])[0]
        keypoints.append(cloud[nearest])
        vertex_ids.append(samples[nearest])
        nodes = tracker.nodes
        if not (nodes is not None if config.method == 'cpd' else tracker.tracking):
            continue  # tied from the first frame the tracker moved its keypoints itself
        mesh = cKDTree(vertices[t])
        if tied is None:
            distance, index = mesh.query(tracked, k=4)
            weights = 1.0 / (distance + 1e-4)
            tied = (mesh.query(nodes)[1] if nodes is not None else None, index,
                    weights / weights.sum(1, keepdims=True))
        node_index, keypoint_index, keypoint_weights = tied
        cloth = np.einsum('kn,kna->ka', keypoint_weights, vertices[t][keypoint_index])
        keypoint_cm.append(np.median(np.linalg.norm(tracked - cloth, axis=1)) * 100)
        if node_index is not None:
            node_cm.append(np.median(np.linalg.norm(nodes - vertices[t][node_index], axis=1)) * 100)
    tracked_predictions = predictions._replace(keypoints=np.stack(keypoints), vertex_indices=np.stack(vertex_ids))
    return tracked_predictions, float(np.mean(node_cm)) if node_cm else float('nan'), float(np.mean(keypoint_cm))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('model')
    parser.add_argument('sequences', nargs='+', type=Path)
    parser.add_argument('--cache', type=Path, help='keep the detections here')
    parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE')
    args = parser.parse_args()
    types = {f.name: type(getattr(TrackerConfig(), f.name)) for f in fields(TrackerConfig)}
    settings = {}
    for item in args.set:
        name, value = item.split('=', 1)
        if name not in types:
            parser.error(f'unknown tracker setting {name!r} (one of {sorted(types)})')
        settings[name] = types[name](value)
    config = TrackerConfig(**settings)

    rows = []
    paths = evaluate.sorted_sequence_files(args.sequences)
    for path, predictions in zip(paths, detections(args.model, paths, args.cache)):
        sequence = load_sequence(path)
        tracked, node_cm, keypoint_cm = track(predictions, sequence.vertices[predictions.frames].astype(np.float64),
                                              config)
        result = evaluate.score_sequence(sequence, tracked)
        row = {'sequence': path.stem, 'motion': result['motion'], 'das': round(result['das'], 1),
               'coverage': round(result['coverage'], 3), 'node_cm': round(node_cm, 2),
               'keypoint_cm': round(keypoint_cm, 2), 'settings': args.set}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for motion in sorted({r['motion'] for r in rows}) + ['all']:
        chosen = [r for r in rows if motion in ('all', r['motion'])]
        print(json.dumps({'motion': motion, 'sequences': len(chosen), 'settings': args.set,
                          **{key: round(float(np.mean([r[key] for r in chosen])), digits)
                             for key, digits in (('das', 1), ('coverage', 3), ('node_cm', 2), ('keypoint_cm', 2))}}))


if __name__ == '__main__':
    main()
