"""``keygrid name-keypoints``: give a trained model's keypoints the names of the landmarks they track.

::

    keygrid name-keypoints --model runs/tshirt/model_last.safetensors --data out/dataset/val --out named.safetensors

Key-Grid learns its keypoints without labels, so they come out as ``kp0..kp7``. Our simulated sequences carry
named ground-truth landmarks (``sleeve_top_l``, ``hem_centre``, ...). For every frame, each learned keypoint
votes for its nearest landmark; keypoints and landmarks are then matched one to one (Hungarian, on the vote
fractions), and a keypoint takes its landmark's name where at least ``--min-agreement`` of the frames
agree and its median distance to the landmark is at most ``--max-distance``. The rest keep ``kp<i>``: a
name is a promise that the keypoint sits there, not a guess.

The new file is the same model (weights untouched) with the new ``keypoint_names`` and, in its metrics,
``keypoint_naming``: per keypoint the landmark, the agreement and the median distance to it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment


def landmark_votes(keypoints: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Votes (K, M): in how many frames landmark m was learned keypoint k's nearest; and the distances (T, K, M).

    ``keypoints`` (T, K, 3) and ``landmarks`` (T, M, 3) in the same coordinates.
    """
    distances = np.linalg.norm(keypoints[:, :, None, :] - landmarks[:, None, :, :], axis=-1)  # (T, K, M)
    nearest = distances.argmin(axis=-1)  # (T, K)
    k, m = keypoints.shape[1], landmarks.shape[1]
    votes = np.zeros((k, m), dtype=np.int64)
    np.add.at(votes, (np.broadcast_to(np.arange(k), nearest.shape), nearest), 1)
    return votes, distances


def assign_names(votes: np.ndarray, landmark_names: list[str], min_agreement: float,
                 median_distance: np.ndarray | None = None,
                 max_distance: float = np.inf) -> tuple[list[str], list[dict[str, Any]]]:
    """One-to-one keypoint -> landmark matching on vote fractions; a name where the agreement is at least
    ``min_agreement`` and the keypoint's median distance (K, M) to the landmark at most ``max_distance``.

    Returns the K names and, per keypoint, ``{'landmark', 'agreement', 'named', 'median_distance'}``.
    """
    fractions = votes / np.maximum(votes.sum(axis=1, keepdims=True), 1)
    rows, cols = linear_sum_assignment(-fractions)
    match = dict(zip(rows.tolist(), cols.tolist()))
    names, report = [], []
    for k in range(votes.shape[0]):
        m = match.get(k)  # None when there are more keypoints than landmarks
        agreement = float(fractions[k, m]) if m is not None else 0.0
        close = median_distance is None or (m is not None and median_distance[k, m] <= max_distance)
        named = m is not None and agreement >= min_agreement and bool(close)
        names.append(landmark_names[m] if named else f'kp{k}')
        entry = {'keypoint': k, 'landmark': landmark_names[m] if m is not None else None,
                 'agreement': round(agreement, 3), 'named': bool(named)}
        if median_distance is not None and m is not None:
            entry['median_distance'] = round(float(median_distance[k, m]), 4)
        report.append(entry)
    return names, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', required=True, help='Key-Grid model file (.safetensors)')
    parser.add_argument('--data', required=True, nargs='+',
                        help='sequences with named ground-truth keypoints (files or folders), e.g. the val split')
    parser.add_argument('--out', required=True, help='model file to write (may be --model itself)')
    parser.add_argument('--min-agreement', type=float, default=0.6,
                        help='fraction of frames that must agree before a keypoint gets a name (default 0.6)')
    parser.add_argument('--max-distance', type=float, default=0.05,
                        help='median distance (metres) a named keypoint may keep from its landmark (default 0.05)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch-size', type=int, default=16)


def run(args: argparse.Namespace) -> int:
    from ..data.dataset import SequenceDataset
    from ..data.sequences import SequenceFormatError, load_sequence
    from ..model.io import ModelFileError, load_model, save_model
    from .config import portable_path
    from .evaluate import model_keypoint_fn, predict_frames

    if not 0.0 < args.min_agreement <= 1.0:
        print('keygrid name-keypoints: --min-agreement must be in (0, 1]', file=sys.stderr)
        return 2
    try:
        model, meta = load_model(args.model, device=args.device)
        dataset = SequenceDataset(args.data, num_points=model.config.num_points, keypoints=False, cache_size=1)
    except (ModelFileError, FileNotFoundError, SequenceFormatError) as exc:
        print(f'keygrid name-keypoints: {exc}', file=sys.stderr)
        return 2
    keypoint_fn = model_keypoint_fn(model)
    landmark_names: list[str] | None = None
    votes, distances = None, []
    for index, path in enumerate(dataset.files):
        seq = load_sequence(path)
        if seq.keypoints is None:
            print(f'keygrid name-keypoints: {path} has no ground-truth keypoints to name after', file=sys.stderr)
            return 2
        names = list(seq.keypoint_names or [])
        if landmark_names is None:
            landmark_names = names
        elif names != landmark_names:
            print(f'keygrid name-keypoints: {path} names its landmarks {names}, the first file {landmark_names}; '
                  'name with one garment type at a time', file=sys.stderr)
            return 2
        pred = predict_frames(keypoint_fn, dataset, index, batch_size=args.batch_size)
        v, d = landmark_votes(pred.keypoints, seq.keypoints[pred.frames].astype(np.float64))
        votes = v if votes is None else votes + v
        distances.append(d)
    median = np.median(np.concatenate(distances), axis=0)  # (K, M)
    names, report = assign_names(votes, landmark_names, args.min_agreement, median, args.max_distance)
    metrics = meta.get('metrics') or {}
    metrics = {**metrics, 'keypoint_naming': {'data': [portable_path(f) for f in dataset.files],
                                              'min_agreement': args.min_agreement,
                                              'max_distance': args.max_distance, 'keypoints': report}}
    training = meta.get('training_data')
    if isinstance(training, dict):  # record portable paths, not this machine's
        training = {key: [portable_path(p) for p in value] if key in ('train', 'val') else value
                    for key, value in training.items()}
    out = save_model(Path(args.out), model, keypoint_names=names, training_data=training, metrics=metrics,
                     encoder_only=not model.config.use_decoder)
    print(json.dumps({'model': str(out), 'keypoint_names': names, 'keypoints': report}))
    return 0
