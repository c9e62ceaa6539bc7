"""Virtual depth camera: exact depth of planes, silhouettes, the noise model, and render -> bag -> read back."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from keygrid_ros.data.camera import DepthCamera, DepthNoise, Intrinsics, look_at, rasterize, visible_vertices, zbuffer
from keygrid_ros.data.garments import make_garment
from keygrid_ros.data.sequences import Sequence, save_sequence


def _down(height: float, **kw) -> DepthCamera:
    """A camera ``height`` above the origin looking straight down, no noise."""
    return DepthCamera(pose=look_at((0, 0, height), (0, 0, 0)), noise=DepthNoise.none(), **kw)


def _quad(z: float, half: float) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    return v, np.array([[0, 1, 2], [0, 2, 3]])


def _box(size: float) -> tuple[np.ndarray, np.ndarray]:
    s = size / 2
    v = np.array([[x, y, z] for z in (0, size) for y in (-s, s) for x in (-s, s)], float)
    f = [[0, 2, 1], [1, 2, 3], [4, 5, 6], [5, 7, 6], [0, 1, 4], [1, 5, 4], [2, 6, 3], [3, 6, 7], [0, 4, 2],
         [2, 4, 6], [1, 3, 5], [3, 7, 5]]
    return v, np.array(f)


def test_look_at_gives_an_optical_frame():
    pose = look_at((0, -0.35, 0.85), (0, 0, 0))
    rot = pose[:3, :3]
    assert np.allclose(rot.T @ rot, np.eye(3)) and np.linalg.det(rot) == pytest.approx(1.0)
    z = rot[:, 2]
    assert np.allclose(z, -pose[:3, 3] / np.linalg.norm(pose[:3, 3]))  # z forward, at the target
    assert rot[0, 0] == pytest.approx(1.0)  # image x is world x (right)
    assert rot[2, 1] < 0  # image y (down) points down-ish in the world


def test_plane_renders_at_its_depth():
    cam = _down(1.0, table_size=None)
    v, f = _quad(0.3, 2.0)
    depth, face = cam.render(v, f, noise=False)
    assert depth.shape == (480, 640) and depth.dtype == np.float32
    assert np.isfinite(depth).all() and np.allclose(depth, 0.7, atol=1e-6)
    assert set(np.unique(face)) == {0, 1}
    # The table alone, 0.8 m below the camera; off its edges there is no return.
    table = _down(0.8, table_size=(0.5, 0.5))
    depth, face = table.render(np.zeros((0, 3)), np.zeros((0, 3), int), noise=False)
    hit = np.isfinite(depth)
    assert np.allclose(depth[hit], 0.8, atol=1e-6) and (face[hit] == 0).all()
    side = 0.5 * 615.0 / 0.8  # the table spans this many pixels
    assert hit.sum() == pytest.approx(side ** 2, rel=0.02)
    # A tilted view of a plane: depth is exact at every pixel (perspective-correct interpolation).
    tilted = DepthCamera(pose=look_at((0.3, -0.5, 0.9), (0, 0, 0)), noise=DepthNoise.none(), table_size=None)
    v = np.array([[-1.5, -0.8, 0.0], [1.5, -0.8, 0.0], [1.5, 2.5, 0.0], [-1.5, 2.5, 0.0]])  # all in front
    depth, _ = tilted.render(v, np.array([[0, 1, 2], [0, 2, 3]]), noise=False)
    assert np.isfinite(depth).all()
    pts = tilted.depth_to_points(depth).reshape(-1, 3).astype(np.float64)
    world = pts @ tilted.pose[:3, :3].T + tilted.pose[:3, 3]
    assert np.abs(world[:, 2]).max() < 1e-5


def test_box_silhouette_and_occlusion():
    cam = _down(1.0)
    v, f = _box(0.2)
    depth, face = cam.render(v, f, noise=False)
    top = depth < 0.9
    side = 0.2 * 615.0 / 0.8  # the top face, 0.8 m from the camera, hides the sides
    assert top.sum() == pytest.approx(side ** 2, rel=0.02)
    assert np.allclose(depth[top], 0.8, atol=1e-6)
    rows, cols = np.nonzero(top)
    assert rows.mean() == pytest.approx(239.5, abs=0.5) and cols.mean() == pytest.approx(319.5, abs=0.5)
    assert np.allclose(depth[~top & np.isfinite(depth)], 1.0, atol=1e-6)  # the table around it
    assert (face[top] < len(f)).all() and (face[~top] == len(f)).all()


def test_rasterizer_counts_each_pixel_of_a_shared_edge_once_per_zbuffer():
    screen = np.array([[[0.2, 0.2], [9.8, 0.2], [9.8, 9.8]], [[0.2, 0.2], [9.8, 9.8], [0.2, 9.8]]])
    frag = rasterize(screen, np.ones((2, 3)), (12, 12))
    depth, face = zbuffer(frag, (12, 12))
    assert np.isfinite(depth).sum() == 81  # pixel centres 1..9 in both directions
    assert (face[1:10, 1:10] >= 0).all()


def test_depth_noise_grows_with_depth_and_drops_pixels():
    noise = DepthNoise(sigma0=0.0005, k=0.0015, dropout=0.01)
    errors = {}
    for z in (0.6, 1.5):
        cam = DepthCamera(pose=look_at((0, 0, z), (0, 0, 0)), noise=noise, table_size=(10.0, 10.0))
        depth, _ = cam.render(np.zeros((0, 3)), np.zeros((0, 3), int), np.random.default_rng(1))
        err = depth[np.isfinite(depth)] - z
        errors[z] = err.std()
        assert errors[z] == pytest.approx(0.0005 + 0.0015 * z * z, rel=0.05)
        assert np.isnan(depth).mean() == pytest.approx(0.01, abs=0.003)
    assert errors[1.5] > 3 * errors[0.6]


def test_points_and_visibility():
    g = make_garment('tshirt', seed=1, layers=2)
    verts = g.vertices + [0, 0, 0.01]
    cam = DepthCamera()
    cloud = cam.render_points(verts, g.faces, np.random.default_rng(0))
    assert cloud.shape == (480, 640, 3) and cloud.dtype == np.float32
    z = cloud[..., 2]
    assert 0.9 < np.isfinite(z).mean() <= 1.0
    seen = visible_vertices(verts, g.faces, DepthCamera(Intrinsics().scaled(0.5), look_at((0, 0, 1.2), (0, 0, 0))))
    assert seen[g.layer == 0].mean() > 0.95 and seen[g.layer == 1].sum() == 0


def test_render_cli_writes_a_bag_that_reads_back(tmp_path):
    from keygrid_ros.cli import main
    from keygrid_ros.perception.cloud_io import iter_bag_messages
    from keygrid_ros.perception.pointcloud2 import read_xyz

    g = make_garment('towel', seed=0)
    verts = np.stack([g.vertices + [0, 0, 0.005], g.vertices + [0.05, 0, 0.005]]).astype(np.float32)
    seq = save_sequence(tmp_path / 'towel.npz', Sequence(verts, g.faces, 'towel', 'drag'))
    bag = tmp_path / 'bag'
    rc = main(['render', '--sequence', str(seq), '--out', str(bag), '--size', '160', '120', '--focal', '154',
               '--no-noise'])
    assert rc == 0
    msgs = list(iter_bag_messages(bag))
    topics = [m[0] for m in msgs]
    assert topics == ['/tf_static', '/camera/depth/color/points', '/camera/depth/color/points']
    tf = msgs[0][2].transforms[0]
    assert tf.header.frame_id == 'table' and tf.child_frame_id == 'camera_depth_optical_frame'
    t = tf.transform
    rot = Rotation.from_quat([t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w]).as_matrix()
    eye = np.array([t.translation.x, t.translation.y, t.translation.z])
    clouds = [m[2] for m in msgs[1:]]
    assert clouds[0].height == 120 and clouds[0].width == 160 and clouds[0].header.frame_id == tf.child_frame_id
    assert msgs[2][3] - msgs[1][3] == pytest.approx(1e9 / 30, abs=1)
    pts = read_xyz(clouds[0], organized=True, copy=True)
    assert pts.shape == (120, 160, 3) and bool(clouds[0].is_dense) == bool(np.isfinite(pts).all())
    table_pts = pts[np.isfinite(pts[..., 2])].astype(np.float64) @ rot.T + eye  # into the table frame
    # Everything seen is the towel (5 mm up) or the table (0): REP 103 z up, nothing below the table.
    assert table_pts[:, 2].min() > -1e-4 and table_pts[:, 2].max() < 0.006
    on_towel = table_pts[:, 2] > 0.0025
    assert on_towel.mean() > 0.2
    lo, hi = g.vertices[:, :2].min(axis=0), g.vertices[:, :2].max(axis=0)
    assert (table_pts[on_towel, :2] >= lo - 0.01).all() and (table_pts[on_towel, :2] <= hi + 0.01).all()
