"""Parametric garments: clean meshes of the requested size, seeded variety, landmarks, sewn layers."""

from __future__ import annotations

import numpy as np
import pytest

from keygrid_ros.data.garments import GARMENTS, make_garment, mesh_edges


def _euler(g) -> int:
    return len(g.vertices) - len(mesh_edges(g.faces)) + len(g.faces)


@pytest.mark.parametrize('name', sorted(GARMENTS))
def test_single_layer_mesh_is_a_clean_disc(name):
    g = make_garment(name, seed=3)
    assert abs(len(g.vertices) - 2000) <= 100
    assert g.vertices.dtype == np.float64 and g.faces.dtype == np.int32
    assert _euler(g) == 1  # one piece of cloth, no holes, no non-manifold junk
    # Quality triangulation: no slivers or giant triangles (scipy Delaunay gave 0.19 m edges here).
    e = mesh_edges(g.faces)
    length = np.linalg.norm(g.vertices[e[:, 0]] - g.vertices[e[:, 1]], axis=1)
    assert length.max() < 3.5 * np.median(length)
    a, b, c = (g.vertices[g.faces[:, i], :2] for i in range(3))
    cross = (b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0]
    assert (cross > 0).all()  # consistently oriented, counter-clockwise from +z
    # Every edge is shared by at most two triangles.
    directed = np.concatenate([g.faces[:, [0, 1]], g.faces[:, [1, 2]], g.faces[:, [2, 0]]])
    assert len(np.unique(directed, axis=0)) == len(directed)


@pytest.mark.parametrize('name', [n for n, two in GARMENTS.items() if two])
def test_two_layer_garment_is_sewn_at_the_seams_and_open_at_the_openings(name):
    g = make_garment(name, seed=5, layers=2)
    assert g.layers == 2 and abs(len(g.vertices) - 2000) <= 100
    holes = {'tshirt': 4, 'longsleeve': 4, 'dress': 4, 'pants': 3, 'shorts': 3, 'skirt': 2}[name]
    assert _euler(g) == 2 - holes  # a sphere with one hole per opening (neck, cuffs, hem / waist, legs)
    front, back, seam = (g.layer == 0), (g.layer == 1), (g.layer == -1)
    assert front.sum() == back.sum() and seam.sum() > 0
    assert np.allclose(g.vertices[front, 2], -g.vertices[back, 2])  # the layers start apart
    # Each back vertex lies under a front vertex of the same pattern position.
    assert np.allclose(np.sort(g.uv[front], axis=0), np.sort(g.uv[back], axis=0))


def test_seed_randomises_sizes_and_is_reproducible():
    a, b, c = make_garment('tshirt', 1), make_garment('tshirt', 1), make_garment('tshirt', 2)
    assert np.array_equal(a.vertices, b.vertices)
    assert a.params != c.params
    widths = [np.ptp(make_garment('pants', s).vertices[:, 0]) for s in range(6)]
    assert np.ptp(widths) > 0.02


def test_landmarks_are_vertices_in_the_right_places():
    g = make_garment('tshirt', seed=4)
    uv = g.uv
    lm = g.landmarks
    assert {'sleeve_top_l', 'sleeve_top_r', 'neck_front', 'hem_l', 'hem_r', 'armpit_l'} <= set(lm)
    assert uv[lm['sleeve_top_r'], 0] == pytest.approx(uv[:, 0].max())  # sleeve tips are the widest points
    assert uv[lm['sleeve_top_l'], 0] == pytest.approx(-uv[lm['sleeve_top_r'], 0])  # mirror symmetric
    assert uv[lm['hem_l'], 1] == pytest.approx(uv[:, 1].min())
    frames = np.stack([g.vertices, g.vertices + 1.0])
    kp = g.keypoints(frames)
    assert kp.shape == (2, len(lm), 3) and np.allclose(kp[1] - kp[0], 1.0)
    pants = make_garment('pants', seed=4)
    assert {'waist_l', 'waist_r', 'leg_outer_l', 'leg_inner_r', 'crotch'} <= set(pants.landmarks)


def test_unknown_and_impossible_requests_raise():
    with pytest.raises(ValueError, match='unknown garment'):
        make_garment('hat')
    with pytest.raises(ValueError, match='two-layer'):
        make_garment('towel', layers=2)
