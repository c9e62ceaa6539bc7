"""Deformation sequences on disk: our ``.npz``, Key-Grid's text layout and folders of per-frame OBJs.

The sequence-file contract (``ARCHITECTURE.md``): ``vertices`` float32 (T, V, 3) in metres, z up,
the same vertex order in every frame; ``faces`` int32 (F, 3); optional strings ``garment`` and
``motion``; optional ``keypoints`` float32 (T, M, 3) with ``keypoint_names``. We also store ``info``
(a JSON string: simulator settings, physics checks) when we made the file.

Every reader checks what it reads and raises :class:`SequenceFormatError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import hashlib
import json
from pathlib import Path
import re

import numpy as np

from keygrid_ros.fileio import atomic_write

#: Key-Grid's text files stack frames of this many points.
KEYGRID_POINTS = 2048
_TIMESTEP = re.compile(r'(?:^|_timestep_)(\d+)\.obj$')


class SequenceFormatError(ValueError):
    """A malformed sequence file; the message names the file."""


@dataclass
class Sequence:
    """One deformation sequence.

    Attributes:
        vertices: (T, V, 3) float32, metres, z up, fixed vertex order.
        faces: (F, 3) int32 or ``None`` (point-only sources such as Key-Grid text files).
        keypoints: (T, M, 3) float32 ground truth or ``None``; ``keypoint_names`` (M,) names.
        info: free-form metadata (simulator settings, physics checks).
    """

    vertices: np.ndarray
    faces: np.ndarray | None = None
    garment: str = ''
    motion: str = ''
    keypoints: np.ndarray | None = None
    keypoint_names: list[str] | None = None
    info: dict = field(default_factory=dict)
    source: str = ''

    @property
    def frames(self) -> int:
        return self.vertices.shape[0]

    @property
    def num_vertices(self) -> int:
        return self.vertices.shape[1]


def _check_vertices(vertices: np.ndarray, source: str) -> np.ndarray:
    if vertices.ndim != 3 or vertices.shape[2] != 3 or vertices.shape[0] == 0 or vertices.shape[1] == 0:
        raise SequenceFormatError(f'{source}: vertices must be (T, V, 3) with T, V > 0, got {vertices.shape}')
    bad = ~np.isfinite(vertices).all(axis=(1, 2))
    if bad.any():
        raise SequenceFormatError(f'{source}: non-finite coordinates (NaN/inf) in frame(s) '
                                  f'{np.flatnonzero(bad)[:10].tolist()}')
    return vertices.astype(np.float32, copy=False)


def _check_faces(faces: np.ndarray, num_vertices: int, source: str) -> np.ndarray:
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise SequenceFormatError(f'{source}: faces must be (F, 3), got {faces.shape}')
    if len(faces) and (faces.min() < 0 or faces.max() >= num_vertices):
        raise SequenceFormatError(f'{source}: face indices outside 0..{num_vertices - 1}')
    return faces.astype(np.int32, copy=False)


def fingerprint(seq: Sequence) -> str:
    """A short hash of what a sequence holds (vertices, faces, garment, motion, ground-truth keypoints), not of
    where it lies or of its free-form ``info``: the same simulation on two machines, or re-simulated with
    different timings in ``info``, gets the same fingerprint; any moved vertex changes it."""
    digest = hashlib.sha256()
    for array, dtype in ((seq.vertices, np.float32), (seq.faces, np.int32), (seq.keypoints, np.float32)):
        if array is None:
            digest.update(b'none')
            continue
        array = np.ascontiguousarray(array, dtype=dtype)
        digest.update(repr(array.shape).encode())
        digest.update(array.tobytes())
    digest.update(json.dumps([seq.garment, seq.motion, seq.keypoint_names]).encode())
    return digest.hexdigest()[:16]


def save_sequence(path: str | Path, seq: Sequence) -> Path:
    """Write ``seq`` as an ``.npz`` following the contract (atomically: a partial file never appears)."""
    path = Path(path)
    data: dict[str, np.ndarray] = {'vertices': np.asarray(seq.vertices, dtype=np.float32)}
    if seq.faces is not None:
        data['faces'] = np.asarray(seq.faces, dtype=np.int32)
    if seq.garment:
        data['garment'] = np.array(seq.garment)
    if seq.motion:
        data['motion'] = np.array(seq.motion)
    if seq.keypoints is not None:
        data['keypoints'] = np.asarray(seq.keypoints, dtype=np.float32)
        data['keypoint_names'] = np.array(seq.keypoint_names or [f'kp{i}' for i in range(seq.keypoints.shape[1])])
    if seq.info:
        data['info'] = np.array(json.dumps(seq.info))
    atomic_write(path, lambda fh: np.savez(fh, **data))
    return path


def load_npz(path: str | Path) -> Sequence:
    """Read our ``.npz`` sequence file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise SequenceFormatError(f'{path}: not a readable .npz: {exc}') from None
    if 'vertices' not in data:
        raise SequenceFormatError(f'{path}: no "vertices" array (has {sorted(data)})')
    vertices = _check_vertices(data['vertices'], str(path))
    faces = _check_faces(data['faces'], vertices.shape[1], str(path)) if 'faces' in data else None
    keypoints = names = None
    if 'keypoints' in data:
        keypoints = data['keypoints'].astype(np.float32, copy=False)
        if keypoints.ndim != 3 or keypoints.shape[0] != vertices.shape[0] or keypoints.shape[2] != 3:
            raise SequenceFormatError(f'{path}: keypoints must be (T={vertices.shape[0]}, M, 3), '
                                      f'got {keypoints.shape}')
        names = [str(n) for n in data['keypoint_names']] if 'keypoint_names' in data else None
        if names is not None and len(names) != keypoints.shape[1]:
            raise SequenceFormatError(f'{path}: {len(names)} keypoint names for {keypoints.shape[1]} keypoints')
    info = json.loads(str(data['info'])) if 'info' in data else {}
    return Sequence(vertices, faces, str(data.get('garment', '')), str(data.get('motion', '')), keypoints, names,
                    info, str(path))


def load_keygrid_txt(path: str | Path, points_per_frame: int = KEYGRID_POINTS) -> Sequence:
    """Read Key-Grid's text layout: T x ``points_per_frame`` rows of ``x y z``."""
    path = Path(path)
    try:
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise SequenceFormatError(f'{path}: not a table of numbers: {exc}') from None
    if rows.shape[1] != 3:
        raise SequenceFormatError(f'{path}: expected 3 columns (x y z), got {rows.shape[1]}')
    if len(rows) == 0 or len(rows) % points_per_frame:
        raise SequenceFormatError(f'{path}: {len(rows)} rows is not a whole number of {points_per_frame}-point '
                                  f'frames')
    vertices = _check_vertices(rows.reshape(-1, points_per_frame, 3), str(path))
    return Sequence(vertices, None, source=str(path))


def obj_frame_files(folder: str | Path) -> list[Path]:
    """The per-frame OBJs of ``folder`` in time order: ``*_timestep_<t>.obj`` (or plain ``<t>.obj``)."""
    folder = Path(folder)
    frames = [(int(m.group(1)), p) for p in folder.glob('*.obj') if (m := _TIMESTEP.search(p.name))]
    stepped = [(t, p) for t, p in frames if '_timestep_' in p.name]
    frames = sorted(stepped or frames)
    return [p for _, p in frames]


def load_obj_frames(folder: str | Path, units: str = 'auto', up: str = 'y', stride: int = 1,
                    max_frames: int | None = None) -> Sequence:
    """Read a folder of per-frame OBJ meshes ordered by their time step.

    ``units`` and ``up`` convert to metres z-up (``'auto'`` units are guessed once, from the first
    frame, and applied to all). ``stride`` keeps every n-th file (Key-Grid took every 20th simulator
    step), ``max_frames`` caps the count. Faces come from the first frame.
    """
    from keygrid_ros.data.meshes import MeshFormatError, detect_units, read_obj, to_metres_z_up

    folder = Path(folder)
    files = obj_frame_files(folder)[::stride][:max_frames]
    if not files:
        raise SequenceFormatError(f'{folder}: no *_timestep_<t>.obj or <t>.obj files')
    frames, faces, unit = [], None, units
    for f in files:
        try:
            mesh = read_obj(f)
        except MeshFormatError as exc:
            raise SequenceFormatError(str(exc)) from None
        if faces is None:
            faces = mesh.faces
            unit = detect_units(mesh.vertices) if units == 'auto' else units
        elif len(mesh.vertices) != len(frames[0]):
            raise SequenceFormatError(f'{f}: {len(mesh.vertices)} vertices, but {files[0].name} has {len(frames[0])}')
        if not np.isfinite(mesh.vertices).all():
            raise SequenceFormatError(f'{f}: non-finite coordinates (NaN/inf)')
        frames.append(to_metres_z_up(mesh.vertices, unit, up))
    vertices = _check_vertices(np.stack(frames).astype(np.float32), str(folder))
    return Sequence(vertices, _check_faces(faces, vertices.shape[1], str(files[0])), source=str(folder),
                    info={'units': unit, 'up': up, 'files': [p.name for p in files]})


def load_sequence(path: str | Path, **kwargs) -> Sequence:
    """Read any supported sequence: ``.npz``, Key-Grid ``.txt``, or a folder of per-frame OBJs."""
    path = Path(path)
    if path.is_dir():
        return load_obj_frames(path, **kwargs)
    if not path.exists():
        raise FileNotFoundError(f'{path}: no such sequence file')
    if path.suffix == '.npz':
        return load_npz(path)
    if path.suffix == '.txt':
        return load_keygrid_txt(path, **kwargs)
    raise SequenceFormatError(f'{path}: unknown sequence format (expected .npz, .txt or a folder of OBJs)')
