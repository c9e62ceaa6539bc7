"""Training checkpoints: atomic writes, and everything needed to resume a run exactly.

A checkpoint is one ``torch.save`` file whose content loads with ``torch.load(..., weights_only=True)``:
tensors, dicts, lists, numbers and strings only (no pickled objects), so reading a checkpoint cannot run
code. It holds the model and optimiser state, the grad scaler, the position in training (epoch, step,
batches done in the epoch), the best validation score, and the random-number states of torch (CPU and
CUDA), numpy and Python.

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over the old file:
a rename is atomic on POSIX, so a process killed at any moment leaves either the old or the new checkpoint,
never a torn one.
"""

from __future__ import annotations

from pathlib import Path
import random
from typing import Any

import numpy as np
import torch

from ..fileio import atomic_write


def rng_state() -> dict[str, Any]:
    """The random-number states of torch (CPU, every CUDA device), numpy's global RNG and Python's."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': {'kind': np_kind, 'keys': torch.from_numpy(np_keys.astype(np.int64)), 'pos': int(np_pos),
                  'has_gauss': int(np_has_gauss), 'gauss': float(np_gauss)},
        'python': {'version': py_version, 'state': list(py_state), 'gauss': py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state['torch'])
    np_state = state['numpy']
    np.random.set_state((np_state['kind'], np_state['keys'].numpy().astype(np.uint32), np_state['pos'],
                         np_state['has_gauss'], np_state['gauss']))
    py_state = state['python']
    random.setstate((py_state['version'], tuple(py_state['state']), py_state['gauss']))
    if 'cuda' in state and torch.cuda.is_available():
        cuda_states = state['cuda']
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (tensors and plain containers only) to ``path``."""
    atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = 'cpu') -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, never unpickling arbitrary objects."""
    return torch.load(path, map_location=map_location, weights_only=True)
