"""Reading real garment meshes: OBJ files (DiffCloth, ClothesNet) and ClothesNet keypoint PCDs.

Everything is returned in the project's convention: metres, z up. Sources differ:
- DiffCloth OBJs are y-up in simulator units of roughly decimetres (a T-shirt is ~11 units wide),
  but not all of them (its skirt and sock are in metres, its dress looks like centimetres), so units
  are a parameter with an ``'auto'`` guess from the mesh size;
- ClothesNet garments are y-up centimetres, several *unwelded* sewing panels whose seam vertices
  coincide within 0.5 mm, so they are welded into one connected mesh before simulation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math
from pathlib import Path

import numpy as np

#: unit name -> metres per unit.
UNITS = {'m': 1.0, 'dm': 0.1, 'cm': 0.01, 'mm': 0.001}

#: Y-up -> Z-up: a +90 degree turn about x, (x, y, z) -> (x, -z, y).
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


@dataclass
class Mesh:
    """A triangle mesh: ``vertices`` (V, 3) float64, ``faces`` (F, 3) int32, OBJ object/group names
    ``groups`` and each face's group ``face_group`` (F,) int32."""

    vertices: np.ndarray
    faces: np.ndarray
    groups: list[str] = field(default_factory=lambda: ['default'])
    face_group: np.ndarray | None = None
    source: str = ''


class MeshFormatError(ValueError):
    """A mesh or point file that cannot be read; the message names the file."""


def read_obj(path: str | Path) -> Mesh:
    """Parse a Wavefront OBJ: ``v`` and ``f`` records (any of ``i``, ``i/t``, ``i//n``, ``i/t/n``,
    negative indices), polygons fan-triangulated, ``o``/``g`` records as groups. Materials,
    normals and texture coordinates are ignored."""
    path = Path(path)
    verts: list[list[float]] = []
    faces: list[list[int]] = []
    face_group: list[int] = []
    groups: list[str] = []
    group = -1
    with open(path, encoding='utf-8', errors='replace') as fh:
        for lineno, line in enumerate(fh, 1):
            tag, _, rest = line.strip().partition(' ')
            try:
                if tag == 'v':
                    verts.append([float(x) for x in rest.split()[:3]])
                elif tag == 'f':
                    idx = [int(tok.split('/')[0]) for tok in rest.split()]
                    n = len(verts)
                    idx = [i - 1 if i > 0 else n + i for i in idx]  # OBJ is 1-based; negatives count back
                    if len(idx) < 3:
                        raise ValueError('face with fewer than 3 vertices')
                    if group < 0:
                        groups.append('default')
                        group = 0
                    for k in range(1, len(idx) - 1):
                        faces.append([idx[0], idx[k], idx[k + 1]])
                        face_group.append(group)
                elif tag in ('o', 'g'):
                    groups.append(rest.strip() or f'group{len(groups)}')
                    group = len(groups) - 1
            except ValueError as exc:
                raise MeshFormatError(f'{path}:{lineno}: cannot parse {line.strip()!r}: {exc}') from None
    if not verts:
        raise MeshFormatError(f'{path}: no vertices')
    v = np.asarray(verts, dtype=np.float64)
    if v.shape[1] != 3:
        raise MeshFormatError(f'{path}: vertices need 3 coordinates')
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(f) and (f.min() < 0 or f.max() >= len(v)):
        raise MeshFormatError(f'{path}: face index out of range (1..{len(v)})')
    return Mesh(v, f.astype(np.int32), groups or ['default'], np.asarray(face_group, dtype=np.int32), str(path))


def write_obj(path: str | Path, vertices: np.ndarray, faces: np.ndarray | None = None) -> None:
    """Write vertices (V, 3) and optional faces (F, 3) (0-based) as a minimal OBJ."""
    with open(path, 'w', encoding='utf-8') as fh:
        np.savetxt(fh, vertices, fmt='v %.6f %.6f %.6f')
        if faces is not None and len(faces):
            np.savetxt(fh, np.asarray(faces) + 1, fmt='f %d %d %d')


def detect_units(vertices: np.ndarray, typical_size: float = 0.6) -> str:
    """Guess the unit of a garment mesh: the one that makes its largest extent closest (in log) to
    ``typical_size`` metres."""
    extent = float(np.ptp(vertices, axis=0).max())
    if extent <= 0:
        return 'm'
    return min(UNITS, key=lambda u: abs(math.log(extent * UNITS[u] / typical_size)))


def to_metres_z_up(vertices: np.ndarray, units: str = 'm', up: str = 'y') -> np.ndarray:
    """Scale ``vertices`` (..., 3) from ``units`` to metres and turn ``up`` ('y' or 'z') into +z."""
    if units not in UNITS:
        raise ValueError(f'unknown units {units!r}; choose from {sorted(UNITS)}')
    out = np.asarray(vertices, dtype=np.float64) * UNITS[units]
    if up == 'y':
        out = out @ Y_UP_TO_Z_UP.T
    elif up != 'z':
        raise ValueError(f"up must be 'y' or 'z', got {up!r}")
    return out


def weld(vertices: np.ndarray, faces: np.ndarray, tol: float = 5e-4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge vertices closer than ``tol`` (same units as ``vertices``) and drop the faces that collapse.

    Returns welded vertices (V', 3) (each the mean of its cluster), faces (F', 3) int32, and
    ``mapping`` (V,) from every old vertex to its new index (for keypoints and correspondences).
    Unreferenced vertices are kept, so the mapping is total.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(vertices)
    pairs = cKDTree(vertices).query_pairs(tol, output_type='ndarray')
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n)) if len(pairs) else \
        coo_matrix((n, n))
    count, label = connected_components(graph, directed=False)
    # Number clusters by their first vertex so the welded order follows the original order.
    first = np.full(count, n, dtype=np.int64)
    np.minimum.at(first, label, np.arange(n))
    rank = np.empty(count, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(count)
    mapping = rank[label]
    sums = np.zeros((count, 3))
    np.add.at(sums, mapping, vertices)
    welded = sums / np.bincount(mapping, minlength=count)[:, None]
    f = mapping[faces]
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    f = f[ok]
    _, unique = np.unique(np.sort(f, axis=1), axis=0, return_index=True)  # panels may repeat a seam face
    return welded, f[np.sort(unique)].astype(np.int32), mapping


def load_mesh(path: str | Path, units: str = 'auto', up: str = 'y', weld_tol: float | None = 5e-4) -> Mesh:
    """Read an OBJ garment into metres, z up, welded within ``weld_tol`` metres (``None``: no welding)."""
    mesh = read_obj(path)
    unit = detect_units(mesh.vertices) if units == 'auto' else units
    v = to_metres_z_up(mesh.vertices, unit, up)
    faces, groups = mesh.faces, mesh.face_group
    if weld_tol is not None:
        before = len(faces)
        v, faces, _ = weld(v, faces, weld_tol)
        if len(faces) != before:
            groups = None  # collapsed faces break the face -> group alignment
    return Mesh(v, faces, mesh.groups, groups, str(path))


def read_pcd_ascii(path: str | Path) -> np.ndarray:
    """Points (N, 3) float64 (x, y, z fields) of an ASCII PCD file."""
    path = Path(path)
    fields: list[str] = []
    count = None
    with open(path, encoding='utf-8', errors='replace') as fh:
        for line in fh:
            key, _, rest = line.strip().partition(' ')
            if key == 'FIELDS':
                fields = rest.split()
            elif key == 'POINTS':
                count = int(rest)
            elif key == 'DATA':
                if rest.strip() != 'ascii':
                    raise MeshFormatError(f'{path}: only ASCII PCD is supported, got DATA {rest.strip()}')
                break
        else:
            raise MeshFormatError(f'{path}: no DATA line')
        data = np.loadtxt(fh, ndmin=2)
    if not {'x', 'y', 'z'} <= set(fields):
        raise MeshFormatError(f'{path}: needs x y z fields, has {fields}')
    if count is not None and len(data) != count:
        raise MeshFormatError(f'{path}: header says {count} points, found {len(data)}')
    cols = [fields.index(c) for c in 'xyz']
    return data[:, cols]


def load_clothesnet(folder: str | Path, units: str = 'cm', up: str = 'y',
                    weld_tol: float = 5e-4) -> tuple[Mesh, np.ndarray | None]:
    """A ClothesNet garment folder ``<id>/{<id>.obj, kp_<id>.pcd, border.obj}``: the welded mesh in
    metres z-up and its keypoints (K, 3) in the same frame (``None`` when there is no PCD)."""
    folder = Path(folder)
    obj = folder / f'{folder.name}.obj'
    if not obj.exists():
        candidates = sorted(p for p in folder.glob('*.obj') if p.name != 'border.obj')
        if not candidates:
            raise MeshFormatError(f'{folder}: no garment OBJ')
        obj = candidates[0]
    mesh = load_mesh(obj, units, up, weld_tol)
    pcd = folder / f'kp_{obj.stem}.pcd'
    if not pcd.exists():
        found = sorted(folder.glob('kp_*.pcd'))
        pcd = found[0] if found else None
    keypoints = to_metres_z_up(read_pcd_ascii(pcd), units, up) if pcd is not None else None
    return mesh, keypoints
