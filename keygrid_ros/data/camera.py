"""A virtual depth camera: a vectorised numpy z-buffer rasteriser over the garment mesh and the table.

Rasterising triangles into pixels (every triangle enumerates the pixel centres in its bounding box,
keeps the ones inside, and the nearest fragment per pixel wins) is exact for a pinhole camera and,
for ~4k small triangles plus a table, much faster in numpy than casting 300k rays. Depth is
interpolated perspective-correctly (1/z is linear in screen space), so a plane renders at exactly
its depth.

Frames and conventions (REP 103/105): the table frame has z up with the table top at z = 0; the camera
pose is the pose of the *optical* frame (x right, y down, z forward) in the table frame. Depth images
hold z along the optical axis in metres, NaN where there is no return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math

import numpy as np


@dataclass
class Fragments:
    """Triangle/pixel overlaps: flat ``pixel`` index (N,), ``face`` (N,), barycentrics (N, 3), ``depth`` (N,)."""

    pixel: np.ndarray
    face: np.ndarray
    bary: np.ndarray
    depth: np.ndarray | None


def rasterize(screen: np.ndarray, depth: np.ndarray | None, shape: tuple[int, int]) -> Fragments:
    """Every (pixel centre, triangle) overlap of triangles ``screen`` (F, 3, 2) in pixel units.

    Pixel (row r, column c) has its centre at screen point (x=c, y=r). ``depth`` (F, 3) holds each
    corner's positive depth for perspective-correct interpolation (or ``None``). Degenerate
    triangles are skipped.
    """
    h, w = shape
    lo = np.ceil(screen.min(axis=1)).astype(np.int64)
    hi = np.floor(screen.max(axis=1)).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [w - 1, h - 1])
    a, b, c = screen[:, 0], screen[:, 1], screen[:, 2]
    area = _cross(b - a, c - a)
    bw = hi[:, 0] - lo[:, 0] + 1
    bh = hi[:, 1] - lo[:, 1] + 1
    keep = (bw > 0) & (bh > 0) & (np.abs(area) > 1e-12)
    count = np.where(keep, bw * bh, 0)
    total = int(count.sum())
    face = np.repeat(np.arange(len(screen)), count)
    local = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    px = lo[face, 0] + local % bw[face]
    py = lo[face, 1] + local // bw[face]
    p = np.stack([px, py], axis=1).astype(screen.dtype)
    fa, fb, fc, far = a[face], b[face], c[face], area[face]
    l0 = _cross(fc - fb, p - fb) / far
    l1 = _cross(fa - fc, p - fc) / far
    l2 = 1.0 - l0 - l1
    inside = (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9)
    face, px, py = face[inside], px[inside], py[inside]
    bary = np.stack([l0[inside], l1[inside], l2[inside]], axis=1)
    z = None
    if depth is not None:
        z = 1.0 / np.einsum('nk,nk->n', bary, 1.0 / depth[face])
    return Fragments(py * w + px, face, bary, z)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def zbuffer(frag: Fragments, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Nearest fragment per pixel: depth image (H, W) float64 (NaN = empty) and face ids (H, W) (-1 = empty)."""
    depth = np.full(shape[0] * shape[1], np.nan)
    face = np.full(shape[0] * shape[1], -1, dtype=np.int64)
    if len(frag.pixel):
        order = np.lexsort((frag.depth, frag.pixel))
        pix = frag.pixel[order]
        first = np.ones(len(pix), dtype=bool)
        first[1:] = pix[1:] != pix[:-1]
        depth[pix[first]] = frag.depth[order][first]
        face[pix[first]] = frag.face[order][first]
    return depth.reshape(shape), face.reshape(shape)


@dataclass
class Intrinsics:
    """Pinhole intrinsics. Defaults: a RealSense D435 colour-aligned stream at 640x480."""

    width: int = 640
    height: int = 480
    fx: float = 615.0
    fy: float = 615.0
    cx: float = 319.5
    cy: float = 239.5

    @property
    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def scaled(self, factor: float) -> Intrinsics:
        """The same field of view at ``factor`` times the resolution (cheap visibility renders)."""
        w, h = max(1, round(self.width * factor)), max(1, round(self.height * factor))
        sx, sy = w / self.width, h / self.height
        return Intrinsics(w, h, self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5)


@dataclass
class DepthNoise:
    """Depth noise of a stereo camera: sigma(z) = ``sigma0 + k z^2`` (metres), plus lost pixels.

    ``dropout`` is the chance that a valid pixel is lost at random; surfaces seen at more than
    ``grazing_deg`` from their normal and depths outside [``min_depth``, ``max_depth``] give no return.
    """

    sigma0: float = 0.0005
    k: float = 0.0015
    dropout: float = 0.002
    grazing_deg: float = 80.0
    min_depth: float = 0.2
    max_depth: float = 3.0

    @classmethod
    def none(cls) -> DepthNoise:
        return cls(0.0, 0.0, 0.0, 90.0, 0.0, math.inf)


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """4x4 pose of a camera *optical* frame at ``eye`` looking at ``target`` (x right, y down, z forward)."""
    eye, target, up = (np.asarray(v, dtype=float) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    if abs(np.dot(z, up)) > 0.999:  # looking straight along ``up``: any image "up" will do
        up = np.array([0.0, 1.0, 0.0])
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], axis=1)
    pose[:3, 3] = eye
    return pose


def default_pose() -> np.ndarray:
    """A camera 0.85 m above the table, 0.35 m back, looking down at the table centre."""
    return look_at((0.0, -0.35, 0.85), (0.0, 0.0, 0.0))


@dataclass
class DepthCamera:
    """Renders depth images and organised clouds of a mesh on a table.

    ``pose`` is the 4x4 pose of the optical frame in the table frame; ``table_size`` the table's
    (x, y) extent in metres, centred on the table origin (``None``: no table).
    """

    intrinsics: Intrinsics = field(default_factory=Intrinsics)
    pose: np.ndarray = field(default_factory=default_pose)
    noise: DepthNoise = field(default_factory=DepthNoise)
    table_size: tuple[float, float] | None = (1.4, 1.0)

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """Table-frame points (..., 3) -> optical-frame points."""
        rot, eye = self.pose[:3, :3], self.pose[:3, 3]
        return (points - eye) @ rot

    def project(self, cam: np.ndarray) -> np.ndarray:
        """Optical-frame points (..., 3) -> pixel coordinates (..., 2) (x = column, y = row)."""
        k = self.intrinsics
        z = cam[..., 2]
        return np.stack([k.fx * cam[..., 0] / z + k.cx, k.fy * cam[..., 1] / z + k.cy], axis=-1)

    def table_depth(self) -> np.ndarray:
        """Depth (H, W) of the table rectangle (z = 0, ``table_size`` centred on the origin), NaN off it.

        Ray-plane intersection per pixel: cheaper than rasterising two image-sized triangles.
        """
        h, w = self.intrinsics.shape
        if not self.table_size:
            return np.full((h, w), np.nan)
        rot, eye = self.pose[:3, :3], self.pose[:3, 3]
        rays = self.pixel_rays()  # unit rays, optical frame
        direction = rays @ rot.T  # table frame
        with np.errstate(divide='ignore', invalid='ignore'):
            t = -eye[2] / direction[..., 2]
        hit = eye + t[..., None] * direction
        sx, sy = self.table_size[0] / 2, self.table_size[1] / 2
        ok = (t > 0) & (np.abs(hit[..., 0]) <= sx) & (np.abs(hit[..., 1]) <= sy)
        return np.where(ok, t * rays[..., 2], np.nan)

    def render(self, vertices: np.ndarray, faces: np.ndarray, rng: np.random.Generator | None = None,
               table: bool = True, noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Depth image (H, W) float32 (NaN = no return) and the face hit per pixel (H, W) int64 (-1 = none).

        The face id ``len(faces)`` is the table. ``noise=False`` gives the exact depth.
        """
        verts = np.asarray(vertices, dtype=np.float64)
        tris = np.asarray(faces)
        cam = self.to_camera(verts)
        near = 1e-3
        front = (cam[tris][..., 2] > near).all(axis=1)  # garments never straddle the camera: drop such triangles
        ids = np.flatnonzero(front)
        tri_cam = cam[tris[ids]]
        frag = rasterize(self.project(tri_cam), tri_cam[..., 2], self.intrinsics.shape)
        frag.face = ids[frag.face]
        depth, face = zbuffer(frag, self.intrinsics.shape)
        if table and self.table_size:
            floor = self.table_depth()
            nearer = np.isfinite(floor) & ~(depth <= floor)  # NaN garment depth compares False: table wins
            depth = np.where(nearer, floor, depth)
            face = np.where(nearer, len(tris), face)
        if noise:
            depth = self._degrade(depth, face, cam, tris, rng or np.random.default_rng())
        return depth.astype(np.float32), face

    def _degrade(self, depth, face, cam, tris, rng) -> np.ndarray:
        n = self.noise
        valid = np.isfinite(depth)
        # Grazing angles: compare the hit face's normal with the viewing ray through the pixel.
        tri = cam[tris]
        normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-30
        table_normal = self.pose[:3, :3].T @ np.array([0.0, 0.0, 1.0])  # the table's normal, optical frame
        normal = np.concatenate([normal, table_normal[None]])
        rays = self.pixel_rays()
        hit = np.where(valid, face, 0)
        cos = np.abs(np.einsum('hwk,hwk->hw', normal[hit], rays))
        lost = valid & (cos < math.cos(math.radians(n.grazing_deg)))
        lost |= valid & (rng.random(depth.shape) < n.dropout)
        sigma = n.sigma0 + n.k * np.nan_to_num(depth) ** 2
        noisy = depth + rng.standard_normal(depth.shape) * sigma
        noisy[lost | (noisy < n.min_depth) | (noisy > n.max_depth)] = np.nan
        return noisy

    def pixel_rays(self) -> np.ndarray:
        """(H, W, 3) unit viewing rays through the pixel centres, in the optical frame (cached per intrinsics)."""
        k = self.intrinsics
        key = (k.width, k.height, k.fx, k.fy, k.cx, k.cy)
        cached = self.__dict__.get('_rays')
        if cached is None or cached[0] != key:
            v, u = np.mgrid[0:k.height, 0:k.width]
            ray = np.stack([(u - k.cx) / k.fx, (v - k.cy) / k.fy, np.ones(u.shape)], axis=-1)
            cached = (key, ray / np.linalg.norm(ray, axis=-1, keepdims=True))
            self.__dict__['_rays'] = cached
        return cached[1]

    def depth_to_points(self, depth: np.ndarray) -> np.ndarray:
        """Depth image (H, W) -> organised optical-frame points (H, W, 3) float32 (NaN stays NaN)."""
        k = self.intrinsics
        v, u = np.mgrid[0:depth.shape[0], 0:depth.shape[1]]
        z = depth.astype(np.float32)
        return np.stack([(u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z], axis=-1).astype(np.float32)

    def render_points(self, vertices: np.ndarray, faces: np.ndarray, rng: np.random.Generator | None = None,
                      table: bool = True, noise: bool = True) -> np.ndarray:
        """Organised cloud (H, W, 3) float32 in the optical frame, NaN for no return."""
        depth, _ = self.render(vertices, faces, rng, table, noise)
        return self.depth_to_points(depth)


def visible_vertices(vertices: np.ndarray, faces: np.ndarray, camera: DepthCamera,
                     tolerance: float = 0.004) -> np.ndarray:
    """(V,) bool: vertices a camera sees (in its image and not hidden behind the mesh by more than ``tolerance``).

    The mesh is rendered without table or noise; a vertex is visible when the depth at its pixel is
    not much nearer than the vertex itself.
    """
    depth, _ = camera.render(vertices, faces, table=False, noise=False)
    cam = camera.to_camera(vertices)
    px = np.rint(camera.project(cam)).astype(np.int64)
    h, w = depth.shape
    inside = (cam[:, 2] > 0) & (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
    seen = np.zeros(len(vertices), dtype=bool)
    idx = np.flatnonzero(inside)
    d = depth[px[idx, 1], px[idx, 0]]
    seen[idx] = np.isfinite(d) & (cam[idx, 2] <= d + tolerance)
    return seen
