"""Tracked targets: each keypoint is asked to stay on the cloth a teacher put it on in a reference frame.

The correspondence loss (:mod:`keygrid_ros.train.correspondence`) lets the student choose the cloth it
follows, and it chose cloth that moves little: the keypoints drew inwards and the coverage fell
(``docs/results.md``, "Keypoints asked to follow their cloth"). Here the cloth is chosen once, by a frozen
teacher (the model training starts from), in a frame where the teacher is reliable: frame 0 of every
simulated sequence is the flat garment (lying on the table for drag and fold, tilted in the air for drop).
For each training sequence s and keypoint k,

    v[s, k] = the mesh vertex nearest to the teacher's keypoint k on frame ``reference_frame`` of s,

and in every training frame t of s the student's keypoint k is pulled towards where that vertex is in t:

    loss = mean over (clouds, keypoints) of || kp[k] - x_t[v[s, k]] ||^2   (normalised units)

with the vertex transformed (stretched, turned, normalised) exactly like the cloud. The targets cover the
garment as the teacher's keypoints on a flat garment do, so nothing rewards piling up; and the vertex
ids of a simulated mesh are the correspondence, so the targets are what a perfect tracker of the
teacher's first-frame keypoints would output (96.5 DAS on the T-shirt validation set).

Measured (``docs/results.md``, part 5 of "Keypoints asked to follow their cloth"): fine-tuning with it did not
raise the per-frame fold DAS beyond the seed spread and cost the drops 4-12 points. The shipped models'
keypoint k is "the extremity towards some direction", so the cloth it starts on depends on the garment's yaw
(3-5 different landmarks per keypoint over 9 training sequences): the targets contradict each other across
sequences, and a per-frame network cannot tell from a deformed frame which yaw its garment started at.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import SequenceDataset
from .evaluate import model_keypoint_fn


def reference_vertices(teacher: torch.nn.Module, dataset: SequenceDataset, reference_frame: int = 0,
                       batch_size: int = 8) -> np.ndarray:
    """(S, K) int64: for every sequence of ``dataset``, the vertex nearest to each of the teacher's keypoints.

    The teacher sees frame ``reference_frame`` (the last frame where a sequence is shorter) sampled as
    ``dataset`` samples, without augmentation, and places its weighted-mean keypoints (the ``snapped`` mode
    before snapping); the nearest vertex of the full mesh in that frame is taken. Deterministic: the
    samples depend only on the dataset's seed.
    """
    if reference_frame < 0:
        raise ValueError(f'reference_frame must be >= 0, got {reference_frame}')
    plain = SequenceDataset(dataset.files, num_points=dataset.num_points, sampling=dataset.sampling,
                            seed=dataset.seed, keypoints=False)
    starts = np.concatenate([[0], np.cumsum(plain.frame_counts)[:-1]])
    frames = [min(reference_frame, int(count) - 1) for count in plain.frame_counts]
    keypoint_fn = model_keypoint_fn(teacher, hard=False)
    chosen = []
    for first in range(0, len(frames), batch_size):
        items = [plain[int(starts[s]) + frames[s]] for s in range(first, min(first + batch_size, len(frames)))]
        keypoints = keypoint_fn(torch.stack([item['points'] for item in items])).double().cpu().numpy()  # (b, K, 3)
        for item, kp in zip(items, keypoints):
            original = (kp + 1.0) / item['scale'] + item['offset']  # no SE(3): plain has no augmentation
            vertices = plain.sequence(item['sequence']).vertices[item['frame']].astype(np.float64)  # (V, 3)
            squared = ((original[:, None, :] - vertices[None]) ** 2).sum(-1)  # (K, V)
            chosen.append(squared.argmin(axis=1))
    return np.stack(chosen).astype(np.int64)


def tracked_target_loss(keypoints: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of each keypoint from its target, over the targets the cloud holds.

    Args:
        keypoints: (B, K, 3) the student's keypoints (normalised units).
        targets: (B, K, 3) where each keypoint's reference vertex is in that frame, normalised like the cloud.
        seen: (B, K) bool, False where the cloud's (partial) view does not hold the target vertex: a keypoint
            is not asked to sit on cloth it cannot see.

    Returns a 0-d tensor (0 when no target is seen).
    """
    squared = ((keypoints - targets) ** 2).sum(-1)  # (B, K)
    mask = seen.to(squared.dtype)
    return (squared * mask).sum() / mask.sum().clamp_min(1.0)
