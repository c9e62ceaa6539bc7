"""``tools/gpu_check.sh ablation``, dry-run on the CPU with a tiny model.

The script runs only where a GPU is lent, for minutes at a time: a renamed option or a broken summary line would
cost a whole loan. This runs the same script on the CPU, on tiny sequences, and checks what it reports.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import subprocess
import sys
import tarfile

import pytest
from test_trainer import TINY_MODEL, sheet_sequence
import yaml

from keygrid_ros.data.sequences import save_sequence

ROOT = Path(__file__).resolve().parents[1]


def tiny_model_settings() -> list[str]:
    """TINY_MODEL as the script's EXTRA words (dotted keys, YAML flow values without spaces)."""
    return [f'model.{key}={json.dumps(value).replace(" ", "")}' for key, value in TINY_MODEL.items()]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')
def test_ablation_trains_each_arm_with_its_switch_and_scores_it(tmp_path):
    kit = tmp_path / 'kit'
    for split, names in (('train', ['tshirt_drop_0', 'tshirt_drag_0']), ('val', ['tshirt_drop_10000'])):
        (kit / 'data' / split).mkdir(parents=True)
        for i, name in enumerate(names):
            save_sequence(kit / 'data' / split / f'{name}.npz',
                          sheet_sequence(phase=0.1 * i, motion=name.split('_')[1]))
    out, runs = tmp_path / 'out', tmp_path / 'runs'
    extra = ['num_points=64', 'batch_size=2', 'picture_every=0', *tiny_model_settings()]
    env = {**os.environ, 'DEVICE': 'cpu', 'ARMS': 'full nosim', 'SEEDS': '3', 'EPOCHS': '2', 'VAL_EVERY': '0',
           'THREADS': '1', 'KIT': str(kit), 'OUT': str(out), 'RUNS': str(runs), 'EXTRA': ' '.join(extra),
           # the script calls python3: the one running these tests, with the package's dependencies
           'PATH': f'{Path(sys.executable).parent}{os.pathsep}{os.environ.get("PATH", "")}'}
    done = subprocess.run(['bash', 'tools/gpu_check.sh', 'ablation'], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    lines = [json.loads(line) for line in (out / 'ablation.jsonl').read_text().splitlines()]
    trained = {line['arm']: line['train'] for line in lines if 'train' in line}
    assert set(trained) == {'full', 'nosim'}
    # 2 training sequences x 10 frames, batch 2, 2 epochs
    assert all(t['epochs'] == 2 and t['clouds_seen'] == 40 for t in trained.values())
    scored = {(line['arm'], line['keypoints']): line for line in lines if 'keypoints' in line}
    assert set(scored) == {(arm, mode) for arm in ('full', 'nosim') for mode in ('hard', 'snapped')}
    for line in scored.values():
        assert line['seed'] == 3 and 0 <= line['das'] <= 100 and 0 < line['coverage'] <= 1
        assert set(line['by_motion']) == {'drop'}  # the one held-out sequence

    # Each arm trained with its own switch and nothing else changed; the logs travel, the weights do not.
    with tarfile.open(out / 'ablation_logs.tar.gz') as archive:
        names = archive.getnames()
        configs = {arm: yaml.safe_load(archive.extractfile(f'./{arm}_s3/config.yaml')) for arm in trained}
    assert not [name for name in names if name.endswith(('.safetensors', '.pt'))]
    assert configs['full']['model']['use_similarity_loss'] is True
    assert configs['nosim']['model']['use_similarity_loss'] is False
    for config in configs.values():
        config['model'].pop('use_similarity_loss')
        config.pop('run_name')
    assert configs['full'] == configs['nosim']
    assert configs['full']['seed'] == 3 and configs['full']['device'] == 'cpu'
