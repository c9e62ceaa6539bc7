"""``keygrid bench model``: Key-Grid inference (encoder only, as the node runs it) and a training step.

Reported (milliseconds, medians with p90s): ``infer_b1_ms`` and ``infer_b32_ms`` (``--batch B`` adds
``infer_bB_ms``), ``train_b8_ms`` (the trainer's own step after the warm-up: forward with reconstruction
under autocast, both losses in float32, backward, gradient norm, Adadelta step), ``peak_mem_mb``, ``params``,
``device``. Inputs are
synthetic garment-like clouds, normalised and farthest-point ordered like the node's.

Timings on a shared machine are noisy: the medians are the numbers to quote, ``*_cpu_ms`` (process CPU
time per call, immune to waiting for a core when one thread is used) and ``load_avg`` say how
noisy. Targets: CPU (2 cores) batch-1 inference <= 35 ms and training batch 8 <= 700 ms; GPU batch-32
inference <= 15 ms (the paper: 0.6 s and 6081 MiB for batch 32 on a GTX 1080 Ti).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import contextlib
import copy
import os
import resource
import time

import numpy as np
import torch

PAPER_B32 = {'paper_b32_ms': 600.0, 'paper_b32_mem_mb': 6081.0, 'paper_gpu': 'GTX 1080 Ti'}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--device', default='cpu', help="cpu, cuda or auto (cuda when available)")
    parser.add_argument('--batch', type=int, default=32, help='an extra inference batch size (1 and 32 always run)')
    parser.add_argument('--train-batch', type=int, default=8, help='training step batch (default 8)')
    parser.add_argument('--points', type=int, default=2048, help='points per cloud (default 2048)')
    parser.add_argument('--repeats', type=int, default=15, help='timed calls per measurement (default 15)')
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0 = torch default)')
    parser.add_argument('--compile', action=argparse.BooleanOptionalAction, default=None,
                        help='torch.compile the encoder for inference, as the node does by default (tens of '
                        'seconds per batch size, once; not timed); --no-compile: eager. Default: on for '
                        'keygrid, off for useek')
    parser.add_argument('--model-type', choices=('keygrid', 'useek'), default='keygrid',
                        help='useek: the SPRIN student (same options and keys)')
    parser.add_argument('--up-cue', action='store_true',
                        help="useek only: the student with SPRINConfig.up_cue (the shipped students' setting)")
    parser.add_argument('--bf16', action='store_true', help='bfloat16 autocast for inference and training')
    parser.add_argument('--train-amp', choices=('bf16', 'off'), default='bf16',
                        help="the training step's mixed precision, by the trainer's rule (default, as `keygrid "
                        "train`: bf16 on GPUs and on CPUs with native bf16, else fp32); off: fp32")
    parser.add_argument('--soft', action='store_true', help='soft keypoints (default: hard, as released)')
    parser.add_argument('--no-fold', action='store_true',
                        help='keep the BatchNorms for inference (default: folded, as KeypointModel runs it)')
    parser.add_argument('--skip-train', action='store_true', help='inference only')


def garment_clouds(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    """Normalised, farthest-point-ordered wavy sheets (batch, n, 3), as the node's preprocessing delivers."""
    import fpsample

    from keygrid_ros.normalize import Normalization

    rng = np.random.default_rng(seed)
    clouds = []
    for i in range(batch):
        m = 4 * n
        u, v = rng.uniform(-0.4, 0.4, m), rng.uniform(-0.25, 0.25, m)
        pts = np.stack([u, v, 0.06 * np.sin(6 * u + i) * np.cos(5 * v)], 1).astype(np.float32)
        pts = Normalization.fit(pts).apply(pts)
        order = fpsample.bucket_fps_kdline_sampling(pts, n, h=5, start_idx=0)
        clouds.append(pts[order])
    return torch.from_numpy(np.stack(clouds))


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        _sync(device)
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return {
        'ms': round(float(np.median(wall)), 2),
        'p90_ms': round(float(np.percentile(wall, 90)), 2),
        'min_ms': round(float(np.min(wall)), 2),
        'cpu_ms': round(float(np.median(cpu)), 2),
    }


def _peak_mb(device: torch.device) -> float:
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def record_timing(result: dict, key: str, timing: dict, device: torch.device) -> None:
    """Store a :func:`_time` result under ``<key>_ms`` / ``_p90_ms`` / ``_cpu_ms`` with the peak memory so far."""
    result[f'{key}_ms'] = timing['ms']
    result[f'{key}_p90_ms'] = timing['p90_ms']
    result[f'{key}_cpu_ms'] = timing['cpu_ms']
    result[f'{key}_peak_mem_mb'] = round(_peak_mb(device), 1)


def time_inference(result: dict, infer: Callable[[torch.Tensor], object], autocast: Callable[[], object],
                   device: torch.device, points: int, batches: list[tuple[int, int]], compile: bool) -> None:
    """Time ``infer`` under inference mode on synthetic clouds, for each ``(batch, repeats)``.

    Records ``infer_b{batch}_*`` (:func:`record_timing`) and, with ``compile``, the untimed first call's
    duration as ``compile_b{batch}_s`` (where torch.compile does its work).
    """
    for batch, repeats in batches:
        x = garment_clouds(batch, points, seed=batch).to(device)
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)

        def call(x=x):
            with torch.inference_mode(), autocast():
                return infer(x)

        compile_start = time.perf_counter()
        call()  # compiles here with --compile
        if compile:
            result[f'compile_b{batch}_s'] = round(time.perf_counter() - compile_start, 1)
        record_timing(result, f'infer_b{batch}', _time(call, device, repeats), device)


def train_autocast_dtype(result: dict, args: argparse.Namespace, device: torch.device) -> torch.dtype | None:
    """The training step's autocast dtype: bf16 with ``--bf16``, else the trainer's rule for ``--train-amp``
    (:func:`~keygrid_ros.train.runtime.training_autocast_dtype`); recorded as ``train_autocast``."""
    from keygrid_ros.train.runtime import training_autocast_dtype

    dtype = torch.bfloat16 if args.bf16 else training_autocast_dtype(device, args.train_amp)
    result['train_autocast'] = str(dtype).replace('torch.', '') if dtype else 'off'
    return dtype


def record_memory(result: dict, baseline: float, device: torch.device) -> None:
    """The overall peak over every measurement, the baseline before them, and what "peak" means here."""
    result['baseline_mem_mb'] = round(baseline, 1)
    result['peak_mem_mb'] = round(max(v for k, v in result.items() if k.endswith('_peak_mem_mb')), 1)
    result['peak_mem_kind'] = 'torch.cuda.max_memory_allocated' if device.type == 'cuda' else 'process max RSS'


def run(args: argparse.Namespace) -> dict:
    from keygrid_ros.model import KeyGrid, KeyGridConfig, KeypointDetector, resolve_device
    from keygrid_ros.train.config import TrainConfig
    from keygrid_ros.train.runtime import Distributed
    from keygrid_ros.train.trainer import _train_step

    if args.compile is None:
        args.compile = args.model_type == 'keygrid'
    if args.model_type == 'useek':
        from keygrid_ros.bench import student

        return student.run(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = KeyGrid(KeyGridConfig(num_points=args.points)).to(device)
    encoder = copy.deepcopy(model.encoder).eval()
    if not args.no_fold:
        encoder.fold_batchnorms_()
    detector = KeypointDetector(encoder, hard=not args.soft).eval()
    infer = torch.compile(detector, dynamic=False) if args.compile else detector
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext
    result: dict = {
        'benchmark': 'model',
        'device': str(device),
        'device_name': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
        'torch': torch.__version__,
        'threads': torch.get_num_threads(),
        'compile': bool(args.compile),
        'bf16': bool(args.bf16),
        'hard_keypoints': not args.soft,
        'folded_batchnorm': not args.no_fold,
        'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY', ''),
        'points': args.points,
        'params': sum(p.numel() for p in model.parameters()),
        'encoder_params': sum(p.numel() for p in model.encoder.parameters()),
        'load_avg': round(os.getloadavg()[0], 2),
        'cpu_count': os.cpu_count(),
        'note': 'medians of wall time; *_cpu_ms: median process CPU time per call',
    }
    if device.type == 'cpu' and result['load_avg'] >= 0.5 * (os.cpu_count() or 1):
        # Measured on the 2-core VMs: with both cores busy, torch's spinning OpenMP threads made every op wait
        # for a descheduled worker (B=1 inference 1.5 s with 2 threads vs 50 ms with 1).
        result['note'] += ('; the CPU is busy with other processes (load_avg): timings are inflated, and with '
                           'more than one thread badly so - compare with --threads 1 or OMP_WAIT_POLICY=PASSIVE')
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        result.update(PAPER_B32)
    baseline = _peak_mb(device)

    # Inference: the encoder only, under inference_mode (what the node runs).
    batches = [(b, args.repeats if b == 1 else max(3, args.repeats // 3)) for b in sorted({1, 32, args.batch})]
    time_inference(result, infer, autocast, device, args.points, batches, args.compile)

    # Training step: full model with the similarity loss on (after the warm-up), Adadelta as released.
    if not args.skip_train:
        model.train()
        optimizer = model.configure_optimizer()
        x = garment_clouds(args.train_batch, args.points, seed=100).to(device)
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)

        train_dtype = train_autocast_dtype(result, args, device)
        scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 and fp32 need no loss scaling
        train_config = TrainConfig()  # released settings: no gradient clipping, no extra losses

        def step():  # the trainer's own step: forward under autocast, float32 losses, backward, norm, update
            _train_step(model, model, optimizer, scaler, x, None, None, True, train_config, train_dtype,
                        Distributed())

        # Three untimed steps: a GPU's first ones pick kernels and grow the caching allocator.
        timing = _time(step, device, max(3, args.repeats // 3), warmup=3)
        record_timing(result, f'train_b{args.train_batch}', timing, device)

    record_memory(result, baseline, device)
    return result
