"""Experiment (session 8, not shipped): does filtering keypoints over frames raise DAS on folds?

A forward (Bayes) filter per keypoint over the points of each frame: the posterior over frame t's points is
the model's weights (to the power ``beta``) times the previous posterior carried over by a Gaussian motion
kernel of width ``sigma`` metres, plus a small floor (``eps``) so that a lost keypoint can come back. The
keypoint is the posterior's mean snapped to the nearest point. ``sigma=None`` is the node's ``snapped``
mode, frame by frame. Results are in ``docs/results.md`` ("Keypoints asked to follow their cloth").

    python docs/experiments/temporal_filter.py models/keygrid_tshirt.safetensors \\
        out/dataset_medium/val/tshirt_fold_10000.npz out/dataset_medium/val/tshirt_fold_10001.npz
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from keygrid_ros.data.dataset import SequenceDataset
from keygrid_ros.model.student import load_keypoint_model
from keygrid_ros.train.evaluate import FramePredictions, load_sequence, score_sequence
from keygrid_ros.train.metrics import nearest_index

SETTINGS = [{'sigma': None}] + [{'sigma': s, 'beta': b} for s in (0.01, 0.02, 0.04) for b in (1.0, 0.5)]


def frame_weights(model, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (T, N, 3) in the file's coordinates, weights (T, K, N) and vertex ids (T, N) of every frame."""
    dataset = SequenceDataset([path], num_points=2048, seed=0, cache_size=1, keypoints=False)
    points, weights, ids = [], [], []
    for start in range(0, len(dataset), 16):
        items = [dataset[i] for i in range(start, min(len(dataset), start + 16))]
        prediction = model.predict(torch.stack([item['points'] for item in items]))
        for item, w in zip(items, np.asarray(prediction.weights)):
            points.append((item['points'].double().numpy() + 1.0) / item['scale'] + np.asarray(item['offset']))
            weights.append(w.astype(np.float64))
            ids.append(np.asarray(item['indices']))
    return np.stack(points), np.stack(weights), np.stack(ids)


def filtered_keypoints(points, weights, sigma=None, beta=1.0, eps=1e-3) -> np.ndarray:
    """(T, K) indices of the keypoint points, frame by frame, through the filter."""
    chosen, posterior = [], None
    for t in range(len(points)):
        likelihood = weights[t] ** beta
        likelihood /= likelihood.sum(1, keepdims=True)
        if sigma is None or posterior is None:
            posterior = likelihood
        else:
            squared = torch.cdist(torch.from_numpy(points[t]), torch.from_numpy(points[t - 1])).numpy() ** 2
            prior = posterior @ np.exp(-squared / (2 * sigma ** 2)).T  # (K, N_t): carried over by the motion kernel
            prior = (1 - eps) * prior / prior.sum(1, keepdims=True) + eps / prior.shape[1]
            posterior = likelihood * prior
            posterior /= posterior.sum(1, keepdims=True)
        mean = posterior @ points[t]  # (K, 3)
        chosen.append(nearest_index(mean[None], points[t][None])[0])
    return np.stack(chosen)


def main(model_path: str, *paths: str) -> None:
    model = load_keypoint_model(model_path, device='cpu', hard=False)
    for path in paths:
        points, weights, ids = frame_weights(model, path)
        sequence = load_sequence(path)
        for setting in SETTINGS:
            chosen = filtered_keypoints(points, weights, **setting)
            keypoints = np.take_along_axis(points, chosen[..., None], axis=1)
            vertex_ids = np.take_along_axis(ids, chosen, axis=1)
            result = score_sequence(sequence, FramePredictions(np.arange(len(points)), keypoints, vertex_ids, ids))
            print(json.dumps({'file': path, **setting, 'das': round(result['das'], 1),
                              'coverage': round(result['coverage'], 3)}), flush=True)


if __name__ == '__main__':
    main(*sys.argv[1:])
