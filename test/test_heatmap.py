"""The grid heatmap against a direct numpy evaluation of Key-Grid Eq. 3-5."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from keygrid_ros.model.heatmap import GridHeatmap, make_grid


def numpy_heatmap(grid: np.ndarray, keypoints: np.ndarray, strengths: np.ndarray, sigma2: float) -> np.ndarray:
    """max over segments (i < j, row-major) of s_ij * exp(-d_ij^2 / sigma^2), d from Eq. 3-4 case by case."""
    K = len(keypoints)
    heat = np.zeros(len(grid))
    for g, p in enumerate(grid):
        values = []
        s = 0
        for i in range(K):
            for j in range(i + 1, K):
                a, b = keypoints[i], keypoints[j]
                t = (p - a) @ (b - a) / ((b - a) @ (b - a) + 1e-8)
                if t <= 0:
                    d2 = ((p - a) ** 2).sum()
                elif t >= 1:
                    d2 = ((p - b) ** 2).sum()
                else:
                    d2 = ((p - (a + t * (b - a))) ** 2).sum()
                values.append(strengths[s] * np.exp(-d2 / sigma2))
                s += 1
        heat[g] = max(values)
    return heat


def test_grid_layout_is_meshgrid_ij():
    grid = make_grid((16, 16, 8)).numpy()
    assert grid.shape == (2048, 3)
    xs, ys, zs = np.linspace(-1, 1, 16), np.linspace(-1, 1, 16), np.linspace(-1, 1, 8)
    ref = np.stack(np.meshgrid(xs, ys, zs, indexing='ij'), -1).reshape(-1, 3)
    np.testing.assert_allclose(grid, ref, atol=1e-6)


@pytest.mark.parametrize('resolution,sigma2', [((16, 16, 8), 0.0025), ((6, 5, 4), 0.05)])
def test_heatmap_matches_equations(rng, resolution, sigma2):
    K = 5
    keypoints = rng.uniform(-0.9, 0.9, size=(2, K, 3))
    keypoints[1, 3] = keypoints[1, 1]  # coincident keypoints: a degenerate segment (1, 3)
    strengths = rng.uniform(0.05, 1, size=(2, K * (K - 1) // 2))
    module = GridHeatmap(K, resolution, sigma2).double()
    heat = module(torch.from_numpy(keypoints), torch.from_numpy(strengths)).numpy()
    assert heat.shape == (2, int(np.prod(resolution)))
    grid = module.grid.numpy()
    if len(grid) > 300:  # keep the pure-python reference quick: check a random subset of grid points
        grid_idx = rng.choice(len(grid), 300, replace=False)
    else:
        grid_idx = np.arange(len(grid))
    for b in range(2):
        ref = numpy_heatmap(grid[grid_idx], keypoints[b], strengths[b], sigma2)
        np.testing.assert_allclose(heat[b, grid_idx], ref, rtol=1e-9, atol=1e-12)


def test_heatmap_all_keypoints_coincident_is_a_blob():
    """Every segment degenerate: the map is the strongest strength times a Gaussian around the point."""
    module = GridHeatmap(3, (9, 9, 9), 0.1).double()
    keypoints = torch.zeros(1, 3, 3, dtype=torch.float64)
    strengths = torch.tensor([[0.2, 0.7, 0.5]], dtype=torch.float64)
    heat = module(keypoints, strengths)[0]
    ref = 0.7 * torch.exp(-(module.grid ** 2).sum(-1) / 0.1)
    torch.testing.assert_close(heat, ref)
    assert torch.isfinite(heat).all()


def test_heatmap_gradients_are_finite_for_coincident_keypoints():
    module = GridHeatmap(4, (8, 8, 4), 0.0025)
    keypoints = torch.zeros(1, 4, 3)
    keypoints[0, 2] = 0.3
    keypoints.requires_grad_()
    strengths = torch.full((1, 6), 0.5, requires_grad=True)
    module(keypoints, strengths).sum().backward()
    assert torch.isfinite(keypoints.grad).all() and torch.isfinite(strengths.grad).all()


def test_heatmap_is_high_on_a_strong_segment_and_low_far_away():
    module = GridHeatmap(2, (16, 16, 8), 0.0025)
    keypoints = torch.tensor([[[-1.0, -1.0, -1.0], [1.0, -1.0, -1.0]]])  # a cube edge: through 16 grid points
    heat = module(keypoints, torch.tensor([[0.9]]))[0]
    on_edge = (module.grid[:, 1] == -1) & (module.grid[:, 2] == -1)
    assert on_edge.sum() == 16
    torch.testing.assert_close(heat[on_edge], torch.full((16,), 0.9))
    assert heat.min() < 1e-6


@pytest.mark.parametrize('resolution', [(16, 16, 8), (16, 16, 16), (3, 7, 5)])
def test_nearest_index_matches_brute_force(rng, resolution):
    module = GridHeatmap(2, resolution)
    points = torch.from_numpy(rng.uniform(-1.3, 1.3, size=(2, 500, 3))).float()  # some outside the cube
    got = module.nearest_index(points)
    d = ((points.unsqueeze(2) - module.grid.view(1, 1, -1, 3)) ** 2).sum(-1)
    assert torch.equal(got, d.argmin(-1))


def test_lookup_returns_heat_and_grid_xyz(rng):
    module = GridHeatmap(2, (4, 4, 4))
    heat = torch.arange(64.0).unsqueeze(0)
    points = module.grid[[5, 17, 63]].unsqueeze(0) + 0.01
    feats = module.lookup(points, heat)
    assert feats.shape == (1, 3, 4)
    assert feats[0, :, 0].tolist() == [5.0, 17.0, 63.0]
    torch.testing.assert_close(feats[0, :, 1:], module.grid[[5, 17, 63]])
