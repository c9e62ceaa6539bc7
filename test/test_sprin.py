"""The SPRIN student network: invariance checked numerically, determinism, model files, the node's surface.

Small clouds (256 points) and the narrow test variant unless a test is about the released table; float64 where
a check is "to float tolerance" (in float32 a near-tie between two neighbour distances may flip under rotation).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from keygrid_ros import ops
from keygrid_ros.model.canonical import up_direction
from keygrid_ros.model.config import KeyGridConfig
from keygrid_ros.model.io import ModelFileError, load_model, save_model
from keygrid_ros.model.keygrid import KeyGrid
from keygrid_ros.model.sprin import (
    LAYER_NAMES,
    SPRIN_LAYERS,
    ConvSpec,
    SPRINConfig,
    SPRINSeg,
    keypoints_from_logits,
    nearest_neighbours,
    normalize_input,
    pair_descriptor,
    subsample_neighbours,
)
from keygrid_ros.model.student import (
    FORMAT,
    StudentModel,
    StudentNet,
    load_keypoint_model,
    load_student,
    read_student_metadata,
    save_student,
)
from keygrid_ros.normalize import Normalization

TINY_KEYGRID = KeyGridConfig(
    num_keypoints=4, num_points=256, sa_npoints=(128, 64, 16, 8), sa_nsamples=((8, 16),) * 4,
    sa_mlps=(((8, 8, 16), (8, 8, 16)), ((16, 16, 32), (16, 16, 32)), ((32, 32, 64), (32, 32, 64)),
             ((64, 64, 64), (64, 64, 64))),
    grid_resolution=(8, 8, 4), use_decoder=False,
)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # other test processes share the cores; also makes float sums reproducible
    yield
    torch.set_num_threads(threads)


def garment_like(n: int = 256, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """An asymmetric, bent, tapering sheet (n, 3) in metres, in farthest-point order from point 0."""
    g = torch.Generator().manual_seed(seed)
    u, v = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1
    x = 0.6 * u
    y = 0.25 * v * (1 - 0.6 * u)
    z = 0.1 * torch.sin(math.pi * u) + 0.03 * u * v
    pts = torch.stack([x, y, z], -1) + 0.4
    order = ops.farthest_point_sample(pts[None], n, start=0)[1][0]
    return pts[order].to(dtype)


def random_se3(seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rotation = ops.random_rotations(1, generator=g, dtype=dtype)[0]
    translation = (torch.rand(3, generator=g, dtype=torch.float64) * 4 - 2).to(dtype)
    return rotation, translation


# ----------------------------------------------------------------------------------------------------------
# the descriptor


def released_angle(pi: np.ndarray, pj: np.ndarray) -> float:
    """Item 1 as the released code computes it: an Euler frame at p_i from its spherical coordinates
    (Rz(-z) Ry(-theta) Rz(-phi)), applied to the unit vector of p_j; arccos of the z component / pi."""

    def rz(a):
        return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])

    def ry(a):
        return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])

    phi, theta = np.arctan2(pi[1], pi[0]), np.arccos(np.clip(pi[2] / np.linalg.norm(pi), -1, 1))
    frame = rz(-pi[2]) @ ry(-theta) @ rz(-phi)
    return float(np.arccos(np.clip((frame @ (pj / np.linalg.norm(pj)))[2], -1, 1)) / np.pi)


def test_descriptor_matches_the_definition():
    g = torch.Generator().manual_seed(1)
    neighbours = torch.randn(2, 3, 5, 3, generator=g, dtype=torch.float64)
    centres = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    d = pair_descriptor(neighbours, centres)
    assert d.shape == (2, 3, 5, 8) and d.dtype == torch.float64
    for b, q, j in [(0, 0, 0), (1, 2, 4), (0, 1, 3)]:
        pj, pi = neighbours[b, q, j].numpy(), centres[b, q].numpy()
        m = neighbours[b, q].mean(0).numpy()

        def cos(a, c):
            return a @ c / (np.linalg.norm(a) * np.linalg.norm(c) + 1e-7)

        expected = [released_angle(pi, pj), np.linalg.norm(pj), np.linalg.norm(m - pj), np.linalg.norm(pj - pi),
                    np.linalg.norm(pi - m), cos(m - pj, pj - pi), cos(pj - pi, pi - m), cos(pi - m, m - pj)]
        np.testing.assert_allclose(d[b, q, j].numpy(), expected, rtol=1e-6, atol=1e-7)
    # A point at the origin, and a neighbour equal to its centre, give finite values (no NaN).
    zero = pair_descriptor(torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 3))
    assert torch.isfinite(zero).all()


@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_descriptor_is_invariant_under_rotation_about_the_centroid(dtype, tol):
    points, _, _ = normalize_input(garment_like(dtype=torch.float64)[None])
    centres = points[:, :64]
    idx = nearest_neighbours(points, centres, 16)
    for seed in range(5):
        rotation, _ = random_se3(seed)
        rotated = points @ rotation.T
        a = pair_descriptor(ops.index_points(points, idx).to(dtype), centres.to(dtype))
        b = pair_descriptor(ops.index_points(rotated, idx).to(dtype), (centres @ rotation.T).to(dtype))
        assert (a - b).abs().max().item() < tol
    # Not trivially constant: it does see the geometry.
    assert a.std(dim=(0, 1, 2)).min() > 1e-3


# ----------------------------------------------------------------------------------------------------------
# the network


def test_config_round_trip_and_validation():
    config = SPRINConfig()
    assert config.layers == SPRIN_LAYERS and len(config.layers) == len(LAYER_NAMES) == 13
    assert config.spec('conv_52') == ConvSpec(96, 3, 32, 64, (80,), 16)
    assert SPRINConfig.from_dict(config.to_dict()) == config
    tiny = SPRINConfig.tiny(num_keypoints=3)
    assert SPRINConfig.from_dict(tiny.to_dict()) == tiny
    with pytest.raises(ValueError, match='unknown SPRINConfig fields'):
        SPRINConfig.from_dict({'num_keypoint': 3})
    with pytest.raises(ValueError, match='layers needs 13'):
        SPRINConfig(layers=SPRIN_LAYERS[:3])
    with pytest.raises(ValueError, match='neighbour_sampling'):
        SPRINConfig(neighbour_sampling='nearest')


def test_released_table_shapes():
    net = SPRINSeg(SPRINConfig(num_keypoints=8)).eval()
    # Channel counts of the table: 1 -> 40 -> 64 -> 128 -> 144 -> 160 -> 256 -> 256 -> 288 -> 128 -> 160 -> 48 -> 64
    # -> 80 -> head 128 -> 256 -> K.
    ins = [net.convs[name].conv.out.in_features // net.convs[name].conv.kernel[-1].out_features for name in LAYER_NAMES]
    assert ins == [1, 40, 64, 128, 144, 160, 256, 256, 288, 128, 160, 48, 64]
    assert net.head[0].in_channels == 80 and net.head[-1].out_channels == 8
    with torch.no_grad():
        logits = net(normalize_input(garment_like(300, dtype=torch.float32)[None])[0])
    assert logits.shape == (1, 300, 8) and torch.isfinite(logits).all()


@pytest.mark.parametrize('preset', ['tiny', 'released'])
def test_logits_are_invariant_under_random_se3(preset):
    torch.manual_seed(0)
    config = SPRINConfig.tiny() if preset == 'tiny' else SPRINConfig(num_keypoints=4)
    net = SPRINSeg(config).double().eval()
    points = garment_like()[None]
    with torch.no_grad():
        reference = net(normalize_input(points)[0])
        for seed in range(2 if preset == 'released' else 4):
            rotation, translation = random_se3(seed)
            moved = net(normalize_input(points @ rotation.T + translation)[0])
            assert (moved - reference).abs().max().item() < 1e-9, seed
    assert reference.std(dim=1).min() > 1e-4  # the logits do vary over the points


def test_logits_are_invariant_under_reflection_too():
    """Every descriptor entry is a length, an angle or a cosine, so a mirror image gets the same logits at the
    mirrored points: the network cannot tell a shape from its mirror image. Consequence (docs/results.md): on
    a mirror-symmetric garment a student scores the left and the right sleeve alike, whatever its training."""
    torch.manual_seed(0)
    net = SPRINSeg(SPRINConfig.tiny()).double().eval()
    points = garment_like()[None]
    mirror = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)  # x -> -x: a reflection, not a rotation
    with torch.no_grad():
        reference = net(normalize_input(points)[0])
        mirrored = net(normalize_input(points * mirror)[0])
        rotated = net(normalize_input(points @ random_se3(7)[0].T * mirror)[0])  # improper rotation
    assert (mirrored - reference).abs().max().item() < 1e-9
    assert (rotated - reference).abs().max().item() < 1e-9
    assert reference.std(dim=1).min() > 1e-4


def test_keypoints_move_with_the_input_but_the_teachers_do_not():
    """Through Key-Grid's min/max normalisation, as the node feeds both models: student keypoints are
    equivariant to SE(3) (to float tolerance), the Key-Grid teacher's are not."""
    torch.manual_seed(0)
    student = StudentNet(SPRINSeg(SPRINConfig.tiny()).double().eval())
    teacher = KeyGrid(TINY_KEYGRID).double().eval()
    points = garment_like()  # metres, FPS order (both models get it; Key-Grid needs it)

    def predict(model, cloud: torch.Tensor) -> torch.Tensor:
        norm = Normalization.fit(cloud.numpy())
        x = torch.from_numpy(norm.apply(cloud.numpy()))[None]
        with torch.no_grad():
            kp = model(x)[0] if isinstance(model, StudentNet) else model(x, reconstruct=False, hard=True).keypoints
        return torch.from_numpy(norm.invert(kp[0].numpy()))

    radius = (points - points.mean(0)).norm(dim=-1).max().item()
    student_ref, teacher_ref = predict(student, points), predict(teacher, points)
    student_err, teacher_err = [], []
    for seed in range(4):
        rotation, translation = random_se3(seed)
        moved = points @ rotation.T + translation
        student_back = (predict(student, moved) - translation) @ rotation  # undo the transform
        teacher_back = (predict(teacher, moved) - translation) @ rotation
        student_err.append((student_back - student_ref).norm(dim=-1).max().item())
        teacher_err.append((teacher_back - teacher_ref).norm(dim=-1).max().item())
    assert max(student_err) < 1e-9 * radius, student_err
    assert np.mean(teacher_err) > 0.05 * radius, teacher_err


def test_float32_inference_is_close_to_float64():
    torch.manual_seed(0)
    net = SPRINSeg(SPRINConfig.tiny()).eval()
    points = garment_like()[None]
    rotation, translation = random_se3(3)
    with torch.no_grad():
        kp64 = StudentNet(SPRINSeg(net.config).double().eval().requires_grad_(False))
        kp64.net.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
        reference = kp64(points)[0]
        moved = StudentNet(net)((points @ rotation.T + translation).float())[0].double()
    back = (moved - translation) @ rotation
    assert (back - reference).norm(dim=-1).max().item() < 1e-4


def test_deterministic_by_default_and_seedable_when_random():
    torch.manual_seed(7)
    a = SPRINSeg(SPRINConfig.tiny())
    torch.manual_seed(7)
    b = SPRINSeg(SPRINConfig.tiny())
    x = normalize_input(garment_like(dtype=torch.float32)[None])[0]
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(x), a(x)) and torch.equal(a(x), b(x))
        # The released test-time behaviour (random neighbour subsets) is reproducible from a seed.
        random_net = SPRINSeg(SPRINConfig.tiny(neighbour_sampling='random', fps_start='random')).eval()
        first = random_net(x, generator=torch.Generator().manual_seed(1))
        again = random_net(x, generator=torch.Generator().manual_seed(1))
        other = random_net(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    # Training mode draws from the generator (or the global RNG): reproducible under a seed too.
    a.train()
    one = a(x, generator=torch.Generator().manual_seed(3))
    two = a(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(one, two)


def test_neighbour_subsampling():
    idx = torch.arange(12).view(1, 1, 12)
    assert subsample_neighbours(idx, 9, 3).tolist() == [[[0, 3, 6]]]
    assert subsample_neighbours(idx, 12, 1).shape[-1] == 12
    random_pick = subsample_neighbours(idx, 12, 3, 'random', torch.Generator().manual_seed(0))
    assert random_pick.shape[-1] == 4 and len(set(random_pick.flatten().tolist())) == 4
    src = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [3, 0, 0], [0.5, 0, 0]]])
    assert nearest_neighbours(src, src[:, :1], 3).tolist() == [[[0, 3, 1]]]
    assert nearest_neighbours(src, src[:, :1], 10).shape[-1] == 4  # k capped at the source size


def test_keypoints_from_logits():
    points = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 2, 0]]])
    logits = torch.tensor([[[0.0, 5.0], [math.log(3.0), 0.0], [0.0, 0.0]]])  # (1, 3, 2)
    kp, w = keypoints_from_logits(points, logits)
    np.testing.assert_allclose(w[0, 0].numpy(), [0.2, 0.6, 0.2], rtol=1e-6)
    np.testing.assert_allclose(kp[0, 0].numpy(), [0.6, 0.4, 0.0], rtol=1e-6)
    kp_hard, w_hard = keypoints_from_logits(points, logits, hard=True)
    assert kp_hard[0].tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]] and w_hard.sum(-1).eq(1).all()
    # Temperature 1/2 squares the unnormalised weights: 1 : 9 : 1.
    kp_sharp, w_sharp = keypoints_from_logits(points, logits, temperature=0.5)
    np.testing.assert_allclose(w_sharp[0, 0].numpy(), [1 / 11, 9 / 11, 1 / 11], rtol=1e-6)
    np.testing.assert_allclose(kp_sharp[0, 0].numpy(), [9 / 11, 2 / 11, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match='temperature'):
        keypoints_from_logits(points, logits, temperature=0.0)


def test_softmax_temperature_is_recorded_by_export_and_used_by_every_reader(tmp_path):
    from keygrid_ros.cli import main

    torch.manual_seed(0)
    net = SPRINSeg(SPRINConfig.tiny(num_keypoints=3)).eval()
    plain = save_student(tmp_path / 'plain.safetensors', net, teacher=TEACHER_INFO)
    sharp = tmp_path / 'sharp.safetensors'
    assert main(['export-model', str(plain), str(sharp), '--weights-dtype', 'float32',
                 '--softmax-temperature', '0.1']) == 0
    assert read_student_metadata(sharp)['softmax_temperature'] == 0.1
    assert 'softmax_temperature' not in read_student_metadata(plain)
    points = garment_like(dtype=torch.float32)[None]
    model = load_keypoint_model(sharp, device='cpu')
    with torch.no_grad():
        logits = net(normalize_input(points)[0])
    expected, _ = keypoints_from_logits(points, logits, temperature=0.1)
    torch.testing.assert_close(model.predict(points).keypoints, expected, rtol=1e-5, atol=1e-5)
    unsharpened, _ = keypoints_from_logits(points, logits)
    assert (expected - unsharpened).abs().max() > 1e-3  # the setting changes what the reader returns
    assert main(['export-model', str(plain), str(tmp_path / 'x.safetensors'), '--softmax-temperature', '-1']) == 2
    keygrid = tmp_path / 'keygrid.safetensors'
    save_model(keygrid, KeyGrid(TINY_KEYGRID).eval())
    assert main(['export-model', str(keygrid), str(tmp_path / 'y.safetensors'), '--softmax-temperature', '0.5']) == 2


# ----------------------------------------------------------------------------------------------------------
# model files and the node's surface


TEACHER_INFO = {'model_type': 'keygrid', 'file': 'teacher.safetensors', 'weights_sha256': 'ab' * 32}


def test_student_file_round_trip(tmp_path):
    torch.manual_seed(0)
    net = SPRINSeg(SPRINConfig.tiny(num_keypoints=3)).eval()
    path = save_student(tmp_path / 's.safetensors', net, teacher=TEACHER_INFO, keypoint_names=['a', 'b', 'c'],
                        segment_strengths=[0.1, 0.9, 0.5], metrics={'val_bce': 0.2})
    meta = read_student_metadata(path)
    assert (meta['format'], meta['model_type'], meta['role']) == (FORMAT, 'useek', 'student')
    assert meta['teacher'] == TEACHER_INFO and meta['keypoint_names'] == ['a', 'b', 'c']
    assert meta['config'] == net.config
    loaded, _ = load_student(path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())
    # The Key-Grid loader refuses a student file by its format, and the student loader a Key-Grid file.
    with pytest.raises(ModelFileError, match='keygrid_ros.useek'):
        load_model(path)
    keygrid_path = save_model(tmp_path / 'kg.safetensors', KeyGrid(TINY_KEYGRID))
    with pytest.raises(ModelFileError, match='not a USEEK student'):
        load_student(keygrid_path)
    with pytest.raises(ModelFileError, match='does not match the requested architecture'):
        load_student(path, SPRINConfig.tiny(num_keypoints=4))
    # A damaged file is reported as such.
    data = bytearray(path.read_bytes())
    data[-8:] = b'\x00' * 8
    (tmp_path / 'bad.safetensors').write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match='corrupt'):
        load_student(tmp_path / 'bad.safetensors')


def test_student_model_has_the_detector_surface(tmp_path):
    from keygrid_ros.perception.detector import _SingleCloudModel

    torch.manual_seed(0)
    net = SPRINSeg(SPRINConfig.tiny(num_keypoints=3)).eval()
    path = save_student(tmp_path / 's.safetensors', net, teacher=TEACHER_INFO, segment_strengths=[0.1, 0.9, 0.5])
    model = load_keypoint_model(path, device='cpu', model_type='useek')
    assert isinstance(model, StudentModel) and model.teacher == TEACHER_INFO
    points = garment_like(dtype=torch.float32).numpy()
    pred = model.predict(points)
    assert pred.keypoints.shape == (1, 3, 3) and pred.weights.shape == (1, 3, 256)
    np.testing.assert_allclose(pred.weights.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(pred.strengths, [[0.1, 0.9, 0.5]])
    assert model.segment_pairs.tolist() == [[0, 1], [0, 2], [1, 2]]
    hard = StudentModel.load(path, device='cpu', hard=True).predict(points)
    np.testing.assert_array_equal(hard.keypoints[0], points[pred.weights[0].argmax(-1)])
    single = _SingleCloudModel(StudentModel.load(path, device='cpu', hard=False))
    keypoints, weights, strengths = single.predict(points)
    assert keypoints.shape == (3, 3) and weights.shape == (3, 256) and strengths.shape == (3,)
    assert single.keypoint_names == ('kp0', 'kp1', 'kp2') and single.num_points == 256
    with pytest.raises(ModelFileError, match='is a useek model file'):
        load_keypoint_model(path, model_type='keygrid')
    with pytest.raises(ValueError, match='more than 32 points'):
        model.predict(points[:20])


def test_float16_storage_halves_the_file_and_keeps_the_keypoints(tmp_path):
    """A float16 file loads back into float32 weights within float16 rounding, and the keypoints barely move."""
    from keygrid_ros.cli import main

    torch.manual_seed(0)
    net = SPRINSeg(SPRINConfig.tiny(num_keypoints=3)).eval()
    full = save_student(tmp_path / 'full.safetensors', net, teacher=TEACHER_INFO)
    half = tmp_path / 'half.safetensors'
    assert main(['export-model', str(full), str(half)]) == 0
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert read_student_metadata(half)['weights_dtype'] == 'float16'
    loaded, _ = load_student(half)
    for name, tensor in net.state_dict().items():
        stored = loaded.state_dict()[name]
        assert stored.dtype == tensor.dtype
        if tensor.is_floating_point():  # float16 keeps 11 significant bits
            torch.testing.assert_close(stored, tensor, rtol=2 ** -10, atol=1e-7)
    points = garment_like(dtype=torch.float32).numpy()
    reference = StudentModel.load(full, device='cpu').predict(points).keypoints
    rounded = StudentModel.load(half, device='cpu').predict(points).keypoints
    extent = np.ptp(points, axis=0).max()
    assert np.abs(rounded - reference).max() < 1e-3 * extent
    # Back to float32 is exact (float16 values are float32 values), and the checksum is of what is stored.
    again = tmp_path / 'again.safetensors'
    assert main(['export-model', str(half), str(again), '--weights-dtype', 'float32']) == 0
    assert read_student_metadata(again)['weights_dtype'] == 'float32'
    assert all(torch.equal(load_student(again)[0].state_dict()[k], v) for k, v in loaded.state_dict().items())
    # Refused: a damaged source (nothing written), the source as its own output.
    data = bytearray(half.read_bytes())
    data[-8:] = b'\x00' * 8
    (tmp_path / 'bad.safetensors').write_bytes(bytes(data))
    assert main(['export-model', str(tmp_path / 'bad.safetensors'), str(tmp_path / 'out.safetensors')]) == 2
    assert not (tmp_path / 'out.safetensors').exists()
    assert main(['export-model', str(half), str(half)]) == 2


def test_chiral_descriptor_flips_sign_under_reflection_and_keeps_rotation_invariance():
    points = garment_like()[None]
    centred = normalize_input(points)[0]
    idx = nearest_neighbours(centred, centred, 16)
    neighbours = ops.index_points(centred, idx)
    plain = pair_descriptor(neighbours, centred)
    chiral = pair_descriptor(neighbours, centred, chiral=True)
    assert chiral.shape[-1] == 9 and torch.equal(chiral[..., :8], plain)
    # By definition: det[p_j - p_i, m - p_i, p_i] over the norms, for one centre and neighbour.
    pi, pj, m = centred[0, 5], neighbours[0, 5, 3], neighbours[0, 5].mean(0)
    a, b = pj - pi, m - pi
    expected = torch.det(torch.stack([a, b, pi], dim=-1)) / (a.norm() * b.norm() * pi.norm() + 1e-7)
    assert abs(chiral[0, 5, 3, 8].item() - expected.item()) < 1e-12
    rotation = random_se3(3)[0]
    rotated = pair_descriptor(neighbours @ rotation.T, centred @ rotation.T, chiral=True)
    torch.testing.assert_close(rotated, chiral, rtol=0, atol=1e-12)
    mirror = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    mirrored = pair_descriptor(neighbours * mirror, centred * mirror, chiral=True)
    torch.testing.assert_close(mirrored[..., :8], chiral[..., :8], rtol=0, atol=1e-12)
    torch.testing.assert_close(mirrored[..., 8], -chiral[..., 8], rtol=0, atol=1e-12)
    assert chiral[..., 8].abs().max() > 0.1  # the bent sheet has relief: the entry carries information


def test_chiral_network_is_se3_invariant_but_tells_a_mirror_image_apart(tmp_path):
    torch.manual_seed(0)
    config = SPRINConfig.tiny(chiral=True)
    net = SPRINSeg(config).double().eval()
    points = garment_like()[None]
    mirror = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        reference = net(normalize_input(points)[0])
        rotation, translation = random_se3(5)
        moved = net(normalize_input(points @ rotation.T + translation)[0])
        mirrored = net(normalize_input(points * mirror)[0])
    assert (moved - reference).abs().max().item() < 1e-9
    assert (mirrored - reference).abs().max().item() > 1e-3
    # The setting is part of the architecture: a file remembers it and a mismatch is refused.
    path = save_student(tmp_path / 'chiral.safetensors', net.float(), teacher=TEACHER_INFO)
    assert read_student_metadata(path)['config'].chiral
    with pytest.raises(ModelFileError, match='chiral'):
        load_student(path, SPRINConfig.tiny())


def test_up_cue_descriptor_entries_match_their_definition_and_turn_with_the_cloud():
    points = garment_like()[None]
    centred = normalize_input(points)[0]
    up = up_direction(centred)
    idx = nearest_neighbours(centred, centred, 16)
    neighbours = ops.index_points(centred, idx)
    plain = pair_descriptor(neighbours, centred)
    cued = pair_descriptor(neighbours, centred, up=up)
    assert cued.shape[-1] == 11 and torch.equal(cued[..., :8], plain)
    pi, pj, m, u = centred[0, 5], neighbours[0, 5, 3], neighbours[0, 5].mean(0), up[0]
    a, b = pj - pi, m - pi
    volume = torch.det(torch.stack([a, b, u], dim=-1))
    expected = [a @ u / (a.norm() + 1e-7), pj @ u, volume / (a.norm() * b.norm() + 1e-7)]
    torch.testing.assert_close(cued[0, 5, 3, 8:], torch.stack(expected), rtol=0, atol=1e-12)
    rotation = random_se3(3)[0]
    rotated = pair_descriptor(neighbours @ rotation.T, centred @ rotation.T, up=up_direction(centred @ rotation.T))
    torch.testing.assert_close(rotated, cued, rtol=0, atol=1e-12)
    mirror = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    mirrored = pair_descriptor(neighbours * mirror, centred * mirror, up=up_direction(centred * mirror))
    torch.testing.assert_close(mirrored[..., :10], cued[..., :10], rtol=0, atol=1e-12)
    torch.testing.assert_close(mirrored[..., 10], -cued[..., 10], rtol=0, atol=1e-12)
    assert cued[..., 10].abs().max() > 0.1


def test_up_cue_network_is_se3_invariant_but_tells_a_mirror_image_apart(tmp_path):
    """With the cloud's own up, a half turn that swaps a flat garment's sleeves also turns its relief upside
    down, so the network can tell the sleeves apart while staying SE(3)-invariant."""
    torch.manual_seed(0)
    net = SPRINSeg(SPRINConfig.tiny(up_cue=True)).double().eval()
    points = garment_like()[None]
    mirror = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        reference = net(normalize_input(points)[0])
        for seed in range(3):
            rotation, translation = random_se3(seed)
            moved = net(normalize_input(points @ rotation.T + translation)[0])
            assert (moved - reference).abs().max().item() < 1e-9, seed
        mirrored = net(normalize_input(points * mirror)[0])
    assert (mirrored - reference).abs().max().item() > 1e-3
    path = save_student(tmp_path / 'up.safetensors', net.float(), teacher=TEACHER_INFO)
    assert read_student_metadata(path)['config'].up_cue
    with pytest.raises(ModelFileError, match='up_cue'):
        load_student(path, SPRINConfig.tiny())
