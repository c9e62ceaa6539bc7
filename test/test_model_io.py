"""Model files (safetensors + JSON metadata), the inference wrapper and the deployment export."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from safetensors import safe_open
import torch

from keygrid_ros import ops
from keygrid_ros.model import (
    KeyGrid,
    KeyGridConfig,
    KeypointModel,
    ModelFileError,
    export_detector,
    load_model,
    read_metadata,
    save_model,
)
from keygrid_ros.model.inference import resolve_device


@pytest.fixture(autouse=True, scope='module')
def single_thread():
    """One intra-op thread (see test_model.py: far faster on the shared 2-core machines)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def trained_like_model() -> KeyGrid:
    """A model whose BatchNorm statistics are not the defaults (a few forward passes in train mode)."""
    torch.manual_seed(0)
    model = KeyGrid(KeyGridConfig(num_keypoints=6, num_fps_targets=10)).train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 512, 3) * 2 - 1)
    return model.eval()


def fps_ordered(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    x = torch.rand(batch, n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    x[..., 2] *= 0.2  # flat, garment-like
    _, order = ops.farthest_point_sample(x, n, start=0)
    return ops.index_points(x, order)


def test_round_trip_keeps_weights_outputs_and_metadata(tmp_path, trained_like_model):
    path = save_model(tmp_path / 'm.safetensors', trained_like_model, keypoint_names=list('abcdef'),
                      training_data={'sequences': ['shirt_fold.npz'], 'frames': 128},
                      metrics={'das': 91.5})
    model, meta = load_model(path)
    assert not model.training
    for name, tensor in trained_like_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    x = fps_ordered(2, 512)
    with torch.no_grad():
        a, b = trained_like_model(x, hard=True), model(x, hard=True)
    torch.testing.assert_close(a.keypoints, b.keypoints, rtol=0, atol=0)
    torch.testing.assert_close(a.reconstruction, b.reconstruction, rtol=0, atol=0)
    assert meta['config'] == trained_like_model.config
    assert meta['keypoint_names'] == list('abcdef')
    assert meta['normalization'] == 'keygrid_minmax_scalar'
    assert meta['training_data']['frames'] == 128 and meta['metrics'] == {'das': 91.5}
    assert meta['format_version'] == 1 and meta['contents'] == 'full'
    assert read_metadata(path)['num_keypoints'] == '6'
    assert read_metadata(path)['grid_resolution'] == [16, 16, 8]


def test_metadata_is_plain_json_strings(tmp_path, trained_like_model):
    path = save_model(tmp_path / 'm.safetensors', trained_like_model)
    with safe_open(str(path), framework='pt') as f:
        raw = f.metadata()
    assert all(isinstance(v, str) for v in raw.values())
    config = json.loads(raw['config'])
    assert config['num_keypoints'] == 6 and config['grid_resolution'] == [16, 16, 8] and config['sigma2'] == 0.0025
    assert raw['normalization'] == 'keygrid_minmax_scalar'
    assert json.loads(raw['keypoint_names']) == [f'kp{i}' for i in range(6)]


def test_file_is_not_a_pickle(tmp_path, trained_like_model):
    path = save_model(tmp_path / 'm.safetensors', trained_like_model)
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], 'little')
    json.loads(data[8:8 + header_len])  # safetensors: an 8-byte length, a JSON header, raw tensor bytes
    assert not data.startswith(b'PK') and b'\x80\x02' not in data[:2]  # neither a zip (torch.save) nor a pickle


def test_mismatched_architecture_is_refused_naming_the_fields(tmp_path, trained_like_model):
    path = save_model(tmp_path / 'm.safetensors', trained_like_model)
    requested = KeyGridConfig(num_keypoints=8, grid_resolution=(16, 16, 16))
    with pytest.raises(ModelFileError) as err:
        load_model(path, requested)
    message = str(err.value)
    assert 'num_keypoints: file has 6, requested 8' in message
    assert 'grid_resolution: file has (16, 16, 8), requested (16, 16, 16)' in message
    assert 'sigma2' not in message  # only what differs
    # Sampling/inference/training fields may differ: they are taken from the request.
    model, _ = load_model(path, trained_like_model.config.replace(fps_prefix=False, lambda_sim=2.0))
    assert model.config.fps_prefix is False


def test_weights_that_do_not_fit_their_metadata_are_refused(tmp_path, trained_like_model):
    path = save_model(tmp_path / 'm.safetensors', trained_like_model)
    with safe_open(str(path), framework='pt') as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    lie = trained_like_model.config.replace(use_encoder_info=False)  # decoder layers of other widths
    meta['config'] = json.dumps(lie.to_dict())
    from safetensors.torch import save_file
    save_file(tensors, str(tmp_path / 'lying.safetensors'), metadata=meta)
    with pytest.raises(ModelFileError, match='do not fit the architecture'):
        load_model(tmp_path / 'lying.safetensors')


def test_truncated_and_corrupt_files_give_a_clear_error(tmp_path, trained_like_model):
    path = save_model(tmp_path / 'm.safetensors', trained_like_model)
    data = path.read_bytes()
    cases = {
        'truncated.safetensors': data[: len(data) // 2],
        'header_only.safetensors': data[:6],
        'empty.safetensors': b'',
        'garbage.safetensors': b'\x00' * 64 + b'not a model',
    }
    flipped = bytearray(data)
    flipped[-100] ^= 0xFF  # one corrupt byte inside the weights
    cases['bitflip.safetensors'] = bytes(flipped)
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFileError, match='truncated or corrupt|corrupt'):
            load_model(tmp_path / name)
    with pytest.raises(ModelFileError, match='no such model file'):
        load_model(tmp_path / 'missing.safetensors')


def test_other_safetensors_files_are_refused(tmp_path):
    from safetensors.torch import save_file
    save_file({'w': torch.zeros(2)}, str(tmp_path / 'other.safetensors'), metadata={'format': 'pt'})
    with pytest.raises(ModelFileError, match='not a Key-Grid model file'):
        load_model(tmp_path / 'other.safetensors')


def test_encoder_only_file(tmp_path, trained_like_model):
    path = save_model(tmp_path / 'enc.safetensors', trained_like_model, encoder_only=True)
    full_path = save_model(tmp_path / 'full.safetensors', trained_like_model)
    assert path.stat().st_size < 0.8 * full_path.stat().st_size
    model, meta = load_model(path, encoder_only=True)
    assert meta['contents'] == 'encoder' and model.decoder is None
    assert load_model(path)[0].decoder is None  # the file's own config: encoder only
    with pytest.raises(ModelFileError, match='only the encoder'):
        load_model(path, trained_like_model.config)  # asking for the decoder
    model_from_full, _ = load_model(full_path, encoder_only=True)  # inference from a full file
    x = fps_ordered(1, 512)
    with torch.no_grad():
        torch.testing.assert_close(model(x).keypoints, model_from_full(x).keypoints, rtol=0, atol=0)


def test_keypoint_model_predict(tmp_path, trained_like_model, caplog):
    path = save_model(tmp_path / 'm.safetensors', trained_like_model, keypoint_names=list('abcdef'))
    with caplog.at_level(logging.WARNING):
        model = KeypointModel.load(path, device='auto')
    if not torch.cuda.is_available():
        assert model.device.type == 'cpu' and 'CPU' in caplog.text
    assert model.keypoint_names == list('abcdef') and model.num_keypoints == 6 and model.hard
    assert model.segment_pairs.shape == (15, 2) and model.segment_pairs[0].tolist() == [0, 1]
    x = fps_ordered(2, 512)
    pred = model.predict(x[0].numpy())  # (N, 3) numpy in -> batched numpy out
    assert isinstance(pred.keypoints, np.ndarray)
    assert pred.keypoints.shape == (1, 6, 3) and pred.weights.shape == (1, 6, 512) and pred.strengths.shape == (1, 15)
    with torch.no_grad():
        ref = trained_like_model(x, hard=True)
    np.testing.assert_array_equal(pred.keypoints[0], ref.keypoints[0].numpy())
    batch = model.predict(x)  # (B, N, 3) tensor in -> tensors out
    torch.testing.assert_close(batch.keypoints, ref.keypoints, rtol=0, atol=0)
    torch.testing.assert_close(batch.strengths, ref.strengths)
    soft = KeypointModel.load(path, device='cpu', hard=False).predict(x)
    torch.testing.assert_close(soft.keypoints, trained_like_model(x, hard=False).keypoints)
    with pytest.raises(ValueError):
        model.predict(np.zeros((10, 2)))


def test_keypoint_model_unordered_input(tmp_path, trained_like_model):
    path = save_model(tmp_path / 'm.safetensors', trained_like_model)
    model = KeypointModel.load(path, device='cpu', fps_prefix=False, hard=False)
    x = fps_ordered(1, 400)
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(0))
    a, b = model.predict(x), model.predict(x[:, perm])
    torch.testing.assert_close(a.keypoints, b.keypoints, atol=1e-5, rtol=1e-5)


def test_resolve_device():
    assert resolve_device('cpu').type == 'cpu'
    assert resolve_device('auto').type == ('cuda' if torch.cuda.is_available() else 'cpu')


@pytest.mark.parametrize('batch', [1, 2])
def test_export_gives_the_same_keypoints(tmp_path, trained_like_model, batch):
    encoder = trained_like_model.encoder.eval()
    program = export_detector(encoder, fps_ordered(batch, 512, seed=1), hard=True)
    exported = program.module()
    x = fps_ordered(batch, 512, seed=2)  # another cloud of the same shape
    with torch.no_grad():
        got = exported(x)
        ref = encoder(x, hard=True)
    torch.testing.assert_close(got[0], ref.keypoints, rtol=0, atol=0)
    torch.testing.assert_close(got[1], ref.weights, rtol=0, atol=0)
    torch.testing.assert_close(got[2], ref.strengths, rtol=1e-5, atol=1e-6)
    torch.export.save(program, tmp_path / 'encoder.pt2')  # the deployment artifact (never loaded here)
    assert (tmp_path / 'encoder.pt2').stat().st_size > 1e6


def test_export_needs_fps_ordered_input():
    unordered = KeyGrid(KeyGridConfig(num_keypoints=6, fps_prefix=False)).encoder.eval()
    with pytest.raises(ValueError, match='fps_prefix'):
        export_detector(unordered, fps_ordered(1, 64))


def test_bench_model_reports_the_contract_keys_and_times_the_trainers_own_step(monkeypatch):
    import argparse

    from keygrid_ros.bench import model as bench
    from keygrid_ros.train import trainer

    calls = []
    original = trainer._train_step

    def recording_step(model, net, optimizer, scaler, points, indices, targets, similarity, *rest):
        calls.append({'batch': points.shape[0], 'similarity': similarity, 'scaler': scaler.is_enabled()})
        return original(model, net, optimizer, scaler, points, indices, targets, similarity, *rest)

    monkeypatch.setattr(trainer, '_train_step', recording_step)
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(['--points', '128', '--repeats', '1', '--train-batch', '2', '--threads', '1'])
    result = bench.run(args)
    for key in ('infer_b1_ms', 'infer_b32_ms', 'train_b2_ms', 'peak_mem_mb', 'params', 'device'):
        assert key in result, key
    assert result['device'] == 'cpu' and result['params'] > 3e6 and result['threads'] == 1
    json.dumps(result)  # one JSON object
    # The training figure is the trainer's step after the warm-up (decoder and similarity loss on), not a copy
    # of it that could drift: 3 untimed steps and at least 3 timed ones.
    assert len(calls) >= 6 and all(c == {'batch': 2, 'similarity': True, 'scaler': False} for c in calls)


def test_float16_file_loads_as_float32_with_rounded_weights(tmp_path, trained_like_model):
    path = save_model(tmp_path / 'half.safetensors', trained_like_model, weights_dtype='float16')
    with safe_open(str(path), framework='pt') as f:
        assert f.metadata()['weights_dtype'] == 'float16'
        stored = {name: f.get_tensor(name) for name in f.keys()}
    assert {t.dtype for t in stored.values()} <= {torch.float16, torch.int64}
    model, _ = load_model(path)
    for name, tensor in trained_like_model.state_dict().items():
        loaded = model.state_dict()[name]
        assert loaded.dtype == tensor.dtype
        if tensor.is_floating_point():
            torch.testing.assert_close(loaded, tensor, rtol=2 ** -10, atol=1e-7)
    with pytest.raises(ValueError, match='weights_dtype'):
        save_model(tmp_path / 'x.safetensors', trained_like_model, weights_dtype='int8')


def test_bench_model_useek_reports_the_same_keys():
    import argparse

    from keygrid_ros.bench import model as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(['--model-type', 'useek', '--points', '256', '--repeats', '1', '--train-batch', '2',
                              '--threads', '1'])
    result = bench.run(args)
    for key in ('infer_b1_ms', 'infer_b32_ms', 'train_b2_ms', 'peak_mem_mb', 'params', 'device', 'train_autocast'):
        assert key in result, key
    assert result['model_type'] == 'useek' and result['params'] > 2e7
    json.dumps(result)
