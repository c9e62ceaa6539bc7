"""Experiment (session 11): average the weights of Key-Grid files fine-tuned from one start (a "model soup").

Fine-tuning runs that start from the same model file and differ only in seed, epoch count or a loss weight
often land in one basin, where their average scores at least as well as the best of them (Wortsman et al.,
2022). Batch-norm statistics are averaged too (no re-estimation). Results in docs/results.md ("Averaged
fine-tunes").

    python docs/experiments/model_soup.py out/soup.safetensors runs/tshirt_ft0/model_last.safetensors \\
        runs/tshirt_ft0_seed1/model_last.safetensors
    keygrid evaluate --model out/soup.safetensors --data 'out/dataset_medium/val/tshirt_*.npz' --keypoints snapped
"""

from __future__ import annotations

import sys

import torch

from keygrid_ros.model.io import load_model, save_model


def soup(out: str, paths: list[str]) -> None:
    """Write the element-wise mean of the float tensors of ``paths`` (same architecture) to ``out``."""
    models = [load_model(p)[0] for p in paths]
    states = [m.state_dict() for m in models]
    mean = {name: torch.stack([s[name].float() for s in states]).mean(0).to(t.dtype) if t.is_floating_point()
            else t for name, t in states[0].items()}
    models[0].load_state_dict(mean)
    save_model(out, models[0], training_data={'soup_of': paths})


if __name__ == '__main__':
    soup(sys.argv[1], sys.argv[2:])
