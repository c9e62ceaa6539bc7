"""Mesh loading: the real DiffCloth OBJs, OBJ syntax variants, welding, units and axes, ClothesNet layout."""

from __future__ import annotations

import numpy as np
import pytest

from keygrid_ros.data.meshes import (
    Y_UP_TO_Z_UP,
    MeshFormatError,
    detect_units,
    load_clothesnet,
    load_mesh,
    read_obj,
    read_pcd_ascii,
    to_metres_z_up,
    weld,
)

from conftest import require


def test_diffcloth_tshirts_load_with_identical_vertex_order(shared_data):
    folder = shared_data / 'diffcloth'
    flat = load_mesh(require(folder / 'tshirt1900-flattened.obj'))
    folded = load_mesh(require(folder / 'tshirt1900-folding-biFolded.obj'))
    assert flat.vertices.shape == folded.vertices.shape == (1921, 3)
    assert np.array_equal(flat.faces, folded.faces) and flat.faces.shape == (3726, 3)
    # Simulator units are about decimetres: a T-shirt is 0.5-1.2 m across once in metres.
    assert detect_units(read_obj(folder / 'tshirt1900-flattened.obj').vertices) == 'dm'
    assert 0.5 < np.ptp(flat.vertices, axis=0).max() < 1.2
    # Folding halves the T-shirt's footprint; edge lengths are preserved (same cloth, same order).
    e = flat.faces[:, :2]
    ratio = (np.linalg.norm(np.diff(folded.vertices[e], axis=1), axis=-1)
             / np.linalg.norm(np.diff(flat.vertices[e], axis=1), axis=-1))
    assert np.median(ratio) == pytest.approx(1.0, abs=0.05)


def test_diffcloth_meshes_with_texture_and_normal_indices(shared_data):
    folder = shared_data / 'diffcloth'
    tee = read_obj(require(folder / 'tshirt1900.obj'))  # f v/vt/vn, o and mtllib records
    assert tee.vertices.shape == (1921, 3) and tee.faces.shape == (3726, 3) and 'tshirt1900' in tee.groups
    skirt = read_obj(require(folder / 'skirt1252.obj'))  # f v/vt/vn after a Meshlab header
    assert skirt.faces.shape == (1252, 3) and skirt.faces.max() < len(skirt.vertices)
    dress = load_mesh(require(folder / 'dress-v5k-f10k.obj'))  # f v//vn; has near-duplicate vertices
    assert 5500 < len(dress.vertices) < 5563


def test_obj_parser_syntax(tmp_path):
    path = tmp_path / 'quad.obj'
    path.write_text('# comment\nmtllib x.mtl\no panel\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0 0.5 0.5 0.5\n'
                    'vt 0 0\nvn 0 0 1\nusemtl m\nf 1/1/1 2/1/1 3/1/1 4/1/1\ng second\nf -4//1 -2//1 -1//1\n')
    mesh = read_obj(path)
    assert mesh.vertices.shape == (4, 3)
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 2, 3]]  # quad fanned; negative indices
    assert mesh.groups == ['panel', 'second'] and mesh.face_group.tolist() == [0, 0, 1]
    bad = tmp_path / 'bad.obj'
    bad.write_text('v 0 0 0\nv 1 0 0\nf 1 2 7\n')
    with pytest.raises(MeshFormatError, match='bad.obj'):
        read_obj(bad)
    garbled = tmp_path / 'garbled.obj'
    garbled.write_text('v 0 zero 0\n')
    with pytest.raises(MeshFormatError, match='garbled.obj:1'):
        read_obj(garbled)


def test_weld_merges_coincident_panel_seams():
    # Two unit squares (two triangles each) sharing an edge, stored as separate panels with the seam
    # duplicated 0.2 mm apart, as ClothesNet's sewing panels are.
    a = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float)
    b = a + [1.0002, 0, 0]
    verts = np.concatenate([a, b])
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    welded, wf, mapping = weld(verts, faces, tol=5e-4)
    assert len(welded) == 6 and len(wf) == 4
    assert mapping[1] == mapping[4] and mapping[2] == mapping[7]
    assert np.allclose(welded[mapping], verts, atol=3e-4)
    # Nothing further apart than the tolerance merges.
    assert len(weld(verts, faces, tol=1e-4)[0]) == 8


def test_units_and_axes():
    v = np.array([[1.0, 2.0, 3.0]])
    out = to_metres_z_up(v, 'cm', 'y')
    assert np.allclose(out, [[0.01, -0.03, 0.02]])  # y (up) -> z, z -> -y, right-handed
    assert np.linalg.det(Y_UP_TO_Z_UP) == pytest.approx(1.0)
    assert np.allclose(to_metres_z_up(v, 'm', 'z'), v)
    assert detect_units(np.array([[0, 0, 0], [60.0, 0, 0]])) == 'cm'
    assert detect_units(np.array([[0, 0, 0], [600.0, 0, 0]])) == 'mm'
    with pytest.raises(ValueError):
        to_metres_z_up(v, 'inch')


def test_clothesnet_folder_layout(tmp_path):
    gid = '00042'
    folder = tmp_path / 'Tops' / 'NoCollar_Lsleeve_FrontClose' / gid
    folder.mkdir(parents=True)
    # Two panels in centimetres, y up, seam vertices duplicated.
    (folder / f'{gid}.obj').write_text(
        'o front\nv 0 0 0\nv 50 0 0\nv 50 60 0\nf 1 2 3\n'
        'o back\nv 0 0 0\nv 50 60 0.01\nv 0 60 0\nf 4 5 6\n')
    (folder / f'kp_{gid}.pcd').write_text(
        '# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 2\nHEIGHT 1\n'
        'VIEWPOINT 0 0 0 1 0 0 0\nPOINTS 2\nDATA ascii\n0 60 0\n50 0 0\n')
    (folder / 'border.obj').write_text('v 0 0 0\n')
    mesh, kp = load_clothesnet(folder)
    assert len(mesh.vertices) == 4 and len(mesh.faces) == 2  # welded within 0.5 mm
    assert np.allclose(kp, [[0.0, 0.0, 0.6], [0.5, 0.0, 0.0]])  # cm -> m, y-up -> z-up
    assert np.isclose(mesh.vertices[:, 2].max(), 0.6)
    binary = tmp_path / 'b.pcd'
    binary.write_text('FIELDS x y z\nPOINTS 1\nDATA binary\n')
    with pytest.raises(MeshFormatError, match='b.pcd'):
        read_pcd_ascii(binary)
