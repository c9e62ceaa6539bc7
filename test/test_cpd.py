"""Non-rigid Coherent Point Drift: against a dense implementation of the paper's equations, on known motions,
under point permutation, and on bad input."""

from __future__ import annotations

import numpy as np
import pytest

from keygrid_ros.perception import cpd
from keygrid_ros.perception.cpd import coherent_point_drift


def dense_reference(Y, X, beta, lam, w, iterations, sigma, balance=0.0, anchors=None):
    """Myronenko & Song (2010), Fig. 4, written out with the full M x N matrix P and the unsymmetric M-step
    (d(P1) G + λσ² I) W = P X - d(P1) Y. With ``balance``, node m's kernel row is weighed by u_m, and u takes
    3 relaxed Sinkhorn steps per E-step towards equal P1: u <- u exp(balance G r / G 1), r = log(mean P1 / P1),
    then u is divided by its geometric mean and kept within [1e-3, 1e3]. With ``anchors`` (M, 3),
    G_ij = exp(-(|y_i - y_j|² + |a_i - a_j|²) / 4β²)."""
    M, N, D = len(Y), len(X), 3
    G = np.exp(-((Y[:, None] - Y[None]) ** 2).sum(-1) / (2 * beta ** 2))
    if anchors is not None:
        G = np.exp(-(((Y[:, None] - Y[None]) ** 2).sum(-1) + ((anchors[:, None] - anchors[None]) ** 2).sum(-1))
                   / (4 * beta ** 2))
    T, sigma2, u = Y.copy(), sigma ** 2, np.ones(M)
    for _ in range(iterations):
        d2 = ((X[None] - T[:, None]) ** 2).sum(-1)
        K = np.exp(-d2 / (2 * sigma2))
        c = (2 * np.pi * sigma2) ** 1.5 * w / (1 - w) * M / N
        for _ in range(3 if balance else 0):
            P1 = (u[:, None] * K / ((u[:, None] * K).sum(0, keepdims=True) + c)).sum(1)
            log_u = np.log(u) + balance * (G @ np.log(P1.mean() / P1)) / G.sum(1)
            u = np.exp(np.clip(log_u - log_u.mean(), -np.log(1e3), np.log(1e3)))
        P = u[:, None] * K / ((u[:, None] * K).sum(0, keepdims=True) + c)
        P1, Pt1, PX = P.sum(1), P.sum(0), P @ X
        W = np.linalg.solve(P1[:, None] * G + lam * sigma2 * np.eye(M), PX - P1[:, None] * Y)
        T = Y + G @ W
        sigma2 = (Pt1 @ (X ** 2).sum(1) - 2 * (PX * T).sum() + P1 @ (T ** 2).sum(1)) / (P1.sum() * D)
    return T


def sheet(count: int, seed: int) -> np.ndarray:
    """(count, 3) random points on a 0.4 x 0.3 m sheet with a bump (not symmetric)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform([0, 0], [0.4, 0.3], (count, 2))
    return np.column_stack([xy, 0.04 * np.exp(-((xy[:, 0] - 0.1) ** 2 + (xy[:, 1] - 0.2) ** 2) / 0.004)])


def test_without_cutoff_or_low_rank_it_is_the_papers_algorithm(monkeypatch):
    nodes, points = sheet(60, 0), sheet(200, 1) + [0.01, -0.005, 0.003]
    monkeypatch.setattr(cpd, 'CUTOFF_SIGMAS', 1e3)  # every pair, as the dense form
    ours = coherent_point_drift(nodes, points, 0.08, 2.0, 0.1, 20, 0.02, landmarks=len(nodes)).nodes
    np.testing.assert_allclose(ours, dense_reference(nodes, points, 0.08, 2.0, 0.1, 20, 0.02), atol=1e-7)


def test_balanced_without_cutoff_or_low_rank_it_is_the_written_out_algorithm(monkeypatch):
    # Nodes crowded on one end of the sheet, so the balance has imbalance to act on.
    nodes = sheet(60, 0) * [0.5, 1.0, 1.0] + [0.05, 0.0, 0.0]
    points = sheet(200, 1) + [0.01, -0.005, 0.003]
    monkeypatch.setattr(cpd, 'CUTOFF_SIGMAS', 1e3)
    ours = coherent_point_drift(nodes, points, 0.08, 2.0, 0.1, 20, 0.02, landmarks=len(nodes), balance=1.0).nodes
    reference = dense_reference(nodes, points, 0.08, 2.0, 0.1, 20, 0.02, balance=1.0)
    # 1e-6 m, not 1e-7: the node factors compound the Nyström factor's eigen-rounding over 20 EM steps.
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    assert np.abs(reference - dense_reference(nodes, points, 0.08, 2.0, 0.1, 20, 0.02)).max() > 0.01


def test_anchored_without_cutoff_or_low_rank_it_is_the_written_out_algorithm(monkeypatch):
    nodes, points = sheet(60, 0), sheet(200, 1) + [0.01, -0.005, 0.003]
    anchors = nodes * [1.0, 1.5, 1.0]  # the nodes' places on the cloth, here not their places now
    monkeypatch.setattr(cpd, 'CUTOFF_SIGMAS', 1e3)
    ours = coherent_point_drift(nodes, points, 0.08, 2.0, 0.1, 20, 0.02, landmarks=len(nodes), balance=1.0,
                                anchors=anchors).nodes
    reference = dense_reference(nodes, points, 0.08, 2.0, 0.1, 20, 0.02, balance=1.0, anchors=anchors)
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    assert np.abs(reference - dense_reference(nodes, points, 0.08, 2.0, 0.1, 20, 0.02, balance=1.0)).max() > 1e-3


def test_anchors_where_the_nodes_are_change_nothing():
    # Cloth neither folded nor stretched: distances on it are distances in space, the plain kernel.
    nodes, points = sheet(300, 0), sheet(1500, 1) + [0.01, -0.005, 0.003]
    np.testing.assert_allclose(coherent_point_drift(nodes, points, anchors=nodes).nodes,
                               coherent_point_drift(nodes, points).nodes, atol=1e-8)


def test_anchors_keep_a_layer_from_dragging_the_one_under_it():
    # Two 0.3 x 0.2 m layers 1 cm apart (a flap folded onto the cloth under it): the top one slides 3 cm along
    # x, the bottom one stays. Coupled by space alone the layers move together; anchored (the flap's anchors
    # are where it lay before the fold, 0.4 m away), each follows its own cloth.
    rng = np.random.default_rng(5)

    def layers(shift):
        bottom = np.column_stack([rng.uniform(0, 0.3, 1000), rng.uniform(0, 0.2, 1000), np.zeros(1000)])
        top = np.column_stack([rng.uniform(0, 0.3, 1000) + shift, rng.uniform(0, 0.2, 1000), np.full(1000, 0.01)])
        return bottom, top

    bottom, top = layers(0.0)
    nodes = np.concatenate([bottom[:150], top[:150]])
    anchors = nodes + np.concatenate([np.zeros((150, 3)), np.tile([0.4, 0, -0.01], (150, 1))])
    bottom, top = layers(0.03)
    points = np.concatenate([bottom, top])
    # Balanced (the tracker's default): the top layer's edge retreats on one side and advances on the other, and
    # the balance moves nodes across that, in whichever layer is coupled to them.
    plain = coherent_point_drift(nodes, points, balance=1.0).nodes
    anchored = coherent_point_drift(nodes, points, balance=1.0, anchors=anchors).nodes
    inner = (nodes[:150, 0] > 0.06) & (nodes[:150, 0] < 0.24)  # away from the layers' edges
    # The bottom layer's drift along the top one's slide (the median: single nodes also shuffle along the cloth).
    dragged = np.median(plain[:150][inner, 0] - nodes[:150][inner, 0])  # measured: 15 mm
    kept = abs(np.median(anchored[:150][inner, 0] - nodes[:150][inner, 0]))  # measured: under 1 mm
    assert dragged > 0.005
    assert kept < 0.3 * dragged


def sliding_strip(material: np.ndarray, lift: float) -> np.ndarray:
    """(n, 3) where the cloth at ``material`` (n, 2) (x across in [0, 0.2], s along in [0, 0.6] metres) is when
    the end s = 0.6 has been drawn straight up at y = 0.6 by ``lift``: inextensible, so the flat part slid
    towards it by ``lift``. Only the far edge's retreat shows the slide; the flat part looks the same."""
    x, s = material[:, 0], material[:, 1]
    up = s > 0.6 - lift
    return np.column_stack([x, np.where(up, 0.6, s + lift), np.where(up, s - (0.6 - lift), 0.0)])


@pytest.mark.parametrize('seed', [0, 1])
def test_balanced_nodes_follow_cloth_that_slides_into_a_lifted_flap(seed):
    rng = np.random.default_rng(seed)

    def material(count):
        return np.column_stack([rng.uniform(0, 0.2, count), rng.uniform(0, 0.6, count)])

    node_material = material(200)
    errors = {}
    for balance in (0.0, 1.0):
        nodes = sliding_strip(node_material, 0.0)
        for frame in range(1, 11):  # 1.5 cm more lift a frame, a fresh sample of the cloth each
            nodes = coherent_point_drift(nodes, sliding_strip(material(2000), 0.015 * frame), balance=balance).nodes
        errors[balance] = np.median(np.linalg.norm(nodes - sliding_strip(node_material, 0.15), axis=1))
    # Plain CPD leaves the flat part's nodes behind (about 10 cm of the 15); balanced, they go with their cloth.
    assert errors[0.0] > 0.07
    assert errors[1.0] < 0.5 * errors[0.0] and errors[1.0] < 0.06


def test_the_cutoff_and_the_low_rank_kernel_change_little():
    nodes, points = sheet(300, 0), sheet(1500, 1) + [0.01, -0.005, 0.003]
    reference = dense_reference(nodes, points, 0.08, 2.0, 0.1, 30, 0.02)
    ours = coherent_point_drift(nodes, points).nodes  # 3 sigma cutoff, 128 landmarks
    assert np.median(np.linalg.norm(ours - reference, axis=1)) < 5e-3  # against a 1.2 cm motion


def test_a_lifted_sheet_is_followed_and_permuting_the_points_changes_nothing():
    nodes = sheet(300, 0)
    points = sheet(2000, 1) + [0.0, 0.0, 0.01]
    result = coherent_point_drift(nodes, points)
    # Off the cloth, motion is seen: every node rises with it. (Along a flat sheet it is not: that is what the
    # tracker's whole-cloud rigid step before CPD is for; test_tracking covers it.)
    np.testing.assert_allclose(np.median(result.nodes[:, 2] - nodes[:, 2]), 0.01, atol=1e-3)
    assert result.sigma < 0.01
    order = np.random.default_rng(2).permutation(len(points))
    np.testing.assert_allclose(coherent_point_drift(nodes, points[order]).nodes, result.nodes, atol=1e-9)


def test_a_bent_sheet_keeps_the_nodes_on_the_cloth():
    flat = sheet(2500, 3)
    nodes = flat[np.random.default_rng(4).choice(len(flat), 300, replace=False)]
    start = nodes.copy()

    def bend(p, amount):  # the part x > 0.25 lifted along a smooth arc
        return p + np.outer(amount * np.clip(p[:, 0] - 0.25, 0, None) ** 2 / 0.15 ** 2, [0, 0, 1])

    for step in range(1, 5):  # 4 frames, 1 cm more lift at the far edge each
        nodes = coherent_point_drift(nodes, bend(flat, 0.01 * step)).nodes
    bent = bend(flat, 0.04)
    gap = np.min(np.linalg.norm(nodes[:, None] - bent[None], axis=-1), axis=1)  # (M,) to the bent cloth
    assert np.median(gap) < 3e-3
    far = start[:, 0] > 0.35
    assert np.mean(nodes[far, 2] - start[far, 2]) > 0.02  # the far part did go up


def test_a_cloud_far_from_every_node_reports_an_infinite_residual():
    result = coherent_point_drift(sheet(50, 0), sheet(100, 1) + [5.0, 0, 0])
    assert result.sigma == float('inf')


@pytest.mark.parametrize('nodes, points, kw, match', [
    (np.zeros((0, 3)), np.zeros((5, 3)), {}, 'nodes'),
    (np.zeros((4, 2)), np.zeros((5, 3)), {}, 'nodes'),
    (np.zeros((4, 3)), np.zeros((0, 3)), {}, 'points'),
    (np.zeros((4, 3)), np.zeros((5, 3)), {'outlier_weight': 1.0}, 'outlier_weight'),
    (np.zeros((4, 3)), np.zeros((5, 3)), {'balance': -0.5}, 'balance'),
    (np.zeros((4, 3)), np.zeros((5, 3)), {'anchors': np.zeros((3, 3))}, 'anchors'),
])
def test_bad_input_is_refused(nodes, points, kw, match):
    with pytest.raises(ValueError, match=match):
        coherent_point_drift(nodes, points, **kw)
