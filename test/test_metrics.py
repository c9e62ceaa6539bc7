"""DAS (protocols A and B) and mIoU against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from keygrid_ros.train import metrics


def deforming_grid(frames: int = 6, size: int = 12, amplitude: float = 0.05) -> np.ndarray:
    """A flat size x size sheet (1 m wide) that bends a little more every frame -> vertices (T, V, 3)."""
    u, v = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing='ij')
    sheet = np.stack([u.ravel(), v.ravel(), np.zeros(u.size)], -1)
    out = []
    for t in range(frames):
        frame = sheet.copy()
        frame[:, 2] = amplitude * t / max(frames - 1, 1) * np.sin(np.pi * frame[:, 0])
        out.append(frame + [0.0, 0.0, 0.1 * t])  # and it falls: translation must not matter
    return np.asarray(out, dtype=np.float32)


def naive_skeleton_merger(kp: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Skeleton Merger's loops, written out: all ordered pairs of frames, self-pairs included."""
    T = len(kp)
    fwd_ids = [[int(np.argmin(((gt[n] - p) ** 2).sum(-1))) for p in kp[n]] for n in range(T)]
    fwd = np.mean([np.mean(np.equal(fwd_ids[n], fwd_ids[m])) for n in range(T) for m in range(T)])
    bwd_ids = [[int(np.argmin(((kp[n] - g) ** 2).sum(-1))) for g in gt[n]] for n in range(T)]
    bwd = np.mean([np.mean([bwd_ids[n][s] == bwd_ids[m][s] for n in range(T) for m in range(T)])
                   for s in range(gt.shape[1])])
    return 100 * fwd, 100 * bwd


def test_fps_vertex_indices_spread_and_deterministic():
    line = np.stack([np.arange(11.0), np.zeros(11), np.zeros(11)], -1)
    # Start: farthest from the centroid (x=5); 0 and 10 tie, the lower index wins. Then 10, then the middle.
    assert metrics.fps_vertex_indices(line, 3).tolist() == [0, 10, 5]
    assert metrics.fps_vertex_indices(line, 3, start=4).tolist() == [4, 10, 0]
    # Asking for more than there are repeats the start.
    assert metrics.fps_vertex_indices(line[:2], 4).tolist() == [0, 1, 0, 0]


def test_perfectly_consistent_keypoints_score_100():
    verts = deforming_grid()
    gt, idx = metrics.correspondence_ground_truth(verts, 8)
    assert len(set(idx.tolist())) == 8
    assert metrics.das_correspondence(gt, verts) == pytest.approx(100.0)
    assert metrics.das_reference_frame(gt) == pytest.approx(100.0)
    parts = metrics.das_skeleton_merger(gt, gt)
    assert parts.forward == pytest.approx(100.0) and parts.backward == pytest.approx(100.0)


def test_random_permutation_per_frame_scores_chance(rng):
    T, K = 400, 8
    verts = deforming_grid(frames=T, size=10)
    gt, _ = metrics.correspondence_ground_truth(verts, K)
    shuffled = np.stack([frame[rng.permutation(K)] for frame in gt])
    # Self-pairs always agree, so chance is 1/K + (1 - 1/K)/T, not 1/K.
    chance = 100 * (1 / K + (1 - 1 / K) / T)
    parts = metrics.das_skeleton_merger(shuffled, gt)
    assert parts.forward == pytest.approx(chance, abs=1.5)
    assert parts.backward == pytest.approx(chance, abs=1.5)
    # Protocol A: the keypoint sitting where reference keypoint i sat has a uniformly random index.
    assert metrics.das_reference_frame(shuffled) == pytest.approx(100 / K, abs=2.0)


def test_single_swapped_pair_moves_the_score_by_the_right_amount():
    T, K = 4, 4
    verts = deforming_grid(frames=T)
    gt, _ = metrics.correspondence_ground_truth(verts, K)

    swapped = gt.copy()
    swapped[2, [0, 1]] = swapped[2, [1, 0]]  # frame 2 swaps keypoints 0 and 1
    # Protocol B: keypoints 0 and 1 agree on (T-1)^2 + 1 of T^2 ordered pairs, the others on all of them;
    # the backward score is the same by symmetry. (2 + 2 * 10/16) / 4 = 0.8125.
    expected = 100 * ((K - 2) + 2 * ((T - 1) ** 2 + 1) / T**2) / K
    assert expected == pytest.approx(81.25)
    parts = metrics.das_skeleton_merger(swapped, gt)
    assert parts.forward == pytest.approx(expected) and parts.backward == pytest.approx(expected)
    assert parts.das == pytest.approx(expected)
    assert (parts.forward, parts.backward) == pytest.approx(naive_skeleton_merger(swapped, gt))
    # Protocol A: 2 misses out of (T-1) K = 12 comparisons.
    assert metrics.das_reference_frame(swapped) == pytest.approx(100 * (1 - 2 / 12))

    # Swapping in the reference frame itself costs protocol A two misses in every other frame: 1 - 2/K.
    swapped_ref = gt.copy()
    swapped_ref[0, [0, 1]] = swapped_ref[0, [1, 0]]
    assert metrics.das_reference_frame(swapped_ref) == pytest.approx(50.0)
    # Protocol B treats every frame alike.
    assert metrics.das_skeleton_merger(swapped_ref, gt).das == pytest.approx(expected)


def test_collapsed_keypoints_score_full_das_b_and_are_caught_by_coverage():
    """DAS (B)'s blind spot: K keypoints piled on ground-truth vertex 0 in every frame agree with themselves
    perfectly (forward), and every ground-truth point keeps the same nearest keypoint (backward, ties to the
    lowest index). Coverage sees 1 of M ids per frame; the ground truth itself covers all M."""
    T, K = 5, 4
    verts = deforming_grid(frames=T)
    gt, _ = metrics.correspondence_ground_truth(verts, K)
    collapsed = np.repeat(gt[:, :1], K, axis=1)  # (T, K, 3)
    assert metrics.das_skeleton_merger(collapsed, gt).das == pytest.approx(100.0)
    assert metrics.coverage(metrics.nearest_index(collapsed, gt), K) == pytest.approx(1 / K)
    assert metrics.coverage(metrics.nearest_index(gt, gt), K) == pytest.approx(1.0)
    # Hand case: frame 0 reaches ids {0, 1}, frame 1 reaches {2}: (2 + 1) / 2 / 4.
    assert metrics.coverage(np.array([[0, 1, 1], [2, 2, 2]]), 4) == pytest.approx(3 / 8)


def test_label_runs_hand_case():
    labels = np.array([[1, 0], [1, 0], [3, 0], [3, 2], [1, 2]])
    assert metrics.label_runs(labels) == [[(1, 0, 1), (3, 2, 3), (1, 4, 4)], [(0, 0, 2), (2, 3, 4)]]
    assert metrics.label_runs(np.array([[7]])) == [[(7, 0, 0)]]
    with pytest.raises(ValueError, match='shape'):
        metrics.label_runs(np.zeros(3, dtype=int))


def test_closed_form_matches_skeleton_merger_loops(rng):
    T, K, M = 7, 5, 6
    kp = rng.normal(size=(T, K, 3))
    gt = rng.normal(size=(T, M, 3))
    parts = metrics.das_skeleton_merger(kp, gt)
    assert (parts.forward, parts.backward) == pytest.approx(naive_skeleton_merger(kp, gt))


def test_protocol_b_is_invariant_to_a_similarity_per_frame(rng):
    verts = deforming_grid(frames=5)
    gt, _ = metrics.correspondence_ground_truth(verts, 6)
    kp = gt + rng.normal(scale=0.05, size=gt.shape)
    before = metrics.das_skeleton_merger(kp, gt).das
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    scale, shift = 2.5, np.array([1.0, -3.0, 0.5])
    after = metrics.das_skeleton_merger(kp @ q.T * scale + shift, gt @ q.T * scale + shift).das
    assert after == pytest.approx(before)


def test_reference_frame_needs_two_frames_and_checks_shapes():
    with pytest.raises(ValueError):
        metrics.das_reference_frame(np.zeros((1, 4, 3)))
    with pytest.raises(ValueError):
        metrics.das_reference_frame(np.zeros((3, 4)))


def test_miou_hand_case():
    gt = np.array([[[0, 0, 0], [1, 0, 0]], [[0, 0, 0], [1, 0, 0]]], dtype=float)  # 2 frames x 2 points
    kp = np.array([[[0.05, 0, 0], [5, 5, 5], [0.95, 0, 0]],  # frame 0: both found, one stray prediction
                   [[0.0, 0.1, 0], [0.5, 0, 0], [0.0, 0, 0.2]]], dtype=float)  # frame 1: 1 found (0.1 counts)
    counts = metrics.iou_counts(kp, gt, threshold=0.1)
    assert (counts.npos, counts.false_negatives, counts.false_positives) == (4, 1, 3)
    assert counts.miou == pytest.approx(100 * (4 - 1) / (4 + 3))
    # Counts add up over sequences; missing annotations (NaN rows) are skipped.
    gt_missing = gt.copy()
    gt_missing[1, 1] = np.nan
    total = metrics.iou_counts(kp, gt_missing) + metrics.iou_counts(kp, gt)
    assert total.npos == 7
    assert metrics.IoUCounts().miou != metrics.IoUCounts().miou  # NaN without ground truth


def test_miou_snaps_to_the_cloud():
    gt = np.zeros((1, 1, 3))
    cloud = np.array([[[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]]])
    kp = np.array([[[0.4, 0.0, 0.0]]])  # 0.4 away from the ground truth, but its nearest cloud point is on it
    assert metrics.iou_counts(kp, gt).miou == pytest.approx(0.0)
    assert metrics.iou_counts(kp, gt, cloud=cloud).miou == pytest.approx(100.0)


def test_side_consistency_tells_a_steady_keypoint_from_one_that_swaps_sides():
    from keygrid_ros.train.metrics import lateral_coordinates, side_consistency, side_scores

    rng = np.random.default_rng(0)
    # A symmetric garment in a rotated pose: vertex i + 50 is the mirror image of vertex i across x = 0.
    half = rng.uniform([0.02, -0.3, 0.0], [0.3, 0.3, 0.01], size=(50, 3))
    body = np.concatenate([half, half * [-1, 1, 1]])
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    rest = body @ turn.T + [1.0, 2.0, 0.5]
    landmarks = np.array([[0.25, 0.2, 0.0], [-0.25, 0.2, 0.0], [0.0, 0.3, 0.0]]) @ turn.T + [1.0, 2.0, 0.5]
    names = ['sleeve_r', 'sleeve_l', 'neck']
    lateral = lateral_coordinates(rest, landmarks, names)
    np.testing.assert_allclose(lateral[:50], half[:, 0], atol=1e-12)  # signed distance, right side positive
    np.testing.assert_allclose(lateral[50:], -half[:, 0], atol=1e-12)
    assert lateral_coordinates(rest, landmarks[2:], ['neck']) is None
    outer = int(np.argmax(half[:, 0]))
    T = 20
    steady = np.full((T, 1), outer)  # always the same right-hand vertex
    swapping = np.where(np.arange(T)[:, None] % 2 == 0, outer, outer + 50)  # right, left, right, ...
    assert side_scores(steady, rest, landmarks, names) == {'lateral_fraction': 1.0, 'side_consistency': 1.0}
    assert side_scores(swapping, rest, landmarks, names)['side_consistency'] == 0.5
    # On the centre line: never lateral, so no side to be consistent about.
    central = side_consistency(np.zeros((T, 3)))
    assert central['lateral_fraction'] == 0.0 and np.isnan(central['side_consistency'])
    # A keypoint that is lateral in fewer than a quarter of the frames does not count.
    mostly_central = np.zeros((T, 1))
    mostly_central[:3] = 0.4
    assert np.isnan(side_consistency(mostly_central)['side_consistency'])
