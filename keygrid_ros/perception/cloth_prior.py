"""What the tracker knows about cloth it cannot see: hidden cloth claims no points, and cloth does not stretch.

Why: one camera sees the top of a fold, not the cloth under it, and sees a flap carried over as a curtain mostly
edge on. Coherent Point Drift lets every node explain the cloud, so a hidden node is drawn onto the nearest cloth
the camera does see (the flap above it) and leaves with it; and a node of the curtain that sees nothing is moved
only by the smooth field, which lets the curtain's nodes bunch up or spread anywhere. CDCPD (Chi & Berenson,
ICRA 2019) adds two priors for exactly this, and so does the tracker (``tracking.visibility_margin``,
``tracking.max_stretch``):

- **visibility**: a node that the cloud shows something in front of, along the camera's line of sight, is hidden,
  and its weight in the mixture falls to 0 (:func:`node_visibility`);
- **inextensibility**: after each frame's registration, no edge of the node graph (each node to its nearest
  neighbours where the nodes were placed on the cloth) may be longer than ``1 + max_stretch`` times its length
  there; longer edges are shortened, moving the node that sees less of the cloud more (:func:`limit_stretch`).
  Cloth folds and crumples, so edges may get shorter.

The hope was that together they carry a curtain: the inextensible graph pulls a node lagging behind a fast flap,
where it sees nothing, after its seen neighbours. Measured on one-camera fold bags (docs/results.md, "Cloth nobody
sees"), neither alone nor both together moved fold DAS beyond noise, so both are off by default.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.spatial import cKDTree

#: A point hides a node when their images lie closer than this many median image spacings of the cloud.
IMAGE_RADIUS_SPACINGS = 1.5
#: Neighbours of each node in the cloth graph (edges both ways are kept once).
GRAPH_NEIGHBOURS = 8
#: Projection sweeps per frame, and the over-relaxation of a node's mean correction where it has several over-long
#: edges (Jacobi steps averaged per node converge slowly; 1.5 stays stable).
STRETCH_SWEEPS = 20
STRETCH_RELAXATION = 1.5


class ClothGraph(NamedTuple):
    """Edges ``first`` -> ``second`` (E,) int64 between nodes, with their ``rest`` lengths (E,) on the cloth."""

    first: np.ndarray
    second: np.ndarray
    rest: np.ndarray


def cloth_graph(anchors: np.ndarray, neighbours: int = GRAPH_NEIGHBOURS) -> ClothGraph:
    """Each node of ``anchors`` (M, 3) (where the nodes were placed, on the cloth) joined to its ``neighbours``
    nearest; an edge's rest length is its length there."""
    anchors = np.asarray(anchors, np.float64)
    if anchors.ndim != 2 or anchors.shape[1] != 3:
        raise ValueError(f'anchors must be (M, 3), got shape {anchors.shape}')
    k = min(neighbours, len(anchors) - 1)
    if k < 1:
        empty = np.zeros(0, np.int64)
        return ClothGraph(empty, empty, np.zeros(0))
    index = cKDTree(anchors).query(anchors, k=k + 1)[1][:, 1:]  # (M, k), self left out
    pairs = np.sort(np.column_stack([np.repeat(np.arange(len(anchors)), k), index.ravel()]), axis=1)
    pairs = np.unique(pairs, axis=0)
    first, second = pairs[:, 0], pairs[:, 1]
    return ClothGraph(first, second, np.linalg.norm(anchors[first] - anchors[second], axis=1))


def limit_stretch(nodes: np.ndarray, graph: ClothGraph, max_stretch: float, mobility: np.ndarray | None = None,
                  sweeps: int = STRETCH_SWEEPS) -> np.ndarray:
    """(M, 3) ``nodes`` moved so that no edge of ``graph`` is longer than ``(1 + max_stretch)`` times its rest length.

    Position-based projection: each sweep shortens every over-long edge to its limit, splitting the move between
    its two nodes in proportion to their ``mobility`` (M,) > 0 (default equal: a node the camera sees well should
    move less than one that sees nothing), and moves each node by the mean of its edges' corrections. Shorter
    edges are left alone. Stops early when no edge is over its limit.
    """
    moved = np.array(nodes, np.float64)
    if max_stretch < 0:
        raise ValueError(f'max_stretch must be >= 0, got {max_stretch}')
    mobility = np.ones(len(moved)) if mobility is None else np.asarray(mobility, np.float64)
    limit = (1.0 + max_stretch) * graph.rest
    for _ in range(sweeps):
        offset = moved[graph.second] - moved[graph.first]  # (E, 3)
        length = np.linalg.norm(offset, axis=1)
        over = length > limit * (1 + 1e-9)
        if not over.any():
            break
        first, second = graph.first[over], graph.second[over]
        excess = ((length[over] - limit[over]) / length[over])[:, None] * offset[over]  # (E', 3) to take out
        share = mobility[first] / (mobility[first] + mobility[second])  # (E',) the first node's part
        correction = np.zeros_like(moved)
        count = np.zeros(len(moved))
        np.add.at(correction, first, share[:, None] * excess)
        np.add.at(correction, second, -(1 - share)[:, None] * excess)
        np.add.at(count, first, 1)
        np.add.at(count, second, 1)
        # Over-relax only averages of several corrections: a node with one over-long edge takes it exactly.
        moved += (np.minimum(STRETCH_RELAXATION, count) / np.maximum(count, 1))[:, None] * correction
    return moved


def node_visibility(nodes: np.ndarray, points: np.ndarray, viewpoint: np.ndarray, margin: float) -> np.ndarray:
    """(M,) in [0, 1]: how visible each node (M, 3) is from ``viewpoint`` (3,) given the seen ``points`` (N, 3).

    A node is hidden when the cloud holds points in front of it on its line of sight: projected through the
    viewpoint, a point whose image lies within ``IMAGE_RADIUS_SPACINGS`` median image spacings of the node's is
    nearer the camera than the node by more than ``margin`` (metres). Visibility is 1 up to the margin and falls
    linearly to 0 at twice it (depth noise and the cloth's thickness stay seen; a layer under a flap does not).
    Nothing seen on the line of sight (outside the view, cropped away) is no evidence: such a node is seen.
    """
    nodes = np.asarray(nodes, np.float64)
    points = np.asarray(points, np.float64)
    viewpoint = np.asarray(viewpoint, np.float64).reshape(3)
    if nodes.ndim != 2 or nodes.shape[1] != 3 or points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f'nodes and points must be (M, 3) and (N, 3), got {nodes.shape} and {points.shape}')
    if not margin > 0:
        raise ValueError(f'margin must be > 0 m, got {margin}')
    seen = np.ones(len(nodes))
    if len(points) < 2 or len(nodes) == 0:
        return seen
    rays = points - viewpoint  # (N, 3)
    axis = rays.mean(0)
    axis /= max(np.linalg.norm(axis), 1e-12)
    across = np.linalg.svd(np.eye(3) - np.outer(axis, axis))[0][:, :2]  # (3, 2): the image plane's axes

    def image(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, 2) pinhole coordinates of ``offsets`` (n, 3) from the viewpoint, and (n,) which lie in front."""
        depth = offsets @ axis
        front = depth > 1e-6
        return (offsets @ across) / np.where(front, depth, 1.0)[:, None], front

    point_image, point_front = image(rays)
    point_image, point_range = point_image[point_front], np.linalg.norm(rays[point_front], axis=1)
    if len(point_image) < 2:
        return seen
    tree = cKDTree(point_image)
    spacing = max(float(np.median(tree.query(point_image, k=2)[0][:, 1])), 1e-9)
    node_rays = nodes - viewpoint
    node_image, node_front = image(node_rays)
    node_range = np.linalg.norm(node_rays, axis=1)
    # The nearest seen range on each node's line of sight (inf where nothing was seen there).
    near = tree.query_ball_point(node_image, IMAGE_RADIUS_SPACINGS * spacing, return_sorted=False)
    counts = np.fromiter((len(n) for n in near), np.int64, len(nodes)) * node_front
    nearest = np.full(len(nodes), np.inf)
    if counts.sum():
        ranges = np.concatenate([point_range[np.asarray(n, np.int64)] for n, c in zip(near, counts) if c])
        starts = np.concatenate([[0], np.cumsum(counts[counts > 0])[:-1]])
        nearest[counts > 0] = np.minimum.reduceat(ranges, starts)
    excess = node_range - nearest - margin  # > 0: something seen in front of the node by more than the margin
    return np.clip(1.0 - np.maximum(excess, 0.0) / margin, 0.0, 1.0)
