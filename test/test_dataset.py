"""The frame Dataset: FPS-ordered sampling with vertex ids, Key-Grid normalisation, augmentations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist
import torch

from keygrid_ros.data.dataset import Augment, SequenceDataset, random_rotation
from keygrid_ros.data.garments import make_garment
from keygrid_ros.data.sequences import Sequence, save_sequence
from keygrid_ros.normalize import Normalization


@pytest.fixture(scope='module')
def seq_file(tmp_path_factory):
    """A 3-frame two-layer T-shirt: flat, lifted and turned, then bent up at one side."""
    g = make_garment('tshirt', seed=2, layers=2)
    v0 = g.vertices.copy()
    v1 = v0 @ random_rotation(np.random.default_rng(0)).T + [0.1, 0.2, 0.3]
    v2 = v0.copy()
    side = v2[:, 0] > 0.1
    v2[side, 2] += 0.5 * (v2[side, 0] - 0.1)
    verts = np.stack([v0, v1, v2]).astype(np.float32)
    path = tmp_path_factory.mktemp('seq') / 'tee.npz'
    save_sequence(path, Sequence(verts, g.faces, 'tshirt', 'fold', g.keypoints(verts).astype(np.float32),
                                 g.landmark_names))
    return path, g, verts


def _metric(item):
    """Undo the normalisation of an item's points."""
    return Normalization(item['offset'], item['scale']).invert(item['points'].numpy().astype(np.float64))


def test_fps_sampling_indices_and_normalisation(seq_file):
    path, g, verts = seq_file
    ds = SequenceDataset(path, num_points=512)
    assert len(ds) == 3
    item = ds[1]
    pts, idx = item['points'].numpy(), item['indices'].numpy()
    assert pts.shape == (512, 3) and pts.dtype == np.float32 and idx.dtype == np.int64
    assert item['frame'] == 1 and item['sequence'] == 0 and item['source'].endswith('tee.npz')
    assert len(np.unique(idx)) == 512  # vertex FPS never repeats while vertices last
    raw = verts[1][idx].astype(np.float64)
    norm = Normalization.fit(raw)  # exactly the released normalisation of the sampled points
    assert item['offset'] == pytest.approx(norm.offset) and item['scale'] == pytest.approx(norm.scale)
    assert np.allclose(pts, norm.apply(raw), atol=1e-6)
    assert pts.min() == pytest.approx(-1.0, abs=1e-6) and pts.max() == pytest.approx(1.0, abs=1e-6)
    # FPS order: each point's distance to the points before it never grows, so prefixes are FPS subsets.
    gaps = [np.min(np.linalg.norm(raw[:k] - raw[k], axis=1)) for k in range(1, 200)]
    assert np.all(np.diff(gaps) <= 1e-6)
    assert torch.allclose(item['keypoints'], torch.from_numpy(norm.apply(verts[1][g.landmark_indices].astype(
        np.float64)).astype(np.float32)), atol=1e-6)
    assert torch.equal(ds[1]['indices'], item['indices'])  # reproducible
    ds.set_epoch(1)
    assert not torch.equal(ds[1]['indices'], item['indices'])  # a new FPS start each epoch


def test_se3_preserves_distances_and_reports_the_transform(seq_file):
    path, _, verts = seq_file
    ds = SequenceDataset(path, num_points=256, augment=Augment(se3=True), seed=3)
    item = ds[2]
    rot, shift = item['rotation'].numpy().astype(np.float64), item['translation'].numpy()
    assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-6) and np.linalg.det(rot) == pytest.approx(1.0, abs=1e-6)
    assert not np.allclose(rot, np.eye(3))
    metric = _metric(item)
    original = verts[2][item['indices'].numpy()].astype(np.float64)
    assert np.allclose(pdist(metric), pdist(original), atol=1e-5)
    assert np.allclose(metric, original @ rot.T + shift, atol=1e-5)


def test_noise_and_downsampling(seq_file):
    path, _, _ = seq_file
    clean = SequenceDataset(path, num_points=512, seed=4)[0]
    noisy = SequenceDataset(path, num_points=512, seed=4, augment=Augment(noise=0.02))[0]
    assert torch.equal(clean['indices'], noisy['indices'])
    diff = (noisy['points'] - clean['points']).numpy()
    assert diff.std() == pytest.approx(0.02, rel=0.1) and abs(diff.mean()) < 0.005
    small = SequenceDataset(path, num_points=512, seed=4, augment=Augment(downsample=128))[0]
    assert small['points'].shape == (128, 3)
    assert torch.equal(small['indices'], clean['indices'][:128])  # FPS to 128 = the first 128 in FPS order


def test_partial_view_keeps_only_visible_vertices(seq_file):
    path, g, _ = seq_file
    ds = SequenceDataset(path, num_points=512, augment=Augment(partial=True, partial_elevation_deg=(89.0, 90.0)))
    idx = np.unique(ds[0]['indices'].numpy())
    # Flat two-layer shirt seen from straight above: the back layer (under the front) is hidden.
    assert (g.layer[idx] == 1).sum() == 0
    assert (g.layer[idx] == 0).sum() > 300


def test_surface_sampling_lies_on_the_mesh(seq_file):
    path, g, verts = seq_file
    item = SequenceDataset(path, num_points=400, sampling='surface', seed=1)[0]
    metric = _metric(item)
    nearest = verts[0][item['indices'].numpy()]
    # Each surface point is within one triangle of its nearest corner vertex.
    assert np.linalg.norm(metric - nearest, axis=1).max() < 0.05
    assert np.abs(metric[:, 2]).max() < 0.01  # frame 0 is flat


def test_loader_batches_and_keygrid_text(tmp_path, seq_file, rng):
    path, _, _ = seq_file
    txt = tmp_path / 'pant.txt'
    np.savetxt(txt, rng.normal(size=(2 * 2048, 3)))
    ds = SequenceDataset([path, txt], num_points=1024, max_frames=2, keypoints=False)
    assert len(ds) == 4 and ds.locate(3) == (1, 1)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch['points'].shape == (4, 1024, 3) and batch['indices'].shape == (4, 1024)
    assert batch['sequence'].tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match='sampling'):
        SequenceDataset(path, sampling='poisson')


def test_stretch_scales_each_axis_and_reports_it(seq_file):
    path, _, verts = seq_file
    ds = SequenceDataset(path, num_points=256, augment=Augment(stretch=0.25), seed=5)
    item = ds[1]
    stretch = item['stretch'].numpy().astype(np.float64)
    assert np.all(np.abs(stretch - 1) <= 0.25) and np.ptp(stretch) > 0.01  # three different factors
    original = verts[1][item['indices'].numpy()].astype(np.float64)
    np.testing.assert_allclose(_metric(item), original * stretch, atol=1e-5)
    assert torch.equal(SequenceDataset(path, num_points=256, seed=5)[1]['stretch'], torch.ones(3))
    with pytest.raises(ValueError, match='stretch'):
        Augment(stretch=1.0)
