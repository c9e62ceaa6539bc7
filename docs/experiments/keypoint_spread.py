"""Experiment (session 10): how wide each keypoint's weights are, and how far out the keypoints sit.

Trained with the correspondence loss, Key-Grid's keypoints cover less of the garment (``docs/results.md``,
"Keypoints asked to follow their cloth"). A keypoint is the weighted mean of the cloud, so two things can
draw it inwards: weights spread over a wide patch (whose mean lies inside the garment), or weights that stay
narrow but sit on inner cloth. This script tells them apart on every 8th frame of some sequences:

- ``effective_points``: 1 / sum_n w[k, n]^2 per keypoint and frame, the median (2048 for uniform weights,
  1 for one point);
- ``spread``: the weighted RMS distance of the points from their keypoint, sqrt(sum_n w[k, n] ||x_n - kp_k||^2),
  normalised units, the median;
- ``radius_share``: the keypoint's distance from the cloud's centroid over the farthest point's, the mean
  (1 = on the outline at its farthest, 0 = at the centre).

    python docs/experiments/keypoint_spread.py 'out/dataset_medium/val/tshirt_*.npz' \\
        models/keygrid_tshirt.safetensors runs/tshirt_ctr03/model_last.safetensors

One JSON line per model.
"""

from __future__ import annotations

import glob
import json
import sys

import torch

from keygrid_ros.data.dataset import SequenceDataset
from keygrid_ros.model.io import load_model


def weight_statistics(model_path: str, files: list[str], every: int = 8, batch: int = 16) -> dict[str, float]:
    """The three figures above for one Key-Grid file over every ``every``-th frame of ``files``."""
    net, _ = load_model(model_path)
    net.eval()
    data = SequenceDataset(files, num_points=net.config.num_points, seed=0, keypoints=False)
    items = list(range(0, len(data), every))
    effective, spread, radius = [], [], []
    with torch.no_grad():
        for start in range(0, len(items), batch):
            points = torch.stack([data[i]['points'] for i in items[start:start + batch]])  # (B, N, 3)
            out = net(points, reconstruct=False, hard=False)
            weights, keypoints = out.weights.float(), out.keypoints.float()  # (B, K, N), (B, K, 3)
            effective.append(1.0 / (weights ** 2).sum(-1))
            squared = ((points.unsqueeze(1) - keypoints.unsqueeze(2)) ** 2).sum(-1)  # (B, K, N)
            spread.append((weights * squared).sum(-1).sqrt())
            centre = points.mean(1, keepdim=True)  # (B, 1, 3)
            farthest = (points - centre).norm(dim=-1).amax(-1, keepdim=True)  # (B, 1)
            radius.append((keypoints - centre).norm(dim=-1) / farthest)
    return {'effective_points': round(torch.cat(effective).median().item(), 1),
            'spread': round(torch.cat(spread).median().item(), 4),
            'radius_share': round(torch.cat(radius).mean().item(), 3)}


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    files = sorted(glob.glob(argv[0]))
    if not files:
        raise SystemExit(f'no sequence files match {argv[0]!r}')
    torch.set_num_threads(1)
    for model_path in argv[1:]:
        print(json.dumps({'model': model_path, **weight_statistics(model_path, files)}), flush=True)


if __name__ == '__main__':
    main(sys.argv[1:])
