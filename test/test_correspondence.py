"""The correspondence loss (keypoints follow the cloth between two frames) and its frame pairing, against a
brute-force reference, plus fine-tuning from a model file (``init``) and a training run with the loss on."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from test_trainer import data_dir, tiny_config  # noqa: F401  (data_dir is a fixture)
import torch

from keygrid_ros.data.dataset import SequenceDataset
from keygrid_ros.model.io import ModelFileError
from keygrid_ros.train import trainer
from keygrid_ros.train.config import TrainConfig, load_config
from keygrid_ros.train.correspondence import correspondence_loss, last_frames, pair_frames


def brute_force(points, indices, weights, keypoints, temperature=0.0, spread=0.0) -> float:
    """The loss by its definition, one pair, keypoint and point at a time."""
    total, count = 0.0, 0
    for r in range(points.shape[0]):
        p = r ^ 1
        position = {int(v): points[p, n] for n, v in enumerate(indices[p])}  # vertex id -> where it is in p
        for k in range(weights.shape[1]):
            mass, moved = 0.0, np.zeros(3)
            for n, v in enumerate(indices[r]):
                if int(v) in position:
                    mass += weights[r, k, n]
                    moved += weights[r, k, n] * position[int(v)]
            if mass > 0 and temperature > 0:  # cross-entropy of "nearest to its own keypoint" over the K
                logits = [-np.sum((keypoints[p, j] - moved / mass) ** 2) / temperature for j in range(weights.shape[1])]
                total += mass * (np.log(np.sum(np.exp(logits))) - logits[k])
            elif mass > 0:
                total += mass * np.sum((keypoints[p, k] - moved / mass) ** 2)
            if mass > 0 and spread > 0:  # the moved cloth's weighted variance around its mean
                for n, v in enumerate(indices[r]):
                    if int(v) in position:
                        total += spread * weights[r, k, n] * np.sum((position[int(v)] - moved / mass) ** 2)
            count += 1
    return total / count


def random_pairs(rng, pairs=2, vertices=40, n=30, k=4, share=1.0):
    """Clouds of ``pairs`` frame pairs sampling ``n`` of ``vertices`` vertices (a ``share`` of them common)."""
    points = rng.normal(size=(2 * pairs, n, 3))
    indices = np.stack([rng.choice(vertices if share == 1.0 else int(vertices / share), n, replace=False)
                        for _ in range(2 * pairs)])
    weights = rng.random((2 * pairs, k, n)) ** 4
    weights /= weights.sum(-1, keepdims=True)
    keypoints = np.einsum('rkn,rnc->rkc', weights, points)
    return points, indices, weights, keypoints


def loss_of(points, indices, weights, keypoints, temperature=0.0, spread=0.0) -> float:
    return correspondence_loss(torch.from_numpy(points), torch.from_numpy(indices), torch.from_numpy(weights),
                               torch.from_numpy(keypoints), temperature, spread=spread).item()


@pytest.mark.parametrize('temperature', [0.0, 0.5, 3.0])
@pytest.mark.parametrize('share', [1.0, 0.6])
@pytest.mark.parametrize('spread', [0.0, 0.7])
def test_loss_matches_the_brute_force_definition(share, temperature, spread):
    rng = np.random.default_rng(0)
    args = random_pairs(rng, share=share)
    assert loss_of(*args, temperature, spread) == pytest.approx(brute_force(*args, temperature, spread), rel=1e-9)
    assert loss_of(*args, temperature, spread) > 0.01


def test_with_spread_1_the_squared_form_is_the_expected_distance_to_the_keypoints_cloth():
    """Bias plus variance: sum_n w[k, n] ||x_b[v(n)] - kp_b[k]||^2, computed directly, without the mean."""
    rng = np.random.default_rng(5)
    points, indices, weights, keypoints = random_pairs(rng, pairs=1, vertices=30, n=30)  # all in both frames
    expected = 0.0
    for r, p in ((0, 1), (1, 0)):
        where = {int(v): n for n, v in enumerate(indices[p])}
        for k in range(weights.shape[1]):
            expected += sum(weights[r, k, n] * np.sum((points[p, where[int(v)]] - keypoints[p, k]) ** 2)
                            for n, v in enumerate(indices[r]))
    expected /= 2 * weights.shape[1]
    assert loss_of(points, indices, weights, keypoints, spread=1.0) == pytest.approx(expected, rel=1e-9)
    # A keypoint held by one vertex has no spread: the loss is that of the plain squared form.
    weights = np.zeros_like(weights)
    weights[:, :, 3] = 1.0
    keypoints = np.einsum('rkn,rnc->rkc', weights, points)
    assert loss_of(points, indices, weights, keypoints, spread=1.0) == pytest.approx(
        loss_of(points, indices, weights, keypoints), abs=1e-12)


def test_a_pile_of_keypoints_costs_log_k_in_the_contrastive_form_only():
    """The squared form is satisfied by keypoints piled on cloth that stays still; the contrastive form is not."""
    rng = np.random.default_rng(3)
    vertices, k = 30, 5
    cloth = rng.normal(size=(vertices, 3))
    points = np.stack([cloth, cloth])  # a still garment: frame b is frame a
    indices = np.stack([np.arange(vertices), np.arange(vertices)])
    weights = np.zeros((2, k, vertices))
    weights[:, :, 7] = 1.0  # every keypoint on vertex 7, in both frames
    keypoints = np.einsum('rkn,rnc->rkc', weights, points)
    assert loss_of(points, indices, weights, keypoints) == pytest.approx(0.0, abs=1e-20)
    assert loss_of(points, indices, weights, keypoints, temperature=0.1) == pytest.approx(np.log(k), rel=1e-9)
    # The same keypoints spread over distinct vertices cost almost nothing at a temperature below their spacing.
    weights[:] = 0.0
    weights[:, np.arange(k), [2, 9, 14, 21, 27]] = 1.0
    keypoints = np.einsum('rkn,rnc->rkc', weights, points)
    assert loss_of(points, indices, weights, keypoints, temperature=0.01) < 1e-6


def test_keypoints_that_stay_on_their_cloth_cost_nothing_and_a_swap_costs_its_distance():
    rng = np.random.default_rng(1)
    vertices, n, k = 50, 50, 3
    frame_a, frame_b = rng.normal(size=(vertices, 3)), rng.normal(size=(vertices, 3))  # any deformation
    per_vertex = rng.random((k, vertices)) ** 8  # each keypoint's weights belong to the vertices, not the sample
    order_a, order_b = rng.permutation(vertices)[:n], rng.permutation(vertices)[:n]
    points = np.stack([frame_a[order_a], frame_b[order_b]])
    indices = np.stack([order_a, order_b])
    weights = np.stack([per_vertex[:, order_a], per_vertex[:, order_b]])
    weights /= weights.sum(-1, keepdims=True)
    keypoints = np.einsum('rkn,rnc->rkc', weights, points)
    assert loss_of(points, indices, weights, keypoints) == pytest.approx(0.0, abs=1e-20)

    # Frame b names keypoints 0 and 1 the other way round (weights and positions, as a model would).
    swapped_w, swapped_kp = weights.copy(), keypoints.copy()
    swapped_w[1, [0, 1]], swapped_kp[1, [0, 1]] = weights[1, [1, 0]], keypoints[1, [1, 0]]
    gap_a = np.sum((keypoints[0, 0] - keypoints[0, 1]) ** 2)
    gap_b = np.sum((keypoints[1, 0] - keypoints[1, 1]) ** 2)
    # Each direction finds keypoints 0 and 1 misplaced by their distance in the frame it compares in.
    expected = (2 * gap_a + 2 * gap_b) / (2 * k)
    assert loss_of(points, indices, swapped_w, swapped_kp) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize('temperature', [0.0, 0.5])
def test_the_loss_reaches_the_weights_and_needs_pairs(temperature):
    rng = np.random.default_rng(2)
    points, indices, weights, _ = random_pairs(rng)
    w = torch.from_numpy(weights).requires_grad_()
    p = torch.from_numpy(points)
    correspondence_loss(p, torch.from_numpy(indices), w, torch.einsum('rkn,rnc->rkc', w, p), temperature).backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='pairs'):
        correspondence_loss(p[:3], torch.from_numpy(indices[:3]), w[:3].detach(), p[:3, :4])


@pytest.mark.parametrize('temperature', [0.0, 0.5])
def test_stop_gradient_keeps_the_value_and_teaches_only_the_partner_keypoints(temperature):
    """With ``stop_gradient`` the moved cloth is a fixed target: the weights that choose the cloth get no
    gradient from it (so still cloth earns nothing), the keypoints get the very gradient they got before."""
    rng = np.random.default_rng(4)
    points, indices, weights, keypoints = random_pairs(rng, share=0.6)
    grads = {}
    for stop in (False, True):
        w = torch.from_numpy(weights).requires_grad_()
        kp = torch.from_numpy(keypoints).requires_grad_()  # its own leaf: weights reach the loss only via the target
        loss = correspondence_loss(torch.from_numpy(points), torch.from_numpy(indices), w, kp, temperature,
                                   stop_gradient=stop)
        loss.backward()
        grads[stop] = loss.item(), torch.zeros_like(w) if w.grad is None else w.grad, kp.grad
    assert grads[True][0] == pytest.approx(grads[False][0], rel=1e-12)
    assert grads[False][1].abs().sum() > 1e-3  # without it, choosing the cloth lowers the loss
    assert grads[True][1].abs().max() == 0.0
    torch.testing.assert_close(grads[True][2], grads[False][2], rtol=1e-12, atol=1e-15)


def test_pairs_are_nearby_frames_of_the_same_sequence_drawn_reproducibly(data_dir, tmp_path):  # noqa: F811
    dataset = SequenceDataset(sorted(data_dir.glob('*.npz')), num_points=64)  # 3 sequences x 10 frames
    anchors = [0, 3, 9, 12, 25, 29]
    allowed = {0: 9, 1: 9, 2: 6}  # the last 3 frames of sequence 2 are held out
    batches = [anchors[:4], anchors[4:]]
    paired = pair_frames(batches, dataset, allowed, max_gap=2, seed=0, epoch=1)
    assert [len(b) for b in paired] == [4, 2]
    for batch in paired:
        for anchor, partner in zip(batch[::2], batch[1::2]):
            (seq_a, frame_a), (seq_p, frame_p) = dataset.locate(anchor), dataset.locate(partner)
            assert seq_a == seq_p and frame_p <= allowed[seq_p]
            assert 0 < abs(frame_p - frame_a) <= 2 or frame_p in (0, allowed[seq_p])  # clamped at an end
    assert paired == pair_frames(batches, dataset, allowed, max_gap=2, seed=0, epoch=1)
    assert paired != pair_frames(batches, dataset, allowed, max_gap=2, seed=0, epoch=2)
    assert last_frames(dataset, [0, 4, 8, 10, 24]) == {0: 8, 1: 0, 2: 4}


def test_fine_tuning_starts_from_the_file_and_records_it(data_dir, tmp_path, monkeypatch):  # noqa: F811
    first = trainer.train(TrainConfig(**tiny_config(data_dir, tmp_path, epochs=1, run_name='first', val_every=0)))
    start = first.run_dir / trainer.MODEL_LAST
    # lr 0: the fine-tuned model must hold the start file's weights exactly (and a run from scratch must not);
    # batch-norm statistics move in training whatever the lr, so parameters are compared.
    tuned = trainer.train(TrainConfig(**tiny_config(data_dir, tmp_path, epochs=1, run_name='tuned', val_every=0,
                                                    lr=0.0, init=str(start), seed=5)))
    start_weights = dict(first.model.named_parameters())
    for name, value in tuned.model.named_parameters():
        assert torch.equal(value, start_weights[name]), name
    fresh = trainer.train(TrainConfig(**tiny_config(data_dir, tmp_path, epochs=1, run_name='fresh', val_every=0,
                                                    lr=0.0, seed=5)))
    assert any(not torch.equal(value, start_weights[name]) for name, value in fresh.model.named_parameters())
    with safe_open(str(tuned.run_dir / trainer.MODEL_LAST), 'pt') as f:
        training_data = json.loads(f.metadata()['training_data'])
    assert training_data['init']['file'] == start.name and training_data['init']['epochs'] == 1

    # init resolves like the data paths: against the YAML's folder, or the working directory on the command line.
    (tmp_path / 'sub').mkdir()
    yaml_path = tmp_path / 'sub' / 'c.yaml'
    yaml_path.write_text('init: start.safetensors\n')
    assert load_config(yaml_path).init == str(tmp_path / 'sub' / 'start.safetensors')
    monkeypatch.chdir(tmp_path)
    assert load_config(yaml_path, ['init=other.safetensors']).init == str(tmp_path / 'other.safetensors')

    wider = dict(tiny_config(data_dir, tmp_path)['model'], num_keypoints=6)
    with pytest.raises(ModelFileError, match='num_keypoints'):
        trainer.train(TrainConfig(**tiny_config(data_dir, tmp_path, epochs=1, run_name='bad', init=str(start),
                                                model=wider)))


def test_training_with_the_correspondence_loss_records_it_and_refuses_odd_batches(data_dir, tmp_path,  # noqa: F811
                                                                                   monkeypatch):
    seen = []
    original = trainer._train_step

    def recording_step(*args):
        stats = original(*args)
        seen.append((args[5] is not None, stats['corr']))  # args[5]: the vertex ids of the frame pairs
        return stats

    monkeypatch.setattr(trainer, '_train_step', recording_step)
    result = trainer.train(TrainConfig(**tiny_config(data_dir, tmp_path, epochs=1, batch_size=4, val_every=0,
                                                     correspondence_weight=1.0, correspondence_gap=3,
                                                     correspondence_temperature=0.05,
                                                     correspondence_stop_gradient=True,
                                                     correspondence_spread=0.5)))
    assert seen and all(on for on, _ in seen) and all(np.isfinite(v) and v > 0 for _, v in seen)
    with safe_open(str(result.run_dir / trainer.MODEL_LAST), 'pt') as f:
        assert json.loads(f.metadata()['training_data'])['correspondence'] == {'weight': 1.0, 'gap': 3,
                                                                                'temperature': 0.05,
                                                                                'stop_gradient': True,
                                                                                'spread': 0.5}
    with pytest.raises(ValueError, match='batch_size must be even'):
        TrainConfig(**tiny_config(data_dir, tmp_path, batch_size=3, correspondence_weight=1.0))
    with pytest.raises(ValueError, match='correspondence_gap'):
        TrainConfig(**tiny_config(data_dir, tmp_path, correspondence_gap=0))
    with pytest.raises(ValueError, match='correspondence_temperature'):
        TrainConfig(**tiny_config(data_dir, tmp_path, correspondence_temperature=-1.0))
    with pytest.raises(ValueError, match='correspondence_spread'):
        TrainConfig(**tiny_config(data_dir, tmp_path, correspondence_spread=-0.1))
