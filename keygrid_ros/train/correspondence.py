"""Correspondence consistency: a keypoint should stay on the same cloth as the garment deforms.

Key-Grid's own losses (farthest-point coverage, reconstruction) see one frame at a time, so nothing asks
a keypoint to follow the cloth it sits on from one frame to the next; on folds, where the cloth is laid on
itself and the outline changes, keypoints placed by the outline move to other cloth (``docs/results.md``).
Simulated sequences keep their mesh, so the vertex index of every sampled point is a correspondence
between any two frames of a sequence. This optional loss (``correspondence_weight`` in the training
config; 0, the released setting, turns it off) uses it:

    for a pair of frames (a, b) of one sequence and each keypoint k, the weights w_a[k] over frame a's
    points name a piece of cloth; that cloth sits in frame b at  m_ab[k] = sum_n w_a[k, n] x_b[v_a(n)]
    (x_b[v]: vertex v in frame b, normalised like frame b). The loss is || kp_b[k] - m_ab[k] ||^2,
    both directions, mean over keypoints and pairs.

It is the training-time form of DAS protocol B (which scores how often a keypoint's nearest tracked vertex
changes) and needs no keypoint labels, only the mesh correspondence a simulator gives. Collapse (every
keypoint on one spot) satisfies that squared form, and the farthest-point loss resists it only partly
(``docs/results.md``: keypoint coverage fell from 0.87 to 0.49). The contrastive form
(``correspondence_temperature`` > 0) asks instead that m_ab[k] be nearer to kp_b[k] *than to the other
keypoints*: a cross-entropy over the partner's K keypoints with logits -||m_ab[k] - kp_b[j]||^2 / T, so a
pile of keypoints costs log K however still it keeps.

Both forms also let the loss fall by *choosing* cloth: the gradient through m_ab moves frame a's weights
towards cloth that lies, in frame b, where keypoint k already is, which is cloth that moves little. With
``stop_gradient`` the moved cloth m_ab is a fixed target (as the target branch of SimSiam/BYOL is): only
keypoint k of frame b is pulled towards it, so the two frames of a pair are asked to agree on which cloth
the keypoint holds, and nothing rewards holding cloth that stays still.

Neither choice keeps the keypoints on the outline, because both forms compare the keypoint with the *mean*
of its moved cloth. A keypoint whose weights spread over a wide patch has a mean that moves smoothly and
predictably, and lies inside the garment (``docs/results.md``: trained with the loss, the weights of a
keypoint spread from about 200 to 500-1,300 effective points, and the keypoints drew towards the
centre). ``spread`` > 0 adds that patch's spread, the weighted variance of the moved cloth around its mean,
``sum_n w_a[k, n] || x_b[v_a(n)] - m_ab[k] ||^2``. At ``spread`` = 1 the squared form becomes the
expected squared distance from keypoint k to a point drawn from its cloth, which a wide patch cannot meet.
Measured (``docs/results.md``, part 4): neither option keeps the coverage. Stop-gradient lowers it further;
with the spread the weights narrow back, but onto inner cloth. A stronger farthest-point loss
(``model.lambda_fps``) is what kept the T-shirt's keypoints out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def correspondence_loss(points: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor,
                        keypoints: torch.Tensor, temperature: float = 0.0,
                        stop_gradient: bool = False, spread: float = 0.0) -> torch.Tensor:
    """How far each keypoint is from where its partner frame's keypoint cloth went.

    Args:
        points: (2P, N, 3) clouds; rows 2p and 2p+1 are two frames of one sequence, each in its own
            normalisation (and augmentation: only the vertex ids tie them together).
        indices: (2P, N) int64 mesh vertex id of every point.
        weights: (2P, K, N) each keypoint's weights over its cloud's points (rows sum to 1).
        keypoints: (2P, K, 3) the keypoints (for Key-Grid, ``weights @ points``).
        temperature: 0 for the squared distance; > 0 (normalised units squared) for the contrastive form, a
            cross-entropy that the moved cloth of keypoint k is nearest to keypoint k among the partner's.
        stop_gradient: no gradient through the moved cloth (the target) or its mass: only the partner's
            keypoints learn from the loss. Its value is unchanged.
        spread: weight of each keypoint's moved-cloth variance (normalised units squared), added to the
            distance term of either form; 0 leaves it out.

    Returns a 0-d tensor. A keypoint's cloth that is missing from the partner's sample counts by the share
    that is present (a partial view may not see it at all: then that keypoint adds nothing).
    """
    rows, num_points = indices.shape
    if rows % 2:
        raise ValueError(f'correspondence_loss needs pairs of frames (an even batch), got {rows} clouds')
    partner = torch.arange(rows, device=indices.device) ^ 1  # 0<->1, 2<->3, ...
    # slot[r, v]: a position in cloud r holding vertex v, or -1 where its sample lacks v.
    slot = indices.new_full((rows, int(indices.max()) + 1), -1)
    slot.scatter_(1, indices, torch.arange(num_points, device=indices.device).expand(rows, -1))
    where = torch.gather(slot[partner], 1, indices)  # (2P, N): row r's points, located in the partner cloud
    seen = weights * (where >= 0).to(weights.dtype).unsqueeze(1)  # (2P, K, N): weights on cloth the partner has
    moved = torch.gather(points[partner], 1, where.clamp_min(0).unsqueeze(-1).expand(-1, -1, 3))  # (2P, N, 3)
    mass = seen.sum(-1)  # (2P, K): share of each keypoint's cloth the partner has
    target = torch.einsum('rkn,rnc->rkc', seen, moved) / mass.clamp_min(1e-8).unsqueeze(-1)
    if stop_gradient:
        target, mass = target.detach(), mass.detach()
    if temperature > 0:
        # (2P, K, K): moved cloth k to the partner's keypoint j (no cdist: its sqrt has no gradient at 0)
        squared = ((target.unsqueeze(2) - keypoints[partner].unsqueeze(1)) ** 2).sum(-1)
        # cross-entropy with keypoint k as the class of moved cloth k: the diagonal of the log-softmax over j
        per_keypoint = -torch.log_softmax(-squared / temperature, dim=-1).diagonal(dim1=1, dim2=2)  # (2P, K)
    else:
        per_keypoint = ((keypoints[partner] - target) ** 2).sum(-1)  # (2P, K)
    if spread > 0:  # (2P, K): the moved cloth's weighted variance around its mean
        deviation = ((moved.unsqueeze(1) - target.unsqueeze(2)) ** 2).sum(-1)  # (2P, K, N)
        per_keypoint = per_keypoint + spread * (seen * deviation).sum(-1) / mass.clamp_min(1e-8)
    return (mass * per_keypoint).mean()


def pair_frames(batches: Sequence[Sequence[int]], dataset, allowed_last: dict[int, int], max_gap: int,
                seed: int, epoch: int) -> list[list[int]]:
    """Turn batches of dataset items into batches of frame pairs for :func:`correspondence_loss`.

    Every odd position is replaced by a partner of the item before it: a frame of the same sequence at most
    ``max_gap`` frames away (never past ``allowed_last[sequence]``, the last frame training may use, so a
    held-out stretch stays held out). Batch sizes and counts do not change, so an epoch has the same steps
    (and resumes the same way); partners are drawn from ``(seed, epoch, item)``, so a resumed run draws
    the same ones. Batches must have an even size (the training config checks it).
    """
    paired = []
    for batch in batches:
        out = [int(i) for i in batch]
        for i in range(0, len(out) - 1, 2):
            sequence, frame = dataset.locate(out[i])
            rng = np.random.default_rng([seed, epoch, out[i]])
            offset = int(rng.integers(1, max_gap + 1)) * (1 if rng.random() < 0.5 else -1)
            other = min(max(frame + offset, 0), allowed_last[sequence])
            out[i + 1] = out[i] - frame + other
        paired.append(out)
    return paired


def last_frames(dataset, indices: Sequence[int]) -> dict[int, int]:
    """``{sequence: the last frame among indices}``: how far :func:`pair_frames` may reach in each sequence."""
    last: dict[int, int] = {}
    for index in indices:
        sequence, frame = dataset.locate(int(index))
        last[sequence] = max(frame, last.get(sequence, -1))
    return last
