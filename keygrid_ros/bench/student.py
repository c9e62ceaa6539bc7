"""Benchmark of the USEEK SPRIN student: inference (as the node runs it) and a distillation training step.

Meant to run as ``keygrid bench model --model-type useek``: it takes the model benchmark's arguments
(``--device --batch --train-batch --points --repeats --threads --compile --bf16 --soft --skip-train``) and
returns the same keys (``infer_b1_ms``, ``infer_b{batch}_ms``, ``train_b{train_batch}_ms``, ``*_p90_ms``,
``*_cpu_ms``, ``*_peak_mem_mb``, ``params``, ``device``...), measured with the model benchmark's timer on the
same synthetic garment clouds. The training step is forward + negative-sampled BCE + backward + Adam on fixed
random labels, with the distiller's mixed precision (``--train-amp``: bf16 on GPUs and CPUs with native bf16);
the teacher's cost is Key-Grid inference, measured by the Key-Grid benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import os

import torch


def run(args: argparse.Namespace) -> dict:
    from keygrid_ros.bench.model import (
        _peak_mb,
        _time,
        garment_clouds,
        record_memory,
        record_timing,
        time_inference,
        train_autocast_dtype,
    )
    from keygrid_ros.model.inference import resolve_device
    from keygrid_ros.model.sprin import SPRINConfig, SPRINSeg, normalize_input
    from keygrid_ros.model.student import StudentNet
    from keygrid_ros.train.distill import negative_sampled_bce

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    net = SPRINSeg(SPRINConfig(num_points=args.points, up_cue=bool(getattr(args, 'up_cue', False)))).to(device)
    student = StudentNet(net).eval()
    infer = torch.compile(student, dynamic=False) if args.compile else student
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext
    result: dict = {
        'benchmark': 'model',
        'model_type': 'useek',
        'device': str(device),
        'device_name': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
        'torch': torch.__version__,
        'threads': torch.get_num_threads(),
        'compile': bool(args.compile),
        'bf16': bool(args.bf16),
        'hard_keypoints': False,
        'up_cue': net.config.up_cue,
        'points': args.points,
        'params': sum(p.numel() for p in net.parameters()),
        'load_avg': round(os.getloadavg()[0], 2),
        'note': 'SPRIN student (released table); medians of wall time on a shared machine (noisy); '
                '*_cpu_ms: median process CPU time per call',
    }
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    baseline = _peak_mb(device)

    batches = [(1, args.repeats)]
    if args.batch and args.batch != 1:
        batches.append((args.batch, max(3, args.repeats // 3)))
    time_inference(result, infer, autocast, device, args.points, batches, args.compile)

    if not args.skip_train:
        net.train()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
        x = garment_clouds(args.train_batch, args.points, seed=100).to(device)
        generator = torch.Generator().manual_seed(0)
        labels = (torch.rand(x.shape[0], x.shape[1], net.config.num_keypoints, generator=generator) < 0.05)
        labels = labels.to(device)
        normalised = normalize_input(x)[0]
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)

        train_dtype = train_autocast_dtype(result, args, device)

        def step():  # as the distiller's step: the network under autocast, the loss in float32
            with torch.autocast(device.type, dtype=train_dtype or torch.float32, enabled=train_dtype is not None):
                logits = net(normalised)
            loss = negative_sampled_bce(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        timing = _time(step, device, max(3, args.repeats // 3), warmup=1)
        record_timing(result, f'train_b{args.train_batch}', timing, device)

    record_memory(result, baseline, device)
    return result
