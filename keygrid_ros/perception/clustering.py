"""Garment isolation: Euclidean clustering on a sparse cell grid.

Points are binned into cubic cells of edge ``tolerance``; two occupied cells are connected when they
touch (26-neighbourhood) and the connected components of that cell graph are the clusters. Points
closer than ``tolerance`` always land in the same or touching cells, so they always join (the
guarantee of PCL's EuclideanClusterExtraction); points up to ``2 * sqrt(3) * tolerance`` apart may
also join. In exchange it costs one sort and 13 binary searches instead of a radius search per
point, which is what keeps the node's front end inside its 25 ms budget.

Cells holding fewer than ``min_cell_points`` points are noise (label -1) and connect nothing: after
table removal, sensor noise leaves isolated speckles all over the table, which would otherwise chain
into one table-sized cluster. The price is the garment's outermost rim where a cell catches only a
sliver of it; letting such cells join the cluster they touch (DBSCAN's border points) was tried and
rejected, because it also adopts flying pixels at the garment edge, and farthest point sampling
picks exactly those first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

# Half of the 26 neighbour offsets: each undirected cell adjacency is found exactly once.
_HALF_NEIGHBOURS = np.array([(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)
                             if (dx, dy, dz) > (0, 0, 0)], dtype=np.int64)


@dataclass(frozen=True)
class Clusters:
    """Cluster labels per point (-1 = noise) and the size of every cluster."""

    labels: np.ndarray  # (N,) int64
    sizes: np.ndarray  # (C,) int64, points per cluster, indexed by label

    def members(self, label: int) -> np.ndarray:
        """Indices of the points in cluster ``label``."""
        return np.flatnonzero(self.labels == label)


def euclidean_clusters(points: np.ndarray, tolerance: float, min_cell_points: int = 1) -> Clusters:
    """Cluster ``points`` (N, 3) by proximity (see the module docstring for the exact rule)."""
    count = points.shape[0]
    if count == 0:
        return Clusters(labels=np.zeros(0, np.int64), sizes=np.zeros(0, np.int64))
    cells = np.floor((points - points.min(axis=0)) / tolerance).astype(np.int64) + 1  # +1: room for -1 offsets
    extent = cells.max(axis=0) + 2

    def encode(c: np.ndarray) -> np.ndarray:
        return (c[..., 0] * extent[1] + c[..., 1]) * extent[2] + c[..., 2]

    keys, first, inverse, counts = np.unique(encode(cells), return_index=True, return_inverse=True,
                                             return_counts=True)
    dense = counts >= min_cell_points
    cell_coords = cells[first]

    def neighbour(offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For every cell: (whether the cell at ``offset`` is occupied, its index when it is)."""
        neighbour_keys = encode(cell_coords + offset)
        slot = np.minimum(np.searchsorted(keys, neighbour_keys), keys.shape[0] - 1)
        return keys[slot] == neighbour_keys, slot

    rows, cols = [], []
    for offset in _HALF_NEIGHBOURS:
        found, slot = neighbour(offset)
        found &= dense & dense[slot]
        rows.append(np.flatnonzero(found))
        cols.append(slot[found])
    rows_all, cols_all = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(rows_all.shape[0], np.int8), (rows_all, cols_all)),
                       shape=(keys.shape[0], keys.shape[0]))
    _, component = connected_components(graph, directed=False)
    # Renumber the components that contain dense cells 0..C-1; sparse cells become noise (-1).
    cell_label = np.full(keys.shape[0], -1, np.int64)
    dense_components, relabel = np.unique(component[dense], return_inverse=True)
    cell_label[dense] = relabel
    labels = cell_label[inverse.reshape(-1)]
    sizes = np.bincount(labels[labels >= 0], minlength=dense_components.shape[0]).astype(np.int64)
    return Clusters(labels=labels, sizes=sizes)


# A piece smaller than this many points is sensor speckle, not cloth the camera sees apart from the rest.
ATTACH_MIN_POINTS = 30


def attach_pieces(points: np.ndarray, clusters: Clusters, chosen: np.ndarray, distance: float,
                  eligible: np.ndarray | None = None) -> np.ndarray:
    """(N,) bool: ``chosen`` (N,) bool grown by every cluster that comes within ``distance`` of it.

    One camera can see a garment in pieces: the bend of a flap lifted by a gripper faces away from it or is
    seen edge-on, too sparsely to connect (``min_cell_points``), and the flap becomes a cluster of its own.
    Keeping only the garment's largest piece would drop the flap exactly while it moves, and a tracker loses
    the cloth on it. A cluster of at least :data:`ATTACH_MIN_POINTS` points whose nearest point lies within
    ``distance`` of the garment joins it; joined pieces can bring further ones within reach. Noise (label -1)
    never joins, so the fine ``tolerance`` still keeps table speckle out. ``eligible`` (C,) bool, when given,
    says which clusters may join at all (the caller's test that a piece is lifted cloth).
    """
    chosen = chosen.copy()
    allowed = clusters.sizes >= ATTACH_MIN_POINTS
    if eligible is not None:
        allowed &= eligible
    pieces = [label for label in np.flatnonzero(allowed) if not chosen[clusters.labels == label].any()]
    grown = True
    while grown and pieces and chosen.any():
        grown = False
        tree = cKDTree(points[chosen])
        for label in list(pieces):
            members = clusters.labels == label
            gaps, _ = tree.query(points[members], distance_upper_bound=distance)
            if np.isfinite(gaps).any():  # inf where nothing is within ``distance``
                chosen |= members
                pieces.remove(label)
                grown = True
    return chosen
