"""Every op in keygrid_ros.ops against a brute-force numpy reference on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from keygrid_ros import ops


def brute_sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def brute_fps(xyz: np.ndarray, npoint: int, start: int) -> np.ndarray:
    chosen = [start]
    nearest = ((xyz - xyz[start]) ** 2).sum(-1)
    for _ in range(npoint - 1):
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, ((xyz - xyz[nxt]) ** 2).sum(-1))
    return np.array(chosen)


def cloud(rng: np.random.Generator, *shape: int) -> torch.Tensor:
    return torch.from_numpy(rng.uniform(-1, 1, size=(*shape, 3))).float()


def test_square_distance_matches_brute_force(rng):
    a, b = cloud(rng, 2, 50), cloud(rng, 2, 70)
    got = ops.square_distance(a, b).numpy()
    for i in range(2):
        np.testing.assert_allclose(got[i], brute_sqdist(a[i].double().numpy(), b[i].double().numpy()), atol=1e-5)
    assert (got >= 0).all()


def test_square_distance_stays_float32_under_bf16_autocast(rng):
    a = cloud(rng, 1, 64)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        d = ops.square_distance(a, a)
    assert d.dtype == torch.float32
    assert d.diagonal(dim1=1, dim2=2).max() < 1e-5  # a point's distance to itself stays ~0


def test_index_points(rng):
    pts = torch.from_numpy(rng.normal(size=(2, 30, 5))).float()
    idx = torch.from_numpy(rng.integers(0, 30, size=(2, 4, 6)))
    got = ops.index_points(pts, idx)
    assert got.shape == (2, 4, 6, 5)
    for b in range(2):
        np.testing.assert_array_equal(got[b].numpy(), pts[b].numpy()[idx[b].numpy()])


@pytest.mark.parametrize('start', [0, 7])
def test_fps_given_start_matches_brute_force(rng, start):
    xyz = cloud(rng, 3, 300)
    points, idx = ops.farthest_point_sample(xyz.double(), 40, start=start)
    assert idx.shape == (3, 40) and points.shape == (3, 40, 3)
    for b in range(3):
        ref = brute_fps(xyz[b].double().numpy(), 40, start)
        np.testing.assert_array_equal(idx[b].numpy(), ref)
        np.testing.assert_allclose(points[b].numpy(), xyz[b].double().numpy()[ref])


def test_fps_per_cloud_and_random_start(rng):
    xyz = cloud(rng, 2, 100)
    _, idx = ops.farthest_point_sample(xyz, 10, start=torch.tensor([3, 5]))
    assert idx[:, 0].tolist() == [3, 5]
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    _, a = ops.farthest_point_sample(xyz, 10, generator=g1)
    _, b = ops.farthest_point_sample(xyz, 10, generator=g2)
    assert torch.equal(a, b)  # seeded: reproducible
    for cloud_idx in range(2):  # a random start is still an exact FPS from that start
        ref = brute_fps(xyz[cloud_idx].double().numpy(), 10, int(a[cloud_idx, 0]))
        np.testing.assert_array_equal(a[cloud_idx].numpy(), ref)


def test_fps_prefix_property(rng):
    """FPS of an FPS-ordered cloud, started at 0, is the identity: every hierarchy level is a prefix."""
    xyz = cloud(rng, 2, 512)
    _, order = ops.farthest_point_sample(xyz, 512, start=0)
    assert sorted(order[0].tolist()) == list(range(512))  # a full ordering is a permutation
    ordered = ops.index_points(xyz, order)
    for npoint in (256, 64, 16):
        _, idx = ops.farthest_point_sample(ordered, npoint, start=0)
        assert torch.equal(idx, torch.arange(npoint).expand(2, -1))


def test_fps_more_points_than_cloud_repeats_index_zero():
    xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]])
    _, idx = ops.farthest_point_sample(xyz, 5, start=1)
    assert idx.tolist() == [[1, 2, 0, 0, 0]]


def brute_ball_query(xyz: np.ndarray, centroids: np.ndarray, radius: float, nsample: int) -> np.ndarray:
    out = np.zeros((len(centroids), nsample), dtype=np.int64)
    for s, c in enumerate(centroids):
        inside = np.nonzero(((xyz - c) ** 2).sum(-1) <= radius * radius)[0][:nsample]
        out[s] = np.concatenate([inside, np.full(nsample - len(inside), inside[0])])
    return out


@pytest.mark.parametrize('radius,nsample', [(0.2, 8), (0.5, 16), (3.5, 4)])
def test_ball_query_released_semantics(rng, radius, nsample):
    """Smallest indices inside the radius (not the nearest), padded with the first."""
    xyz = cloud(rng, 2, 200)
    centroids = xyz[:, :30]
    got = ops.ball_query(radius, nsample, xyz, centroids)
    for b in range(2):
        ref = brute_ball_query(xyz[b].double().numpy(), centroids[b].double().numpy(), radius, nsample)
        np.testing.assert_array_equal(got[b].numpy(), ref)


def test_ball_query_fewer_points_than_nsample(rng):
    xyz = cloud(rng, 1, 5)
    got = ops.ball_query(10.0, 8, xyz, xyz[:, :2])
    assert got[0, 0].tolist() == [0, 1, 2, 3, 4, 0, 0, 0]


def test_knn_query_matches_brute_force(rng):
    xyz = cloud(rng, 2, 100)
    centroids = cloud(rng, 2, 10)
    got = ops.knn_query(6, xyz, centroids)
    for b in range(2):
        ref = np.argsort(brute_sqdist(centroids[b].double().numpy(), xyz[b].double().numpy()), axis=1)[:, :6]
        np.testing.assert_array_equal(got[b].numpy(), ref)


@pytest.mark.parametrize('num_source', [1, 2, 40])
def test_three_interpolate_matches_brute_force(rng, num_source):
    target, source = cloud(rng, 2, 25), cloud(rng, 2, num_source)
    feats = torch.from_numpy(rng.normal(size=(2, num_source, 4))).float()
    got = ops.three_interpolate(target, source, feats).numpy()
    for b in range(2):
        d = brute_sqdist(target[b].double().numpy(), source[b].double().numpy())
        k = min(3, num_source)
        nn_idx = np.argsort(d, axis=1)[:, :k]
        w = 1.0 / (np.take_along_axis(d, nn_idx, 1) + 1e-8)
        w /= w.sum(1, keepdims=True)
        ref = (feats[b].double().numpy()[nn_idx] * w[..., None]).sum(1)
        np.testing.assert_allclose(got[b], ref, rtol=1e-4, atol=1e-5)


def test_three_interpolate_reproduces_source_points(rng):
    source = cloud(rng, 1, 20)
    feats = torch.from_numpy(rng.normal(size=(1, 20, 3))).float()
    np.testing.assert_allclose(ops.three_interpolate(source, source, feats).numpy(), feats.numpy(), atol=1e-4)


def test_chamfer_matches_brute_force_and_full_matrix_gradient(rng):
    x = cloud(rng, 3, 40).double().requires_grad_()
    y = cloud(rng, 3, 55).double()
    loss = ops.chamfer_distance(x, y)
    refs = []
    for b in range(3):
        d = brute_sqdist(x[b].detach().numpy(), y[b].numpy())
        refs.append(d.min(1).mean() + d.min(0).mean())
    np.testing.assert_allclose(loss.item(), np.mean(refs), rtol=1e-10)
    np.testing.assert_allclose(ops.chamfer_distance(x, y, reduction='none').detach().numpy(), refs, rtol=1e-10)
    # Gradient: the same as autograd through the full distance matrix.
    (grad,) = torch.autograd.grad(loss, x)
    x2 = x.detach().clone().requires_grad_()
    d = ((x2.unsqueeze(2) - y.unsqueeze(1)) ** 2).sum(-1)
    full = (d.min(2).values.mean(1) + d.min(1).values.mean(1)).mean()
    (grad_full,) = torch.autograd.grad(full, x2)
    np.testing.assert_allclose(grad.numpy(), grad_full.numpy(), atol=1e-12)
    with pytest.raises(ValueError):
        ops.chamfer_distance(x, y, reduction='sum')


def test_quaternion_to_matrix_matches_numpy(rng):
    q = rng.normal(size=(10, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    got = ops.quaternion_to_matrix(torch.from_numpy(q)).numpy()
    for qi, R in zip(q, got):
        w, v = qi[0], qi[1:]
        vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
        ref = np.eye(3) + 2 * w * vx + 2 * vx @ vx  # Euler-Rodrigues
        np.testing.assert_allclose(R, ref, atol=1e-12)


def test_random_rotations_are_uniform_rotations():
    R = ops.random_rotations(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert R.shape == (4000, 3, 3) and R.dtype == torch.float64
    np.testing.assert_allclose((R @ R.transpose(1, 2)).numpy(), np.broadcast_to(np.eye(3), (4000, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(torch.linalg.det(R).numpy(), 1.0, atol=1e-12)
    # Haar measure: E[R] = 0 and E[R_ij^2] = 1/3 for every entry.
    assert R.mean(0).abs().max() < 0.05
    np.testing.assert_allclose((R ** 2).mean(0).numpy(), 1 / 3, atol=0.03)
    again = ops.random_rotations(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(R, again)


def brute_segment_sqdist(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Key-Grid Eq. 3-4 written out case by case."""
    out = np.zeros((len(p), len(a)))
    for i, point in enumerate(p):
        for s, (start, end) in enumerate(zip(a, b)):
            t = (point - start) @ (end - start) / ((end - start) @ (end - start) + 1e-8)
            if t <= 0:
                out[i, s] = ((point - start) ** 2).sum()
            elif t >= 1:
                out[i, s] = ((point - end) ** 2).sum()
            else:
                out[i, s] = ((point - (start + t * (end - start))) ** 2).sum()
    return out


def test_point_segment_sqdist_matches_eq3_4_including_degenerate(rng):
    p = cloud(rng, 1, 60).double()
    a = cloud(rng, 1, 6).double()
    b = cloud(rng, 1, 6).double()
    b[0, 2] = a[0, 2]  # a degenerate segment: coincident endpoints
    got = ops.point_segment_sqdist(p, a, b)[0].numpy()
    np.testing.assert_allclose(got, brute_segment_sqdist(p[0].numpy(), a[0].numpy(), b[0].numpy()), atol=1e-12)
    np.testing.assert_allclose(got[:, 2], ((p[0] - a[0, 2]) ** 2).sum(-1).numpy(), atol=1e-12)
