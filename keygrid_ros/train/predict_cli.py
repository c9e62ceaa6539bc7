"""``keygrid predict --model MODEL --data SEQ.npz --out KP.npz``: the keypoints of every frame of a sequence.

Each frame is sampled as in training (FPS over its vertices, Key-Grid normalisation), the model runs on it,
and the keypoints are mapped back to the input's own coordinates, so anyone can score them with their own
code. ``KP.npz`` holds:

- ``keypoints`` float32 (T, K, 3), metres, the sequence file's frame;
- ``keypoint_names`` (K,) strings, the model's names;
- ``vertex_indices`` int64 (T, K): the mesh vertex each keypoint sits on (hard and snapped keypoints) or is
  nearest to among the sampled ones;
- ``frames`` int64 (T,).
"""

from __future__ import annotations

import argparse
from pathlib import Path
import sys

import numpy as np

from .evaluate_cli import add_keypoint_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', required=True, help='model file (.safetensors)')
    parser.add_argument('--data', required=True, help='one sequence (.npz, Key-Grid .txt or an OBJ frame folder)')
    parser.add_argument('--out', required=True, help='output .npz')
    parser.add_argument('--seed', type=int, default=0, help='seed of the point sampling (default: 0)')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda', ... (default: auto)")
    parser.add_argument('--batch-size', type=int, default=16, help='frames per forward pass (default: 16)')
    add_keypoint_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..data.dataset import SequenceDataset
    from ..data.sequences import SequenceFormatError
    from ..model.io import ModelFileError
    from .evaluate import predict_frames
    from .evaluate_cli import load_keypoint_fn

    try:
        keypoint_fn, model = load_keypoint_fn(args.model, args.device, args.keypoints, args.canonicalize)
    except (ModelFileError, OSError, ValueError) as exc:
        print(f'keygrid predict: {exc}', file=sys.stderr)
        return 2
    try:
        dataset = SequenceDataset([args.data], num_points=model.config.num_points, seed=args.seed, cache_size=1,
                                  keypoints=False)
        if len(dataset.files) != 1:
            raise ValueError(f'{args.data}: expected one sequence, found {len(dataset.files)}')
        pred = predict_frames(keypoint_fn, dataset, 0, batch_size=args.batch_size)
    except (SequenceFormatError, FileNotFoundError, ValueError) as exc:
        print(f'keygrid predict: {exc}', file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + '.tmp.npz')
    np.savez(tmp, keypoints=pred.keypoints.astype(np.float32), keypoint_names=np.array(model.keypoint_names),
             vertex_indices=pred.vertex_indices.astype(np.int64), frames=pred.frames.astype(np.int64))
    tmp.replace(out)
    print(f'{out}: {pred.keypoints.shape[0]} frames x {pred.keypoints.shape[1]} keypoints', file=sys.stderr)
    return 0
