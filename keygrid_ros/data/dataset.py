"""A torch ``Dataset`` of frames from deformation sequences, sampled and normalised like Key-Grid.

One item is one frame of one sequence: ``N`` points sampled from the frame's mesh, in farthest-point
order (so every prefix is itself an FPS subset and the model can take its hierarchy levels as
prefixes), together with the vertex index of every point (cross-frame correspondence for DAS
protocol B), and normalised with :class:`keygrid_ros.normalize.Normalization` exactly as the
released code does (one scalar min/max over all axes to [-1, 1]).

Sampling:
- ``'fps'`` (the released code): FPS over the frame's mesh vertices;
- ``'surface'``: area-weighted random points on the triangles (4N of them), then FPS to N; each
  point's index is the nearest corner of its triangle.

Augmentations (all seeded per item), in the order applied:
1. ``partial``: keep only the vertices (or triangles) visible from a random camera above the garment;
2. sampling, then ``downsample``: keep the first n of the N FPS-ordered points (= FPS to n);
3. ``stretch``: each axis scaled by its own factor in [1 - stretch, 1 + stretch] (garments of other sizes
   and proportions than the few simulated ones), then ``se3``: a uniformly random rotation and a random
   translation (metres) of the frame;
4. normalisation (fitted to the points *after* the above), then ``noise``: Gaussian noise with sigma
   in normalised units (the unit the robustness protocol speaks), not re-normalised, so
   ``offset``/``scale`` still invert the points exactly.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
import math
from pathlib import Path
import zipfile

import fpsample
import numpy as np
import torch
from torch.utils.data import Dataset

from keygrid_ros.data.sequences import Sequence, load_sequence
from keygrid_ros.normalize import Normalization


@dataclass
class Augment:
    """Which augmentations to apply (see the module docstring). All off by default."""

    noise: float = 0.0
    downsample: int | None = None
    se3: bool = False
    se3_translation: float = 0.5
    stretch: float = 0.0
    partial: bool = False
    partial_elevation_deg: tuple[float, float] = (35.0, 90.0)
    partial_distance: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.stretch < 1.0:
            raise ValueError(f'stretch must be in [0, 1) (a factor 1 +- stretch per axis), got {self.stretch}')


def fps(points: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count,) int64 indices of ``points`` (M, 3) in farthest-point order from a seeded start.

    With fewer than ``count`` points, the FPS order of all of them is repeated cyclically (the
    released code's FPS also repeats points when it runs out).
    """
    total = len(points)
    if total == 0:
        raise ValueError('cannot sample from an empty point set')
    take = min(count, total)
    if total <= 2:
        order = np.arange(total, dtype=np.int64)
    else:
        height = int(max(1, min(7, math.floor(math.log2(total)) - 4)))
        order = fpsample.bucket_fps_kdline_sampling(np.ascontiguousarray(points, dtype=np.float32), take, h=height,
                                                    start_idx=int(rng.integers(total))).astype(np.int64)
    return np.resize(order, count) if take < count else order


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed 3x3 rotation (from a random unit quaternion)."""
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def surface_sample(vertices: np.ndarray, faces: np.ndarray, count: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` area-weighted random points on triangles: points (count, 3) and nearest-corner vertex ids."""
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face = rng.choice(len(faces), size=count, p=area / area.sum())
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1.0  # fold the unit square onto the triangle
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    bary = np.stack([1.0 - u - v, u, v], axis=1)
    points = np.einsum('nk,nkd->nd', bary, tri[face])
    nearest = faces[face, np.argmax(bary, axis=1)]
    return points, nearest.astype(np.int64)


def _npz_frames(path: Path) -> int:
    """Frame count of an ``.npz`` sequence read from the array header only (no data loaded)."""
    with zipfile.ZipFile(path) as zf, zf.open('vertices.npy') as fh:
        major, _ = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read(fh)
    return int(shape[0])


def sequence_files(paths) -> list[Path]:
    """Expand files and folders into sequence paths: ``.npz``/``.txt`` files, and OBJ frame folders."""
    out: list[Path] = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p)
        if p.is_dir() and not any(p.glob('*.obj')):
            out.extend(sorted(q for q in p.rglob('*') if q.suffix in ('.npz', '.txt') and q.is_file()))
        else:
            out.append(p)
    return out


class SequenceDataset(Dataset):
    """Frames of sequence files as model inputs.

    Args:
        paths: sequence files (``.npz``, Key-Grid ``.txt``, OBJ frame folders) or folders of them.
        num_points: N points per frame.
        sampling: ``'fps'`` (vertex FPS, the released code) or ``'surface'``.
        augment: :class:`Augment` settings (``None``: none).
        max_frames: use only the first frames of each sequence (e.g. 65, like the released predictor).
        seed: base seed; item ``i`` uses ``(seed, epoch, i)``, so items are reproducible and
            :meth:`set_epoch` gives fresh augmentations per epoch.
        cache_size: sequences kept in memory (least recently used are dropped).
        keypoints: add ground-truth ``keypoints`` to items whose file has them (turn off to batch files
            with and without ground truth together).

    Items are dicts: ``points`` (N, 3) float32 normalised; ``indices`` (N,) int64 vertex ids;
    ``frame`` and ``sequence`` (index into :attr:`files`) ints; ``source`` the file path;
    ``offset``/``scale`` (the :class:`Normalization`: ``original = (points + 1) / scale + offset``,
    before SE(3)); ``rotation`` (3, 3) and ``translation`` (3,) float32 of the SE(3) augmentation
    (identity when off; ``augmented = original @ R^T + t``); and, when the file has ground truth,
    ``keypoints`` (M, 3) float32 transformed and normalised like the points. After
    :meth:`set_target_vertices`, also ``targets`` (K, 3) float32, those vertices of the frame transformed and
    normalised like the points, and ``targets_seen`` (K,) bool, False for a vertex a partial view hides.
    """

    def __init__(self, paths, num_points: int = 2048, sampling: str = 'fps', augment: Augment | None = None,
                 max_frames: int | None = None, seed: int = 0, cache_size: int = 8, load_kwargs: dict | None = None,
                 keypoints: bool = True):
        if sampling not in ('fps', 'surface'):
            raise ValueError(f"sampling must be 'fps' or 'surface', got {sampling!r}")
        self.files = sequence_files(paths)
        if not self.files:
            raise FileNotFoundError(f'no sequence files in {paths}')
        self.num_points = num_points
        self.sampling = sampling
        self.augment = augment or Augment()
        self.seed = seed
        self.epoch = 0
        self.cache_size = cache_size
        self.load_kwargs = load_kwargs or {}
        self.keypoints = keypoints
        self._cache: OrderedDict[int, Sequence] = OrderedDict()
        self.target_vertices: np.ndarray | None = None
        counts = []
        for i, f in enumerate(self.files):
            n = _npz_frames(f) if f.suffix == '.npz' else self.sequence(i).frames
            counts.append(min(n, max_frames) if max_frames else n)
        self.frame_counts = np.asarray(counts, dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(self.frame_counts)])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_target_vertices(self, vertices: np.ndarray | None) -> None:
        """(S, K) vertex ids per sequence (``keygrid_ros.train.tracked_targets``) to add to every item as
        ``targets``; ``None`` stops it."""
        if vertices is not None:
            vertices = np.asarray(vertices, dtype=np.int64)
            if vertices.ndim != 2 or len(vertices) != len(self.files):
                raise ValueError(f'target vertices must be (sequences={len(self.files)}, K), got {vertices.shape}')
        self.target_vertices = vertices

    def locate(self, index: int) -> tuple[int, int]:
        """Item index -> (sequence index, frame)."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        seq = int(np.searchsorted(self._starts, index, side='right') - 1)
        return seq, int(index - self._starts[seq])

    def sequence(self, i: int) -> Sequence:
        """Sequence ``i`` of :attr:`files`, loaded once and kept in a small LRU cache."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        path = self.files[i]
        seq = load_sequence(path, **(self.load_kwargs if path.suffix != '.npz' else {}))
        self._cache[i] = seq
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return seq

    def __getitem__(self, index: int) -> dict:
        seq_index, frame = self.locate(int(index))
        seq = self.sequence(seq_index)
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        verts = seq.vertices[frame].astype(np.float64)
        aug = self.augment
        candidates = np.arange(len(verts))
        faces = seq.faces
        if aug.partial:
            if faces is None:
                raise ValueError(f'{seq.source}: partial views need faces')
            seen = self._visible(verts, faces, rng)
            if seen.any():
                candidates = np.flatnonzero(seen)
                faces = faces[seen[faces].all(axis=1)]
        if self.sampling == 'surface' and faces is not None and len(faces):
            pool, pool_idx = surface_sample(verts, faces, 4 * self.num_points, rng)
        else:
            pool, pool_idx = verts[candidates], candidates
        order = fps(pool, self.num_points, rng)
        if aug.downsample:
            order = order[:aug.downsample]
        points, indices = pool[order], pool_idx[order]
        rot, shift, stretch = np.eye(3), np.zeros(3), np.ones(3)
        if aug.stretch:
            stretch = rng.uniform(1.0 - aug.stretch, 1.0 + aug.stretch, 3)
            points = points * stretch
        if aug.se3:
            rot = random_rotation(rng)
            shift = rng.uniform(-aug.se3_translation, aug.se3_translation, 3)
            points = points @ rot.T + shift
        norm = Normalization.fit(points)
        out_points = norm.apply(points)
        if aug.noise > 0:
            out_points = out_points + rng.normal(0.0, aug.noise, out_points.shape)
        item = {
            'points': torch.from_numpy(out_points.astype(np.float32)),
            'indices': torch.from_numpy(indices.astype(np.int64)),
            'frame': frame,
            'sequence': seq_index,
            'source': str(self.files[seq_index]),
            'offset': norm.offset,
            'scale': norm.scale,
            'rotation': torch.from_numpy(rot.astype(np.float32)),
            'translation': torch.from_numpy(shift.astype(np.float32)),
            'stretch': torch.from_numpy(stretch.astype(np.float32)),
        }
        if self.keypoints and seq.keypoints is not None:
            kp = (seq.keypoints[frame].astype(np.float64) * stretch) @ rot.T + shift
            item['keypoints'] = torch.from_numpy(norm.apply(kp).astype(np.float32))
        if self.target_vertices is not None:
            ids = self.target_vertices[seq_index]
            target = (verts[ids] * stretch) @ rot.T + shift
            item['targets'] = torch.from_numpy(norm.apply(target).astype(np.float32))
            seen_ids = np.zeros(len(verts), dtype=bool)
            seen_ids[candidates] = True
            item['targets_seen'] = torch.from_numpy(seen_ids[ids])
        return item

    def _visible(self, verts: np.ndarray, faces: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from keygrid_ros.data.camera import DepthCamera, Intrinsics, look_at, visible_vertices

        aug = self.augment
        centre = verts.mean(axis=0)
        elev = math.radians(rng.uniform(*aug.partial_elevation_deg))
        azim = rng.uniform(0.0, 2 * math.pi)
        d = aug.partial_distance
        eye = centre + d * np.array([math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim),
                                     math.sin(elev)])
        camera = DepthCamera(Intrinsics().scaled(0.25), look_at(eye, centre), table_size=None)
        return visible_vertices(verts, faces, camera)
