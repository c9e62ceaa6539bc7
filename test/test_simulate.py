"""Newton VBD cloth: motion plans, physics checks, and short real simulations (drop, fold, CLI drag).

The simulations are short (a 0.6-1.6 s motion, small garments, few frames) but check physics: free fall
before contact, no NaNs, edge stretch, resting on (not through) the table, overlapping layers after a fold.
The first run JIT-compiles Newton's kernels (about 20 s, then cached in ~/.cache/warp).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from keygrid_ros.data.garments import make_garment
from keygrid_ros.data.simulate import FOLDS, SimConfig, SimResult, physics_checks, plan_motion

newton = pytest.importorskip('newton', reason='Newton (cloth simulator) is not installed')


@pytest.fixture(autouse=True, scope='module')
def _quiet_warp():
    import warp as wp

    wp.config.quiet = True


def test_fold_plan_flips_the_grasped_side_onto_the_other():
    g = make_garment('towel', seed=1)
    cfg = SimConfig(duration=2.0)
    plan = plan_motion(g, 'fold', np.random.default_rng(0), cfg, fold='half')
    assert len(plan.grasps) == 2 and plan.info['fold'] == 'half'
    start_xy = plan.start[:, :2]
    for grasp in plan.grasps:
        assert np.allclose(grasp.positions(0.0), grasp.start)  # no jump at the start
        end = grasp.positions(cfg.duration)
        # Rigid: pairwise distances inside the grasp are kept all the way.
        d0 = np.linalg.norm(grasp.start[:, None] - grasp.start[None], axis=-1)
        mid = grasp.positions(0.3 * cfg.duration)
        assert np.allclose(np.linalg.norm(mid[:, None] - mid[None], axis=-1), d0)
        assert mid[:, 2].max() > 0.1  # carried over the garment, not dragged through it
        # Ends just above the table on the far side of the fold line, inside the garment's footprint.
        assert 0.005 < end[:, 2].min() and end[:, 2].max() < 0.03
        assert np.linalg.norm(end[:, :2].mean(0) - grasp.start[:, :2].mean(0)) > 0.3
        lo, hi = start_xy.min(0) - 0.05, start_xy.max(0) + 0.05
        assert ((end[:, :2] > lo) & (end[:, :2] < hi)).all()
    for name in FOLDS:
        for fold in FOLDS[name]:
            plan_motion(make_garment(name, seed=2), 'fold', np.random.default_rng(1), cfg, fold=fold)


def test_drag_and_drop_plans():
    g = make_garment('pants', seed=3)
    cfg = SimConfig()
    drag = plan_motion(g, 'drag', np.random.default_rng(5), cfg)
    (grasp,) = drag.grasps
    assert np.allclose(grasp.positions(0.0), grasp.start) and grasp.release < drag.duration
    moved = grasp.positions(drag.duration) - grasp.start
    assert 0.2 <= np.linalg.norm(moved[0, :2]) <= 0.45 and moved[0, 2] == pytest.approx(0.01)
    assert drag.start[:, 2].min() == pytest.approx(cfg.particle_radius + 0.001)
    drop = plan_motion(g, 'drop', np.random.default_rng(5), cfg)
    assert not drop.grasps and 0.05 <= drop.start[:, 2].min() - cfg.particle_radius <= 0.26
    # The drop pose is a rigid motion of the rest shape.
    e = g.faces[:, :2]
    assert np.allclose(np.linalg.norm(np.diff(drop.start[e], axis=1), axis=-1),
                       np.linalg.norm(np.diff(g.vertices[e], axis=1), axis=-1))


def _fake(vertices, faces, rest, motion='drop'):
    t = len(vertices)
    return SimResult(vertices.astype(np.float32), faces, rest, np.arange(t) / 30.0, np.zeros((t, 0, 3)), [],
                     {'motion': motion})


def test_physics_checks_catch_bad_sequences():
    g = make_garment('towel', seed=0, target_vertices=300)
    rest = g.vertices + [0, 0, 0.005]
    good = physics_checks(_fake(np.stack([rest, rest]), g.faces, rest))
    assert good['pass'] and good['stretch_p99'] == pytest.approx(1.0)
    stretched = physics_checks(_fake(np.stack([rest, rest * [1.2, 1.2, 1]]), g.faces, rest))
    assert not stretched['stretch_ok'] and not stretched['pass']
    sunk = physics_checks(_fake(np.stack([rest, rest - [0, 0, 0.02]]), g.faces, rest))
    assert not sunk['above_table_ok']
    moving = physics_checks(_fake(np.stack([rest, rest + [0.01, 0, 0]]), g.faces, rest))
    assert not moving['at_rest_ok']  # 0.3 m/s in the last frame
    floating = physics_checks(_fake(np.stack([rest, rest + [0, 0, 0.3]]), g.faces, rest))
    assert not floating['on_table_ok']
    bad = rest.copy()
    bad[3, 1] = np.nan
    assert physics_checks(_fake(np.stack([rest, bad]), g.faces, rest)) == {'finite': False, 'pass': False}
    # A towel folded in half (by hand): two sheets over half the footprint.
    folded = rest.copy()
    left = folded[:, 0] < 0
    folded[left, 0] *= -1
    folded[left, 2] += 0.006
    fold = physics_checks(_fake(np.stack([rest, folded]), g.faces, rest, 'fold'))
    assert fold['overlap_fraction'] > 0.8 and fold['area_ratio'] == pytest.approx(0.5, abs=0.1)
    assert fold['overlap_ok'] and fold['overlap_fraction_start'] < 0.01  # shared edges count twice, rarely


def test_drop_falls_freely_then_rests_on_the_table():
    from keygrid_ros.data.simulate import simulate

    g = make_garment('tshirt', seed=1, target_vertices=800)
    cfg = SimConfig(frames=9, duration=0.8, sim_hz=400, drop_height=(0.1, 0.1), drop_tilt=(0.15, 0.15))
    result = simulate(g, 'drop', seed=2, config=cfg)
    v = result.vertices
    assert v.shape == (9, len(g.vertices), 3) and v.dtype == np.float32
    # Free fall before the first contact (at ~0.14 s): the centre drops 1/2 g t^2 in the first 0.1 s.
    fall = v[0, :, 2].mean() - v[1, :, 2].mean()
    assert fall == pytest.approx(0.5 * 9.81 * 0.1 ** 2, rel=0.1)
    assert np.allclose(result.keypoints, v[:, g.landmark_indices])
    checks = physics_checks(result, 'drop', 1)
    print('drop', result.info['seconds'], checks)
    assert checks['pass'], checks
    assert checks['stretch_p99'] <= 1.1 and checks['min_z'] > -0.002 and checks['final_max_z'] < 0.1


def test_fold_overlaps_layers_with_self_contact():
    from keygrid_ros.data.simulate import simulate

    g = make_garment('towel', seed=4, target_vertices=500)
    cfg = SimConfig(frames=7, duration=1.6, sim_hz=400)
    result = simulate(g, 'fold', seed=3, config=cfg, fold='bottom_up')
    assert result.info['self_contact'] and result.info['fold'] == 'bottom_up'
    checks = physics_checks(result, 'fold', 1)
    print('fold', result.info['seconds'], checks)
    assert checks['pass'], checks
    # Two sheets over most of the final footprint, which is about half the flat towel's.
    assert checks['overlap_fraction'] > 0.6 and checks['area_ratio'] < 0.65
    # The grasped half ends on top of the other; its corners moved about a towel length.
    v = result.vertices
    moved_half = g.uv[:, 1] < 0.0
    assert np.median(v[-1, moved_half, 2]) > np.median(v[-1, ~moved_half, 2]) + 0.002  # a contact gap apart
    for name in FOLDS['towel']['bottom_up'][0]:
        i = g.landmarks[name]
        assert np.linalg.norm(v[-1, i, :2] - v[0, i, :2]) > 0.8 * g.params['length']


def test_cli_drag_writes_a_contract_sequence(tmp_path, capsys):
    from keygrid_ros.cli import main
    from keygrid_ros.data.sequences import load_npz

    out = tmp_path / 'towel_drag.npz'
    rc = main(['simulate', '--garment', 'towel', '--motion', 'drag', '--frames', '6', '--seed', '1',
               '--vertices', '500', '--duration', '1.2', '--fast', '--out', str(out)])
    assert rc == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    seq = load_npz(out)
    assert seq.vertices.shape == (6, info['vertices'], 3) and seq.faces.dtype == np.int32
    assert seq.garment == 'towel' and seq.motion == 'drag' and seq.keypoints.shape[:2] == (6, 6)
    assert seq.info['checks']['stretch_p99'] <= 1.1 and seq.info['checks']['above_table_ok']
    grasp = make_garment('towel', seed=1, target_vertices=500).landmarks[info['grasp']]
    moved = np.linalg.norm(seq.vertices[-1, grasp, :2] - seq.vertices[0, grasp, :2])
    assert moved > 0.15 and not math.isnan(info['seconds'])


def test_dataset_builder_plans_splits_and_resumes(tmp_path):
    from keygrid_ros.data.build_dataset import VAL_SEED_BASE, build, plan_jobs
    from keygrid_ros.data.sequences import Sequence, save_sequence

    config = {'garments': ['tshirt', 'towel'], 'motions': ['drop', 'fold'], 'layers': [1, 2],
              'splits': {'train': 2, 'val': [77]}, 'frames': 4}
    jobs = plan_jobs(config, tmp_path)
    # towel has no two-layer variant: tshirt 2 layers x 2 motions x 3 seeds + towel 2 motions x 3 seeds.
    assert len(jobs) == 18
    assert {j.seed for j in jobs if j.split == 'train'} == {0, 1} and {j.seed for j in jobs if j.split == 'val'} == {77}
    assert VAL_SEED_BASE > 1000 and any(j.path.endswith('val/tshirt_2l_fold_77.npz') for j in jobs)
    # Every file already there (as after an interrupted run that finished them): nothing is simulated.
    for j in jobs:
        save_sequence(j.path, Sequence(np.zeros((4, 3, 3), np.float32), np.array([[0, 1, 2]]), j.garment, j.motion,
                                       info={'seconds': 1.0, 'fold': j.fold, 'checks': {'pass': True}}))
    manifest = build(config, tmp_path, workers=1)
    assert len(manifest['sequences']) == 18 and len(manifest['splits']['val']) == 6
    on_disk = json.loads((tmp_path / 'manifest.json').read_text())
    assert on_disk['splits']['train'][0].startswith('train/') and on_disk['sequences'][0]['checks']['pass']


def test_dataset_builder_cycles_fold_kinds_and_refuses_mismatched_files(tmp_path):
    from keygrid_ros.data.build_dataset import build, plan_jobs
    from keygrid_ros.data.sequences import Sequence, save_sequence
    from keygrid_ros.data.simulate import FOLDS

    config = {'garments': ['tshirt', 'pants'], 'motions': ['fold', 'drag'], 'splits': {'train': 3, 'val': 3},
              'frames': 4}
    jobs = plan_jobs(config, tmp_path)
    for split in ('train', 'val'):
        for garment in ('tshirt', 'pants'):
            kinds = [j.fold for j in jobs if (j.split, j.garment, j.motion) == (split, garment, 'fold')]
            assert set(kinds) == set(FOLDS[garment]), (split, garment, kinds)  # every kind trained and validated
    assert all(j.fold is None for j in jobs if j.motion == 'drag')
    assert all(j.fold is None for j in plan_jobs(dict(config, folds='random'), tmp_path))
    with pytest.raises(ValueError, match='folds'):
        plan_jobs(dict(config, folds='sometimes'), tmp_path)

    # A finished file whose fold kind is not the plan's is reported, not overwritten.
    job = next(j for j in jobs if j.motion == 'fold')
    wrong = next(k for k in FOLDS[job.garment] if k != job.fold)
    save_sequence(job.path, Sequence(np.zeros((4, 3, 3), np.float32), np.array([[0, 1, 2]]), job.garment, 'fold',
                                     info={'fold': wrong, 'seconds': 1.0}))
    before = Path(job.path).read_bytes()
    with pytest.raises(ValueError, match=f'folds {wrong!r}, the plan says {job.fold!r}'):
        build(config, tmp_path, workers=1)
    assert Path(job.path).read_bytes() == before
