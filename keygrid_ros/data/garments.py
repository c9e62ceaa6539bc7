"""Parametric garment patterns turned into clean triangle meshes with named landmark vertices.

Each garment starts as a closed 2-D outline in metres (x across, y along the garment, the pattern
centred on the origin), built from a *right half* and its mirror image so left/right landmarks are
symmetric. Every outline edge is either ``open`` (a neck, cuff, hem, waist or leg opening) or
``sewn`` (a side, shoulder or inner-leg seam). The outline is resampled at the target edge length
and triangulated with Shewchuk's Triangle (quality mesh, no Steiner points on the boundary, so the
outline vertices, and with them every landmark, are mesh vertices).

A two-layer garment is the front panel plus a back panel that shares the vertices of the sewn edges:
a flat, closed-at-the-seams sleeve of cloth like a real T-shirt lying on a table, with the openings
left open. Its layers start ``gap`` apart (the seams half way) so the simulator's self-contact sees
two separate sheets from the first step.

Sizes and proportions are drawn from ranges under a seed; ``seed=None`` gives the nominal garment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math

import numpy as np
from shapely.geometry import Polygon
import triangle

OPEN, SEWN = 0, 1

#: garment name -> whether a sewn two-layer variant exists (towels and scarves are single sheets).
GARMENTS: dict[str, bool] = {
    'tshirt': True, 'longsleeve': True, 'dress': True, 'pants': True, 'shorts': True, 'skirt': True,
    'towel': False, 'scarf': False,
}


@dataclass
class Garment:
    """A garment mesh in its rest (pattern) shape.

    Attributes:
        name: garment type, one of :data:`GARMENTS`.
        vertices: (V, 3) float64 rest positions in metres; the pattern lies in the z = 0 plane
            (two-layer garments: front at ``+gap/2``, back at ``-gap/2``, seams at 0).
        faces: (F, 3) int32 triangles, counter-clockwise seen from +z on the front layer.
        uv: (V, 2) float64 2-D pattern coordinates of every vertex.
        layer: (V,) int8: 0 front, 1 back, -1 seam vertex shared by both layers.
        landmarks: semantic name -> vertex index (sleeve tips, collar, hem corners, waist, leg ends...).
        layers: 1 or 2.
        params: the sampled pattern parameters (metres, radians).
    """

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    layer: np.ndarray
    landmarks: dict[str, int]
    layers: int = 1
    params: dict[str, float] = field(default_factory=dict)

    @property
    def landmark_names(self) -> list[str]:
        return list(self.landmarks)

    @property
    def landmark_indices(self) -> np.ndarray:
        """(M,) int64 vertex indices in :attr:`landmark_names` order."""
        return np.array(list(self.landmarks.values()), dtype=np.int64)

    def keypoints(self, vertices: np.ndarray) -> np.ndarray:
        """Landmark positions (T, M, 3) of a vertex sequence (T, V, 3) (or (M, 3) from (V, 3))."""
        return vertices[..., self.landmark_indices, :]

    def edges(self) -> np.ndarray:
        """(E, 2) int64 unique undirected edges."""
        return mesh_edges(self.faces)


def mesh_edges(faces: np.ndarray) -> np.ndarray:
    """(E, 2) int64 unique undirected edges of triangles (F, 3)."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).astype(np.int64)
    e.sort(axis=1)
    return np.unique(e, axis=0)


# ----------------------------------------------------------------------------------------------
# Outlines: a right half from the top centre (x = 0) to the bottom centre (x = 0), then mirrored.


@dataclass
class _Half:
    points: list[tuple[float, float]] = field(default_factory=list)
    names: list[str | None] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)  # kind of the edge from this point to the next

    def add(self, x: float, y: float, kind: int, name: str | None = None) -> _Half:
        self.points.append((float(x), float(y)))
        self.names.append(name)
        self.kinds.append(kind)
        return self


def _mirror(half: _Half) -> tuple[np.ndarray, list[str | None], list[int]]:
    """Close a right half into a full loop: (P, 2) points, names, kind of edge i -> i+1."""
    pts = list(half.points)
    names = [n if n is None or pts[i][0] == 0.0 else f'{n}_r' for i, n in enumerate(half.names)]
    kinds = list(half.kinds)
    n = len(pts)
    for i in range(n - 2, 0, -1):  # back up the left side, skipping the two centre points
        x, y = pts[i]
        pts.append((-x, y))
        names.append(None if half.names[i] is None else f'{half.names[i]}_l')
        kinds.append(half.kinds[i - 1])  # the edge mirror(i) -> mirror(i-1) mirrors edge i-1 -> i
    return np.array(pts), names, kinds


def _arc(cx: float, cy: float, rx: float, ry: float, t0: float, t1: float, n: int) -> list[tuple[float, float]]:
    """Interior points of an elliptical arc (end points excluded)."""
    ts = np.linspace(t0, t1, n + 2)[1:-1]
    return [(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in ts]


def _u(rng: np.random.Generator | None, lo: float, hi: float) -> float:
    return 0.5 * (lo + hi) if rng is None else float(rng.uniform(lo, hi))


def _top(rng, p: dict, sleeve: tuple[float, float], angle: tuple[float, float], length: tuple[float, float],
         hem_flare: tuple[float, float], dress: bool = False) -> _Half:
    """T-shirt / long-sleeve / dress right half: neck, shoulder, sleeve, armpit, side, hem."""
    w = p['width'] = _u(rng, 0.44, 0.60)
    L = p['length'] = _u(rng, *length)
    nw = p['neck_width'] = _u(rng, 0.15, 0.21)
    nd = p['neck_depth'] = _u(rng, 0.05, 0.10)
    sd = p['shoulder_drop'] = _u(rng, 0.03, 0.06)
    sl = p['sleeve_length'] = _u(rng, *sleeve)
    a = p['sleeve_angle'] = _u(rng, *angle)
    ah = p['armhole_depth'] = _u(rng, 0.17, 0.23)
    cw = p['cuff_width'] = min(_u(rng, 0.11, 0.17), 0.8 * ah)
    flare = p['hem_flare'] = _u(rng, *hem_flare)
    h = _Half().add(0.0, L - nd, OPEN, 'neck_front')
    for x, y in _arc(0.0, L, nw / 2, nd, -math.pi / 2, 0.0, 6):
        h.add(x, y, OPEN)
    h.add(nw / 2, L, SEWN, 'neck')
    sx, sy = w / 2, L - sd
    h.add(sx, sy, SEWN, 'shoulder')
    d = np.array([math.cos(a), -math.sin(a)])
    nrm = np.array([-math.sin(a), -math.cos(a)])  # perpendicular to the sleeve, pointing down
    c1 = np.array([sx, sy]) + sl * d
    c2 = c1 + cw * nrm
    h.add(*c1, OPEN, 'sleeve_top')
    h.add(*c2, SEWN, 'sleeve_bottom')
    ay = sy - ah
    h.add(sx - 0.01, ay, SEWN, 'armpit')
    if dress:
        wy = p['waist_height'] = ay - _u(rng, 0.12, 0.18)
        h.add(sx - 0.03, wy, SEWN, 'waist')
    h.add(sx + flare, 0.0, OPEN, 'hem')
    return h.add(0.0, 0.0, OPEN, 'hem_centre')


def _legs(rng, p: dict, length: tuple[float, float], crotch: tuple[float, float],
          leg: tuple[float, float]) -> _Half:
    ww = p['waist_width'] = _u(rng, 0.34, 0.46)
    L = p['length'] = _u(rng, *length)
    c = p['crotch_depth'] = _u(rng, *crotch)
    hip = p['hip_flare'] = _u(rng, 0.02, 0.05)
    lw = p['leg_width'] = _u(rng, *leg)
    xo = max(ww / 2 + hip + _u(rng, -0.02, 0.04), lw + 0.03)  # keep a gap between the legs
    p['leg_outer_x'] = xo
    h = _Half().add(0.0, L, OPEN, 'waist_centre')
    h.add(ww / 2, L, SEWN, 'waist')
    h.add(ww / 2 + hip, L - min(0.18, 0.7 * c), SEWN, 'hip')
    h.add(xo, 0.0, OPEN, 'leg_outer')
    h.add(xo - lw, 0.0, SEWN, 'leg_inner')
    return h.add(0.0, L - c, SEWN, 'crotch')


def _skirt(rng, p: dict) -> _Half:
    ww = p['waist_width'] = _u(rng, 0.32, 0.44)
    L = p['length'] = _u(rng, 0.42, 0.80)
    hw = p['hem_width'] = ww + _u(rng, 0.15, 0.6)
    sag = p['hem_sag'] = _u(rng, 0.0, 0.06)
    h = _Half().add(0.0, L, OPEN, 'waist_centre').add(ww / 2, L, SEWN, 'waist').add(hw / 2, 0.0, OPEN, 'hem')
    for s in np.linspace(1.0, 0.0, 7)[1:-1]:  # the A-line hem dips towards the middle
        h.add(s * hw / 2, -sag * (1.0 - s * s), OPEN)
    return h.add(0.0, -sag, OPEN, 'hem_centre')


def _sheet(rng, p: dict, width: tuple[float, float], length: tuple[float, float]) -> _Half:
    w = p['width'] = _u(rng, *width)
    L = p['length'] = _u(rng, *length)
    return (_Half().add(0.0, L, OPEN, 'top_centre').add(w / 2, L, OPEN, 'corner_top')
            .add(w / 2, 0.0, OPEN, 'corner_bottom').add(0.0, 0.0, OPEN, 'bottom_centre'))


def pattern(name: str, seed: int | None = None) -> tuple[np.ndarray, list[str | None], list[int], dict]:
    """The closed outline of garment ``name``: (P, 2) points (metres, centred), names, edge kinds, params."""
    rng = None if seed is None else np.random.default_rng(seed)
    p: dict[str, float] = {}
    if name == 'tshirt':
        half = _top(rng, p, (0.14, 0.24), (0.35, 0.75), (0.62, 0.76), (0.0, 0.03))
    elif name == 'longsleeve':
        half = _top(rng, p, (0.50, 0.64), (0.75, 1.15), (0.62, 0.76), (0.0, 0.03))
    elif name == 'dress':
        half = _top(rng, p, (0.06, 0.14), (0.25, 0.55), (0.85, 1.15), (0.12, 0.30), dress=True)
    elif name == 'pants':
        half = _legs(rng, p, (0.90, 1.08), (0.26, 0.33), (0.17, 0.23))
    elif name == 'shorts':
        half = _legs(rng, p, (0.40, 0.55), (0.25, 0.31), (0.22, 0.30))
    elif name == 'skirt':
        half = _skirt(rng, p)
    elif name == 'towel':
        half = _sheet(rng, p, (0.45, 0.80), (0.30, 0.55))
    elif name == 'scarf':
        half = _sheet(rng, p, (0.16, 0.30), (1.10, 1.70))
    else:
        raise ValueError(f'unknown garment {name!r}; choose from {sorted(GARMENTS)}')
    pts, names, kinds = _mirror(half)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pts = pts - 0.5 * (lo + hi)  # centre the pattern on the origin
    if not Polygon(pts).is_valid:
        raise RuntimeError(f'{name} pattern (seed {seed}) self-intersects: {p}')
    return pts, names, kinds, p


def _resample(pts: np.ndarray, names: list, kinds: list, spacing: float):
    """Subdivide every outline edge to about ``spacing``; returns points, landmark -> index, edge kinds."""
    out, kind_out, marks = [], [], {}
    n = len(pts)
    for i in range(n):
        a, b = pts[i], pts[(i + 1) % n]
        if names[i] is not None:
            marks[names[i]] = len(out)
        k = max(1, math.ceil(float(np.linalg.norm(b - a)) / spacing))
        for j in range(k):
            out.append(a + (b - a) * (j / k))
            kind_out.append(kinds[i])
    return np.array(out), marks, np.array(kind_out, dtype=np.int8)


def _triangulate(loop: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    n = len(loop)
    seg = np.stack([np.arange(n), (np.arange(n) + 1) % n], axis=1)
    max_area = 0.5 * math.sqrt(3) / 4 * spacing ** 2 * 2.2  # a bit over an equilateral triangle's area
    # p: PSLG, q30: min angle 30 deg, Y: no Steiner points on the outline (keeps it = our loop), Q: quiet.
    out = triangle.triangulate({'vertices': loop, 'segments': seg}, f'pq30Ya{max_area:.10f}Q')
    verts, tris = out['vertices'], out['triangles'].astype(np.int32)
    if not np.allclose(verts[:n], loop):
        raise RuntimeError('triangle reordered the outline vertices')
    # Triangle's orientation: make every face counter-clockwise seen from +z.
    a, b, c = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    cross = (b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0]
    tris[cross < 0] = tris[cross < 0][:, [0, 2, 1]]
    return verts, tris


def make_garment(name: str, seed: int | None = None, target_vertices: int = 2000, layers: int = 1,
                 gap: float = 0.006) -> Garment:
    """Build garment ``name`` with about ``target_vertices`` vertices (both layers together).

    Args:
        name: one of :data:`GARMENTS`.
        seed: randomises sizes and proportions; ``None`` gives the nominal pattern.
        target_vertices: wanted vertex count (met within a few per cent).
        layers: 1 (a flat silhouette) or 2 (front and back sewn along the seams).
        gap: initial distance between the two layers in metres.
    """
    if layers not in (1, 2):
        raise ValueError(f'layers must be 1 or 2, got {layers}')
    if layers == 2 and not GARMENTS.get(name, False):
        raise ValueError(f'{name} has no two-layer variant')
    pts, names, kinds, params = pattern(name, seed)
    area = Polygon(pts).area
    per_layer = target_vertices if layers == 1 else 0.5 * target_vertices * 1.04
    # Equilateral triangles of side h hold about 2 A / (sqrt(3) h^2) vertices; correct once on the count.
    spacing = math.sqrt(2 * area / (math.sqrt(3) * per_layer))
    for _ in range(3):
        loop, marks, edge_kind = _resample(pts, names, kinds, spacing)
        verts2, tris = _triangulate(loop, spacing)
        count = len(verts2) if layers == 1 else 2 * len(verts2) - int(_sewn_mask(edge_kind).sum())
        if abs(count - target_vertices) <= 0.03 * target_vertices:
            break
        spacing *= math.sqrt(count / target_vertices)
    n2 = len(verts2)
    if layers == 1:
        verts = np.column_stack([verts2, np.zeros(n2)])
        return Garment(name, verts, tris, verts2.copy(), np.zeros(n2, np.int8), marks, 1, params)
    sewn = np.zeros(n2, dtype=bool)
    sewn[:len(loop)] = _sewn_mask(edge_kind)
    back = np.arange(n2)
    free = np.flatnonzero(~sewn)
    back[free] = n2 + np.arange(len(free))
    uv = np.concatenate([verts2, verts2[free]])
    z = np.where(sewn, 0.0, gap / 2)
    verts = np.column_stack([uv, np.concatenate([z, np.full(len(free), -gap / 2)])])
    faces = np.concatenate([tris, back[tris][:, [0, 2, 1]]]).astype(np.int32)  # back faces point down
    layer = np.concatenate([np.where(sewn, -1, 0), np.ones(len(free))]).astype(np.int8)
    return Garment(name, verts, faces, uv, layer, marks, 2, params)


def _sewn_mask(edge_kind: np.ndarray) -> np.ndarray:
    """(P,) bool: outline vertex i touches a sewn edge (edge i -> i+1 or edge i-1 -> i)."""
    sewn_edge = edge_kind == SEWN
    return sewn_edge | np.roll(sewn_edge, 1)
