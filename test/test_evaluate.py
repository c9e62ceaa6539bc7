"""keygrid evaluate / predict on a tiny model file and synthetic sequences: JSON contract, coordinates, sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from keygrid_ros.cli import main
from keygrid_ros.data.dataset import Augment, SequenceDataset
from keygrid_ros.data.sequences import Sequence, load_sequence, save_sequence
from keygrid_ros.model.config import KeyGridConfig
from keygrid_ros.model.io import save_model
from keygrid_ros.model.keygrid import KeyGrid
from keygrid_ros.train import evaluate, metrics

TINY = KeyGridConfig(
    num_points=256, sa_npoints=(128, 64, 16, 8), sa_nsamples=((8, 16),) * 4,
    sa_mlps=(((8, 8, 16), (8, 8, 16)), ((16, 16, 32), (16, 16, 32)), ((32, 32, 64), (32, 32, 64)),
             ((64, 64, 64), (64, 64, 64))),
    grid_resolution=(8, 8, 4), num_keypoints=6,
)
NAMES = ['collar', 'hem_l', 'hem_r', 'sleeve_l', 'sleeve_r', 'centre']


def sheet(frames: int = 6, n: int = 18, motion: str = 'fold', with_keypoints: bool = True) -> Sequence:
    """A sheet that bends and falls (metres), optionally with 4 corner keypoints as ground truth."""
    u, v = np.meshgrid(np.linspace(0, 0.6, n), np.linspace(0, 0.4, n), indexing='ij')
    base = np.stack([u.ravel(), v.ravel(), np.zeros(u.size)], -1)
    faces = [[i * n + j, (i + 1) * n + j, i * n + j + 1] for i in range(n - 1) for j in range(n - 1)]
    verts = []
    for t in range(frames):
        frame = base.copy()
        frame[:, 2] = 0.15 * t / frames * np.sin(np.pi * frame[:, 0] / 0.6) + 0.5 - 0.05 * t
        verts.append(frame + [1.0, -2.0, 0.0])
    verts = np.asarray(verts, np.float32)
    corners = [0, n - 1, n * (n - 1), n * n - 1]
    return Sequence(verts, np.asarray(faces, np.int32), 'sheet', motion,
                    verts[:, corners] if with_keypoints else None, ['a', 'b', 'c', 'd'] if with_keypoints else None)


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp('evaluate')
    torch.manual_seed(0)
    model = save_model(folder / 'tiny.safetensors', KeyGrid(TINY).eval(), keypoint_names=NAMES,
                       training_data={'train': ['synthetic']}, metrics={'val_das': 50.0})
    data = folder / 'data'
    folded = sheet(motion='fold')
    folded.info['fold'] = 'half'
    save_sequence(data / 'fold.npz', folded)
    save_sequence(data / 'drop.npz', sheet(frames=5, motion='drop', with_keypoints=False))
    return {'model': model, 'data': data, 'fold': data / 'fold.npz', 'drop': data / 'drop.npz', 'dir': folder}


def last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_evaluate_json_contract(files, capsys):
    assert main(['evaluate', '--model', str(files['model']), '--data', str(files['data']), '--json',
                 '--device', 'cpu']) == 0
    report = last_json(capsys)
    for key in ('das', 'das_reference_frame', 'das_correspondence', 'sequences'):
        assert key in report
    assert report['das'] == report['das_correspondence']
    assert 0 <= report['das'] <= 100 and 0 <= report['das_reference_frame'] <= 100
    assert len(report['sequences']) == 2 and report['frames'] == 11
    by_source = {Path(s['source']).name: s for s in report['sequences']}
    assert by_source['fold.npz']['miou'] is not None and 'miou' not in by_source['drop.npz']
    assert set(report['by_motion']) == {'drop', 'fold'}
    # The fold kind the simulator recorded is reported per sequence and as its own group.
    assert by_source['fold.npz']['fold'] == 'half' and by_source['drop.npz']['fold'] is None
    assert report['by_fold'] == {'half': {**{k: by_source['fold.npz'][k] for k in
                                            ('das', 'das_correspondence', 'das_reference_frame')}, 'sequences': 1}}
    assert report['miou'] is not None  # pooled over the sequences that have ground truth


def test_evaluate_perturbations_are_seeded(files, capsys):
    args = ['evaluate', '--model', str(files['model']), '--data', str(files['fold']), '--json', '--device', 'cpu',
            '--noise', '0.04', '--points', '128', '--se3', '--seed', '3']
    assert main(args) == 0
    first = last_json(capsys)
    assert main(args) == 0
    assert last_json(capsys) == first
    assert first['perturbation'] == {'noise': 0.04, 'points': 128, 'se3': True, 'seed': 3}
    assert first['points'] == 128


def test_evaluate_errors_name_the_file(files, tmp_path, capsys):
    assert main(['evaluate', '--model', str(tmp_path / 'missing.safetensors'), '--data', str(files['fold']),
                 '--json']) == 2
    assert 'missing.safetensors' in capsys.readouterr().err


@pytest.mark.parametrize('mode', ['file', 'snapped'])
def test_predict_writes_keypoints_in_input_coordinates(files, tmp_path, mode):
    out = tmp_path / 'kp.npz'
    assert main(['predict', '--model', str(files['model']), '--data', str(files['fold']), '--out', str(out),
                 '--device', 'cpu', '--keypoints', mode]) == 0
    with np.load(out) as kp:
        keypoints, names, vertex_ids = kp['keypoints'], kp['keypoint_names'], kp['vertex_indices']
    seq = load_sequence(files['fold'])
    assert keypoints.dtype == np.float32 and keypoints.shape == (seq.frames, TINY.num_keypoints, 3)
    assert names.tolist() == NAMES
    # Hard (the file's mode) and snapped keypoints are input points: each one sits on a mesh vertex of its own
    # frame, in metres.
    on_vertex = np.take_along_axis(seq.vertices, vertex_ids[..., None], axis=1)
    np.testing.assert_allclose(keypoints, on_vertex, atol=1e-5)


@pytest.mark.parametrize('augment', [evaluate.Perturbation(se3=True).augment(), Augment(se3=True, stretch=0.3)])
def test_predict_frames_inverts_normalisation_and_se3(files, augment):
    """An 'identity' detector (keypoints = the first K input points) must come back onto the mesh vertices."""
    seq = load_sequence(files['fold'])
    dataset = SequenceDataset([files['fold']], num_points=200, augment=augment, seed=1, keypoints=False)
    pred = evaluate.predict_frames(lambda points: points[:, :4], dataset, 0, batch_size=4)
    expected = np.take_along_axis(seq.vertices, pred.sample_indices[:, :4, None], axis=1)
    np.testing.assert_allclose(pred.keypoints, expected, atol=1e-5)
    np.testing.assert_array_equal(pred.vertex_indices, pred.sample_indices[:, :4])
    # The clouds the model saw, back in the file's coordinates (what tracking runs on).
    clouds = np.take_along_axis(seq.vertices, pred.sample_indices[..., None], axis=1)
    np.testing.assert_allclose(pred.clouds, clouds, atol=1e-5)


def test_score_sequence_of_the_ground_truth_is_perfect(files):
    seq = load_sequence(files['fold'])
    gt, gt_vertices = metrics.correspondence_ground_truth(seq.vertices, 6)
    T = seq.frames
    pred = evaluate.FramePredictions(np.arange(T), gt, np.tile(gt_vertices, (T, 1)), np.tile(gt_vertices, (T, 1)))
    scores = evaluate.score_sequence(seq, pred)
    assert scores['das'] == pytest.approx(100.0) and scores['das_reference_frame'] == pytest.approx(100.0)
    assert scores['ground_truth_vertices'] == gt_vertices.tolist()


def test_timeline_finds_the_frame_where_a_keypoint_switches(files, capsys):
    """Ground-truth keypoints, except that keypoint 2 jumps onto ground-truth vertex 4 from frame 3 on."""
    seq = load_sequence(files['fold'])
    gt, gt_vertices = metrics.correspondence_ground_truth(seq.vertices, 6)
    keypoints = gt.copy()
    keypoints[3:, 2] = gt[3:, 4]
    T = seq.frames
    pred = evaluate.FramePredictions(np.arange(T), keypoints, np.tile(gt_vertices, (T, 1)),
                                     np.tile(gt_vertices, (T, 1)))
    scores = evaluate.score_sequence(seq, pred)
    assert scores['switches'] == [0, 0, 1, 0, 0, 0]
    assert scores['timeline'][2] == [[2, 0, 2], [4, 3, T - 1]]
    assert scores['timeline'][0] == [[0, 0, T - 1]]
    assert evaluate.summarize([scores])['switches'] == pytest.approx(1 / 6)
    # Frames 3+ reach 5 of the 6 ground-truth vertices (keypoints 2 and 4 share one), frames 0-2 all 6.
    assert scores['coverage'] == pytest.approx((3 * 6 + (T - 3) * 5) / T / 6)

    # The CLI prints the runs under each sequence with --timeline.
    assert main(['evaluate', '--model', str(files['model']), '--data', str(files['fold']), '--device', 'cpu',
                 '--timeline']) == 0
    lines = capsys.readouterr().out.splitlines()
    runs = [line for line in lines if line.strip().startswith('kp')]
    assert len(runs) == TINY.num_keypoints and all('gt' in line for line in runs)


def test_robustness_sweep_json_and_plot(files, tmp_path, capsys):
    prefix = tmp_path / 'sweep'
    assert main(['evaluate', '--model', str(files['model']), '--data', str(files['fold']), '--json', '--device',
                 'cpu', '--sweep', '--sweep-out', str(prefix)]) == 0
    report = last_json(capsys)
    sweep = json.loads(Path(f'{prefix}.json').read_text())
    assert Path(report['plot']).is_file() and Path(report['plot']).stat().st_size > 10_000
    assert [e['sigma'] for e in sweep['noise']] == [0.02, 0.04, 0.06, 0.08]
    assert [e['points'] for e in sweep['points']] == [128]  # only levels below the model's 256 points
    for entry in [sweep['clean'], sweep['se3'], *sweep['noise'], *sweep['points']]:
        assert 0 <= entry['das'] <= 100 and 0 <= entry['das_reference_frame'] <= 100
        assert 0 < entry['coverage'] <= 1  # a perturbation that collapses the keypoints shows here
    assert report['robustness']['clean']['das'] == pytest.approx(report['das'])
    assert report['robustness']['clean']['coverage'] == pytest.approx(report['coverage'])


def test_extreme_point_baseline_picks_the_farthest_point_along_each_corner_direction(rng):
    from keygrid_ros.train.evaluate import directions, extreme_point_keypoint_fn

    points = torch.from_numpy(rng.uniform(-1, 1, (2, 500, 3)).astype(np.float32))
    keypoints = extreme_point_keypoint_fn(8)(points)
    dirs = directions(8)
    for b in range(2):
        for k in range(8):  # brute force: the point with the largest projection on corner direction k
            best = max(range(500), key=lambda n: float(points[b, n] @ dirs[k]))
            assert torch.equal(keypoints[b, k], points[b, best])
    assert torch.allclose(directions(5).norm(dim=1), torch.ones(5))
    # It reads the outline: a permutation of the input changes nothing.
    perm = torch.randperm(500)
    assert torch.equal(extreme_point_keypoint_fn(8)(points[:, perm]), keypoints)


def test_evaluation_does_not_depend_on_the_order_of_the_files(files):
    """Point samples are drawn per position in the file list; the evaluator sorts it, so any order scores alike."""
    from keygrid_ros.train.evaluate import evaluate_paths, extreme_point_keypoint_fn

    paths = [files['fold'], files['drop']]
    keypoint_fn = extreme_point_keypoint_fn(4)
    forward = evaluate_paths(keypoint_fn, paths, num_points=128)
    backward = evaluate_paths(keypoint_fn, paths[::-1], num_points=128)
    assert [s['source'] for s in forward['sequences']] == [s['source'] for s in backward['sequences']]
    assert forward['das'] == backward['das']


def test_landmark_oracle_tracks_the_ground_truth_and_scores_full_marks_on_rigid_motion(tmp_path, capsys):
    from keygrid_ros.train.evaluate import landmark_predictions

    # A sheet that only moves rigidly: every landmark keeps its nearest ground-truth vertex, so the ceiling is 100.
    rigid = sheet(frames=6)
    shift = np.linspace(0, 0.5, 6, dtype=np.float32)[:, None, None] * np.array([1.0, 0.5, -0.2], np.float32)
    rigid.vertices = rigid.vertices[:1] + shift
    rigid.keypoints = rigid.keypoints[:1] + shift
    save_sequence(tmp_path / 'rigid.npz', rigid)
    pred = landmark_predictions(rigid, num_keypoints=3, max_frames=4)
    assert pred.keypoints.shape == (4, 3, 3)
    chosen = [int(np.argmin(np.linalg.norm(rigid.keypoints[0] - k, axis=1))) for k in pred.keypoints[0]]
    assert len(set(chosen)) == 3 and np.allclose(pred.keypoints, rigid.keypoints[:4, chosen])
    assert main(['evaluate', '--baseline', 'landmarks', '--num-keypoints', '3', '--data', str(tmp_path / 'rigid.npz'),
                 '--json']) == 0
    report = last_json(capsys)
    assert report['das'] == pytest.approx(100.0) and report['model'] == 'baseline:landmarks'


def test_landmark_oracle_refuses_perturbations_and_files_without_landmarks(files, capsys):
    assert main(['evaluate', '--baseline', 'landmarks', '--data', str(files['fold']), '--se3']) == 2
    assert 'do not apply' in capsys.readouterr().err
    assert main(['evaluate', '--baseline', 'landmarks', '--data', str(files['drop'])]) == 2
    assert 'no ground-truth landmarks' in capsys.readouterr().err


def test_canonicalize_is_reported_and_refused_for_students(files, tmp_path, capsys):
    from keygrid_ros.model.sprin import SPRINConfig, SPRINSeg
    from keygrid_ros.model.student import save_student

    args = ['evaluate', '--model', str(files['model']), '--data', str(files['fold']), '--json', '--device', 'cpu',
            '--canonicalize', 'frame']
    assert main(args) == 0
    assert last_json(capsys)['canonicalize'] == 'frame'
    student = save_student(tmp_path / 'student.safetensors', SPRINSeg(SPRINConfig.tiny()), teacher={'file': 't'})
    assert main(['evaluate', '--model', str(student), '--data', str(files['fold']), '--canonicalize', 'up']) == 2
    assert 'SE(3)-invariant' in capsys.readouterr().err


def test_tracking_and_surface_sampling_are_reported_and_misuse_refused(files, capsys):
    args = ['evaluate', '--model', str(files['model']), '--data', str(files['fold']), '--json', '--device', 'cpu']
    assert main(args + ['--tracking', '--tracking-radius', '0.1', '--sampling', 'surface', '--keypoints',
                        'snapped']) == 0
    report = last_json(capsys)
    assert report['sampling'] == 'surface' and report['tracking']['patch_radius'] == 0.1
    assert 0 <= report['das'] <= 100
    assert main(args) == 0
    assert last_json(capsys)['tracking'] is None
    assert main(args + ['--tracking-gate', '0.02']) == 2
    assert 'need --tracking' in capsys.readouterr().err
    assert main(args + ['--tracking', '--sweep']) == 2
    assert 'without --tracking' in capsys.readouterr().err
    assert main(['evaluate', '--baseline', 'landmarks', '--data', str(files['fold']), '--tracking']) == 2
    assert 'do not apply' in capsys.readouterr().err


@pytest.fixture(scope='module')
def two_sweeps(files) -> dict[str, Path]:
    """Robustness sweeps of two differently initialised tiny models on the fold file (the JSON files)."""
    torch.manual_seed(1)
    other = save_model(files['dir'] / 'other.safetensors', KeyGrid(TINY).eval(), keypoint_names=NAMES)
    out = {}
    for name, model in (('first', files['model']), ('second', other)):
        out[name] = files['dir'] / f'sweep_{name}'
        assert main(['evaluate', '--model', str(model), '--data', str(files['fold']), '--device', 'cpu',
                     '--json', '--sweep', '--sweep-out', str(out[name])]) == 0
    return {name: Path(f'{prefix}.json') for name, prefix in out.items()}


def table_rows(markdown: str) -> dict[str, list[str]]:
    lines = [line.strip('|').split('|') for line in markdown.strip().splitlines()]
    header = [cell.strip() for cell in lines[0]]
    return {cells[0].strip(): dict(zip(header, (c.strip() for c in cells))) for cells in lines[2:]}


def test_compare_puts_each_sweeps_numbers_in_its_row_and_column(two_sweeps, files, tmp_path, capsys):
    sweeps = {name: json.loads(path.read_text()) for name, path in two_sweeps.items()}
    assert sweeps['first']['data'] == [str(files['fold'].resolve())]  # the sweep says what it scored
    prefix = tmp_path / 'ablation'
    assert main(['compare', str(two_sweeps['first']), str(two_sweeps['second']), '--labels', 'full', 'other',
                 '--out', str(prefix)]) == 0
    assert Path(f'{prefix}.png').stat().st_size > 10_000
    rows = table_rows(Path(f'{prefix}.md').read_text())
    assert list(rows) == ['full', 'other']
    for label, name in (('full', 'first'), ('other', 'second')):
        sweep, row = sweeps[name], rows[label]
        assert float(row['clean DAS (B)']) == pytest.approx(sweep['clean']['das_correspondence'], abs=0.05)
        assert float(row['fold']) == pytest.approx(sweep['clean']['by_motion']['fold']['das'], abs=0.05)
        for entry in sweep['noise']:
            assert float(row[f'noise {entry["sigma"]:g}']) == pytest.approx(entry['das_correspondence'], abs=0.05)
        assert float(row['128 points']) == pytest.approx(sweep['points'][0]['das_correspondence'], abs=0.05)
        assert float(row['SE(3)']) == pytest.approx(sweep['se3']['das_correspondence'], abs=0.05)
    assert 'full' in capsys.readouterr().out  # the table is printed too


def test_compare_lines_sweeps_over_other_levels_up_by_level(two_sweeps, tmp_path, monkeypatch):
    """Under --allow-mismatch the first sweep's levels must not decide the columns or the point-count axis."""
    first = json.loads(two_sweeps['first'].read_text())
    # A sweep over other point counts and only the lowest noise level, given first.
    other = {**first, 'noise': first['noise'][:1],
             'points': [{**e, 'points': 3 * e['points'], 'das_correspondence': 10.0 + i}
                        for i, e in enumerate(first['points'])]}
    other_path = tmp_path / 'other_levels.json'
    other_path.write_text(json.dumps(other))
    figures = []
    monkeypatch.setattr('keygrid_ros.plotting.save_figure', lambda fig, path, dpi=110: figures.append(fig) or path)
    out = tmp_path / 'cmp'
    assert main(['compare', str(other_path), str(two_sweeps['first']), '--labels', 'other', 'first',
                 '--allow-mismatch', '--out', str(out)]) == 0
    rows = table_rows(Path(f'{out}.md').read_text())
    for entry in first['noise'][1:]:  # levels only the second sweep has are columns too
        level = f'noise {entry["sigma"]:g}'
        assert rows['other'][level] == '–'
        assert float(rows['first'][level]) == pytest.approx(entry['das_correspondence'], abs=0.05)
    for i, entry in enumerate(other['points']):
        assert float(rows['other'][f'{entry["points"]} points']) == pytest.approx(10.0 + i)
        assert rows['first'][f'{entry["points"]} points'] == '–'
    # Each line's points sit over the tick labelled with its own count.
    points_axis = figures[0].axes[1]
    ticks = dict(zip(points_axis.get_xticks(), (t.get_text() for t in points_axis.get_xticklabels())))
    for line, sweep in zip(points_axis.get_lines(), (other, first)):
        counts = [str(sweep.get('clean_points', 2048))] + [str(e['points']) for e in sweep['points']]
        assert [ticks[x] for x in line.get_xdata()] == counts
    labels = [int(t) for t in ticks.values()]
    assert labels == sorted(labels, reverse=True)  # most points on the left, as before


def test_compare_refuses_what_cannot_be_compared(two_sweeps, tmp_path, capsys):
    first = json.loads(two_sweeps['first'].read_text())
    assert len(first['data_fingerprints']) == 1  # one file scored, known by its content
    other_data = tmp_path / 'other_data.json'
    other_data.write_text(json.dumps({**first, 'data_fingerprints': ['0123456789abcdef']}))
    # Files written before fingerprints (data known by path alone): another path is other data.
    old_elsewhere = tmp_path / 'old_elsewhere.json'
    old_elsewhere.write_text(json.dumps({key: value for key, value in first.items() if key != 'data_fingerprints'}
                                        | {'data': ['/somewhere/else.npz']}))
    # The same data at another path (another machine's copy) is the same data.
    copied = tmp_path / 'copied.json'
    copied.write_text(json.dumps({**first, 'data': ['/another/machine/fold.npz']}))
    fewer_levels = tmp_path / 'fewer_levels.json'
    fewer_levels.write_text(json.dumps({**first, 'noise': first['noise'][:2]}))
    broken = tmp_path / 'broken.json'
    broken.write_text('{"clean": ')
    not_a_sweep = tmp_path / 'report.json'
    not_a_sweep.write_text(json.dumps({'das': 50.0}))
    out = str(tmp_path / 'cmp')
    for path, says in ((other_data, 'different data'), (old_elsewhere, 'different data'),
                       (fewer_levels, 'different levels'), (broken, 'not a readable JSON'),
                       (not_a_sweep, "no 'clean' entry")):
        assert main(['compare', str(two_sweeps['first']), str(path), '--out', out]) == 2
        assert says in capsys.readouterr().err
    assert not Path(f'{out}.png').exists()  # nothing half-written
    assert main(['compare', str(two_sweeps['first']), str(copied), '--out', out]) == 0
    # Asked for, sweeps over other levels are compared; the missing levels show as '-'.
    assert main(['compare', str(two_sweeps['first']), str(fewer_levels), '--allow-mismatch', '--out', out]) == 0
    assert table_rows(Path(f'{out}.md').read_text())['fewer_levels']['noise 0.08'] == '–'
    assert main(['compare', str(two_sweeps['first']), str(two_sweeps['first']), '--out', out]) == 2  # same label
    assert 'labels must differ' in capsys.readouterr().err
