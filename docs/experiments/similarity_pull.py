"""Experiment (session 22): how hard each of Key-Grid's two losses pulls on the keypoints.

The similarity loss reaches the keypoints only through the grid heatmap (keypoints -> segments -> heat at the
grid points -> the decoder's grid feature -> the reconstruction). The decoder also sees the encoder's features
at every level (the skips), so it can reconstruct the cloud without reading the heatmap; if it does, the
similarity loss trains the encoder through the skips and leaves the keypoints to the farthest-point loss, and the
grid-heatmap and similarity-loss ablations cannot differ much from the full model. This script measures that on
a trained full model (file with its decoder), in training mode, on batches of 8 consecutive frames of a sequence
(every 16th frame starts one):

- ``keypoint_pull_sim`` / ``keypoint_pull_fps``: the norms of d(lambda_sim * L_sim)/d(keypoints) and of
  d(lambda_fps * L_fps)/d(keypoints), (B, K, 3) each, the mean over batches;
- ``encoder_pull_sim`` / ``encoder_pull_fps``: the same two gradients' norms over the encoder's parameters;
- ``sim`` / ``fps``: the two loss values.

    python docs/experiments/similarity_pull.py runs/single_full_10000/model_last.safetensors \\
        out/dataset_medium/val/tshirt_fold_10000.npz [MODEL DATA ...]

One JSON line per (model, sequence) pair.
"""

from __future__ import annotations

import json
import sys

import torch

from keygrid_ros import ops
from keygrid_ros.data.dataset import SequenceDataset
from keygrid_ros.model.io import load_model


def gradient_norm(grads) -> float:
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def pulls(model_path: str, data: str, batch: int = 8, every: int = 16) -> dict:
    net, _ = load_model(model_path)
    if net.decoder is None:
        raise SystemExit(f'{model_path}: no decoder in the file (an encoder-only export has no similarity loss)')
    net.train()  # as in training: batch statistics, dropout
    cfg = net.config
    dataset = SequenceDataset([data], cfg.num_points, 'fps', seed=0, keypoints=False)
    encoder = [p for p in net.encoder.parameters() if p.requires_grad]
    rows = []
    for start in range(0, len(dataset) - batch + 1, every):
        points = torch.stack([dataset[i]['points'] for i in range(start, start + batch)])  # (B, N, 3)
        torch.manual_seed(start)
        out = net(points, reconstruct=True)
        targets, _ = ops.farthest_point_sample(points, cfg.num_fps_targets)
        fps = cfg.lambda_fps * ops.chamfer_distance(out.keypoints, targets)
        sim = cfg.lambda_sim * ops.chamfer_distance(out.reconstruction, points)
        fps_kp, *fps_enc = torch.autograd.grad(fps, [out.keypoints, *encoder], retain_graph=True, allow_unused=True)
        sim_kp, *sim_enc = torch.autograd.grad(sim, [out.keypoints, *encoder], allow_unused=True)
        rows.append([sim_kp.norm().item(), fps_kp.norm().item(), gradient_norm(sim_enc), gradient_norm(fps_enc),
                     sim.item(), fps.item()])
    mean = [sum(column) / len(rows) for column in zip(*rows)]
    return {'model': model_path, 'data': data, 'batches': len(rows),
            'keypoint_pull_sim': round(mean[0], 5), 'keypoint_pull_fps': round(mean[1], 5),
            'keypoint_sim_over_fps': round(mean[0] / mean[1], 4),
            'encoder_pull_sim': round(mean[2], 4), 'encoder_pull_fps': round(mean[3], 4),
            'encoder_sim_over_fps': round(mean[2] / mean[3], 4), 'sim': round(mean[4], 5), 'fps': round(mean[5], 5)}


if __name__ == '__main__':
    torch.set_num_threads(1)
    arguments = sys.argv[1:]
    if not arguments or len(arguments) % 2:
        raise SystemExit(__doc__)
    for model_path, data in zip(arguments[::2], arguments[1::2]):
        print(json.dumps(pulls(model_path, data)), flush=True)
