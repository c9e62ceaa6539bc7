"""The tracker's priors on cloth it cannot see: the node graph, the stretch limit, line-of-sight visibility, and
Coherent Point Drift weighted by it (keygrid_ros/perception/cloth_prior.py)."""

from __future__ import annotations

import numpy as np
import pytest

from keygrid_ros.perception.cloth_prior import cloth_graph, limit_stretch, node_visibility
from keygrid_ros.perception.cpd import coherent_point_drift
from keygrid_ros.perception.tracking import KeypointTracker, TrackerConfig


def sheet(count: int, seed: int = 0) -> np.ndarray:
    """(count, 3) random points on a flat 0.6 x 0.4 m sheet at z = 0."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(0, 0.6, count), rng.uniform(0, 0.4, count), np.zeros(count)])


def test_graph_joins_each_node_to_its_nearest_neighbours_once_with_their_distance():
    anchors = sheet(200)
    graph = cloth_graph(anchors, neighbours=6)
    edges = set(zip(graph.first.tolist(), graph.second.tolist()))
    assert len(edges) == len(graph.first)  # each edge once
    assert np.all(graph.first < graph.second)
    distance = np.linalg.norm(anchors[:, None] - anchors[None], axis=-1)  # brute force
    np.fill_diagonal(distance, np.inf)
    for node in range(len(anchors)):
        for other in np.argsort(distance[node])[:6]:
            assert (min(node, other), max(node, other)) in edges
    np.testing.assert_allclose(graph.rest, distance[graph.first, graph.second])


def test_stretched_edges_are_brought_back_to_their_limit_and_short_ones_are_left_alone():
    anchors = sheet(300)
    graph = cloth_graph(anchors)
    # A corner pulled 5 cm up, as a lagging registration leaves a node or a few: edges there up to 2x and more.
    corner = np.linalg.norm(anchors[:, :2], axis=1) < 0.08
    stretched = anchors + np.where(corner, 0.05, 0.0)[:, None] * [0, 0, 1]
    before = np.linalg.norm(stretched[graph.second] - stretched[graph.first], axis=1) / graph.rest
    assert before.max() > 2.0
    moved = limit_stretch(stretched, graph, 0.1, sweeps=200)
    ratio = np.linalg.norm(moved[graph.second] - moved[graph.first], axis=1) / graph.rest
    assert ratio.max() < 1.1 * 1.01
    # A crumpled sheet (every edge shorter than its rest length) is not touched.
    crumpled = anchors * [0.5, 0.7, 1.0]
    np.testing.assert_array_equal(limit_stretch(crumpled, graph, 0.1), crumpled)


def test_a_node_that_sees_the_cloud_stays_and_one_that_does_not_follows():
    anchors = np.array([[0.0, 0, 0], [0.1, 0, 0]])
    graph = cloth_graph(anchors)
    pulled = np.array([[0.0, 0, 0], [0.3, 0, 0]])  # the edge at 3x its rest length
    mobility = np.array([1e-6, 1.0])  # node 0 holds many points, node 1 none
    moved = limit_stretch(pulled, graph, 0.0, mobility, sweeps=200)
    np.testing.assert_allclose(moved[0], [0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(moved[1], [0.1, 0, 0], atol=1e-3)
    # Equal mobility: both give way, the edge's midpoint stays.
    moved = limit_stretch(pulled, graph, 0.0, sweeps=200)
    np.testing.assert_allclose(moved.mean(0), pulled.mean(0), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(moved[1] - moved[0]), 0.1, atol=1e-3)


def test_stretch_limit_moves_with_the_nodes_rigid_motion():
    anchors = sheet(150, seed=3)
    graph = cloth_graph(anchors)
    stretched = anchors * [1.3, 1.0, 1.0]
    angle = 0.7
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    shift = np.array([0.2, -1.0, 0.5])
    direct = limit_stretch(stretched, graph, 0.05) @ rotation.T + shift
    moved_first = limit_stretch(stretched @ rotation.T + shift, graph, 0.05)
    np.testing.assert_allclose(moved_first, direct, atol=1e-9)


def grid(x_end: float, z: float, step: float = 0.01) -> np.ndarray:
    """(n, 3) a regular grid of points on [0, x_end) x [0, 0.4) at height z (a depth camera samples evenly)."""
    xs, ys = np.meshgrid(np.arange(0, x_end, step), np.arange(0, 0.4, step))
    return np.column_stack([xs.ravel(), ys.ravel(), np.full(xs.size, z)])


def folded_view():
    """A 0.6 x 0.4 m sheet at z = 0 with a flap 5 cm above its half x < 0.3, seen from 1 m above the middle: the
    cloud the camera returns (the flap, and the sheet where the flap does not cover it) and the sheet itself."""
    lower = grid(0.6, 0.0)
    seen = np.concatenate([grid(0.3, 0.05), lower[lower[:, 0] > 0.305]])
    return seen, lower, np.array([0.3, 0.2, 1.0])


def test_cloth_under_a_flap_is_hidden_and_the_rest_is_seen():
    seen, lower, viewpoint = folded_view()
    nodes = np.array([[0.15, 0.2, 0.0],   # under the flap, in its middle
                      [0.05, 0.05, 0.0],  # under the flap, near a corner
                      [0.45, 0.2, 0.0],   # the uncovered sheet
                      [0.15, 0.2, 0.05],  # on the flap
                      [2.0, 2.0, 0.0]])   # where the camera saw nothing at all
    visibility = node_visibility(nodes, seen, viewpoint, margin=0.02)
    np.testing.assert_allclose(visibility, [0, 0, 1, 1, 1])
    # Just behind the seen surface, within the margin (the cloth's thickness, depth noise): still seen.
    assert node_visibility(np.array([[0.15, 0.2, 0.04]]), seen, viewpoint, margin=0.02)[0] == 1.0
    with pytest.raises(ValueError, match='margin'):
        node_visibility(nodes, seen, viewpoint, margin=0.0)


def test_hidden_nodes_claim_no_points_and_stay_where_they_were():
    seen, lower, viewpoint = folded_view()
    nodes = lower[::7]  # on the sheet, half of them under the flap
    visibility = node_visibility(nodes, seen, viewpoint, margin=0.02)
    hidden = visibility == 0
    clear = np.abs(nodes[:, 0] - 0.3) > 0.015  # away from the fold's edge, where both answers are fair
    np.testing.assert_array_equal(hidden[clear], nodes[clear, 0] < 0.3)
    plain = coherent_point_drift(nodes, seen, sigma=0.02, balance=1.0)
    weighted = coherent_point_drift(nodes, seen, sigma=0.02, balance=1.0, visibility=visibility)
    assert weighted.matched[hidden].max() < 1e-9 < plain.matched[hidden].sum()
    # Without the prior the hidden nodes rise onto the flap above them; with it they stay on the sheet (the
    # field fitted to the seen nodes alone once threw them up to 1.8 m: hidden nodes now hold their place).
    assert np.median(plain.nodes[hidden, 2]) > 0.04
    assert np.abs(weighted.nodes[hidden] - nodes[hidden]).max() < 0.005
    assert np.abs(weighted.nodes[~hidden] - nodes[~hidden]).max() < 0.02
    with pytest.raises(ValueError, match='visibility'):
        coherent_point_drift(nodes, seen, visibility=np.ones(3))


def test_tracker_hands_visibility_to_the_registration_only_with_a_camera_and_a_margin(monkeypatch):
    from keygrid_ros.perception import tracking

    seen, lower, viewpoint = folded_view()
    detections = lower[[0, 39, 1000, 1199]]
    given = {}
    real = tracking.coherent_point_drift

    def recording(*args, visibility=None, **kwargs):
        given['visibility'] = visibility
        return real(*args, visibility=visibility, **kwargs)

    monkeypatch.setattr(tracking, 'coherent_point_drift', recording)
    for margin, view, expect_hidden in ((0.0, viewpoint, None), (0.02, None, None), (0.02, viewpoint, True)):
        tracker = KeypointTracker(TrackerConfig(start_frames=1, visibility_margin=margin, max_stretch=0.1))
        tracker(lower, detections, view)
        tracker(lower, detections, view)
        if expect_hidden is None:
            assert given['visibility'] is None
        else:
            # The flat sheet, seen from above: every node is seen.
            np.testing.assert_array_equal(given['visibility'], 1.0)
    with pytest.raises(ValueError, match='max_stretch'):
        TrackerConfig(max_stretch=-1)
    with pytest.raises(ValueError, match='visibility_margin'):
        TrackerConfig(visibility_margin=-0.1)


def test_tracker_with_a_stretch_limit_ends_with_fewer_overlong_edges():
    lower = grid(0.6, 0.0)
    detections = lower[[0, 39, 1000, 1199]]
    over = {}
    for limit in (0.0, 0.05):
        rng = np.random.default_rng(4)
        tracker = KeypointTracker(TrackerConfig(start_frames=1, max_stretch=limit))
        tracker(lower, detections)
        for step in range(6):  # a corner lifted, faster than the smooth field follows
            moved = lower.copy()
            corner = np.linalg.norm(lower[:, :2], axis=1) < 0.12
            moved[corner, 2] += 0.03 * step
            tracker(moved + rng.normal(0, 0.001, moved.shape), detections)
        graph = cloth_graph(tracker._anchors)
        ratio = np.linalg.norm(tracker.nodes[graph.second] - tracker.nodes[graph.first], axis=1) / graph.rest
        over[limit] = (ratio > 1.05 * 1.02).mean()
    assert over[0.0] > 0.01
    assert over[0.05] < over[0.0] / 2
