"""``keygrid evaluate --model MODEL --data PATH [PATH ...] [--json]``: keypoint consistency (DAS) of a model.

Scores every sequence (``.npz``, Key-Grid ``.txt``, OBJ frame folders, or folders of them) with both DAS
protocols (``keygrid_ros.train.evaluate``): ``das`` = ``das_correspondence`` (protocol B, Skeleton Merger DAS
against FPS vertices of the first frame tracked by index) and ``das_reference_frame`` (protocol A, SC3K), plus
mIoU at 0.1 when the files have ground-truth keypoints. ``--noise``, ``--points`` and ``--se3`` perturb the
input (robustness protocol); ``--sweep`` runs the paper's whole robustness sweep and writes a PNG and a JSON.
``--detections OUT_BAG ... --data TRUTH.npz ...`` scores what the node published instead of a model
(:mod:`keygrid_ros.train.detection_scoring`), adding ``scored`` and ``missed`` frame counts.

With ``--json`` the last stdout line is one JSON object: ``das``, ``das_reference_frame``, ``das_correspondence``,
``das_forward``, ``das_backward``, ``miou``, ``frames``, ``coverage`` (per frame, the share of the ground-truth
vertices that some keypoint is nearest to: collapsed keypoints score DAS (B) high and coverage low),
``switches`` (mean per keypoint and sequence: how often a keypoint's nearest ground-truth vertex changes),
``by_motion``, ``by_fold`` (per fold kind, when the files are simulated folds), ``sequences`` (per-sequence
results, with ``switches`` per keypoint and ``timeline``: per keypoint the runs ``[ground-truth id, first
frame, last frame]`` of its nearest ground-truth vertex), ``model``, ``perturbation``, ``points`` (and
``robustness``, ``plot`` with ``--sweep``).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
import sys

from ..params import CANONICALIZATIONS, KEYPOINT_MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--model', help='model file (.safetensors)')
    source.add_argument('--baseline', choices=('extreme-points', 'landmarks'),
                        help="score a reference instead of a model. 'extreme-points': training-free, keypoint k = "
                             "the input point farthest along fixed direction k (the 8 cube corners for K = 8). "
                             "'landmarks': a perfect landmark tracker, K ground-truth landmarks of the file "
                             'tracked exactly (simulated files only; no perturbations)')
    source.add_argument('--detections', nargs='+', metavar='BAG',
                        help="score what the node published instead of a model: output bags of 'keygrid detect "
                             "--bag' (or recordings of the node's markers or keypoints topic), each against the "
                             "--data file at the same position, the meshes 'keygrid render --mesh-out' wrote for "
                             'the bag the node ran on; frames are matched by stamp')
    parser.add_argument('--num-keypoints', type=int, default=8, help='K of --baseline (default 8)')
    add_keypoint_arguments(parser)
    parser.add_argument('--data', required=True, nargs='+', metavar='PATH',
                        help='sequence files (.npz, Key-Grid .txt), OBJ frame folders, or folders of sequences; '
                             'with --detections, one rendered ground-truth file per bag, in the same order')
    parser.add_argument('--json', action='store_true', help='print one JSON object as the last stdout line')
    parser.add_argument('--noise', type=float, default=0.0, metavar='SIGMA',
                        help='Gaussian noise on the input, sigma in normalised units (paper: 0.02-0.08)')
    parser.add_argument('--points', type=int, default=None, metavar='N',
                        help='FPS-downsample the input to N points (paper: 1024, 512, 256, 128)')
    parser.add_argument('--se3', action='store_true', help='random rotation + translation of every frame (seeded)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the sampling and the perturbations')
    parser.add_argument('--sampling', choices=('fps', 'surface'), default='fps',
                        help="how each frame's points are drawn: 'fps' (default, the released code) picks mesh "
                             "vertices, the same ones in every frame when the mesh has fewer than the model's "
                             "points; 'surface' samples the faces afresh in every frame, as a depth sensor does")
    parser.add_argument('--tracking', action='store_true',
                        help="the node's tracking mode: the model's keypoints start tracks on the first frames and "
                             "the tracker (the node's defaults: tracking.method cpd) carries them from frame to frame "
                             '(frames in order; sequence coordinates)')
    parser.add_argument('--tracking-radius', type=float, default=None, metavar='M',
                        help='tracking patch radius, metres (default: the node default, 0.06)')
    parser.add_argument('--tracking-gate', type=float, default=None, metavar='M',
                        help='detections within this distance pull their tracked keypoint half way (default 0: '
                             'never)')
    parser.add_argument('--sweep', action='store_true',
                        help='robustness sweep: noise 0.02..0.08, points 1024..128, SE(3); writes PNG + JSON')
    parser.add_argument('--sweep-out', default='robustness', metavar='PREFIX',
                        help='file prefix of the sweep outputs: PREFIX.png and PREFIX.json (default: robustness)')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda', ... (default: auto)")
    parser.add_argument('--batch-size', type=int, default=16, help='frames per forward pass (default: 16)')
    parser.add_argument('--max-frames', type=int, default=None, help='use only the first N frames of each sequence')
    parser.add_argument('--timeline', action='store_true',
                        help="print each keypoint's nearest ground-truth vertex frame by frame, as runs "
                             "('gt3 0-61 | gt5 62-127': it switched at frame 62); always in the JSON")


def add_keypoint_arguments(parser: argparse.ArgumentParser) -> None:
    """``--keypoints`` and ``--canonicalize``, shared by evaluate and predict."""
    parser.add_argument('--keypoints', choices=('file', *KEYPOINT_MODES), default='file',
                        help="'hard': the input point of largest weight (the released test mode), 'soft': the "
                             "weighted mean, 'snapped': the weighted mean moved to the nearest input point (the "
                             "node's default keypoint_mode), 'file': the model file's setting (default; hard for "
                             'Key-Grid files, soft for students)')
    parser.add_argument('--canonicalize', choices=CANONICALIZATIONS, default='none',
                        help="turn each cloud into a pose read from its own shape before a Key-Grid model, for "
                             "clouds whose z is not up: 'up' (least-spread axis, signed by the relief, to +z), "
                             "'frame' (also the longest axis to +x, fixing the yaw), 'none' (default: as given). "
                             'Students are SE(3)-invariant and need none')


def load_keypoint_fn(model_path: str, device: str = 'auto', mode: str = 'file', canonicalize: str = 'none'):
    """A model file (Key-Grid or USEEK student, told apart by the file) -> (:data:`KeypointFn`, the model).

    ``mode``: 'hard', 'soft', 'snapped' (the soft keypoints moved to their nearest input point, as the node's
    ``keypoint_mode: snapped``) or 'file' (the file's own setting). ``canonicalize``: one of ``CANONICALIZATIONS``
    (Key-Grid files only; see ``KeypointModel.load``)."""
    import torch

    from ..model.student import load_keypoint_model, model_type_of

    if mode != 'file' and mode not in KEYPOINT_MODES:
        raise ValueError(f'keypoint mode {mode!r} is not file or one of {list(KEYPOINT_MODES)}')
    hard = None if mode == 'file' else mode == 'hard'  # snapped: the soft keypoints, snapped below
    extra = {}  # an unknown canonicalize is refused by KeypointModel
    if canonicalize != 'none':
        if model_type_of(model_path) != 'keygrid':
            raise ValueError(f'{model_path}: canonicalize applies to Key-Grid models; a student is SE(3)-invariant')
        extra['canonicalize'] = canonicalize
    model = load_keypoint_model(model_path, device=device, hard=hard, **extra)

    def keypoint_fn(points):  # (B, N, 3) -> (B, K, 3)
        keypoints = model.predict(points).keypoints
        if mode != 'snapped':
            return keypoints
        points = points.to(keypoints.device, keypoints.dtype)
        nearest = torch.cdist(keypoints, points).argmin(-1)  # (B, K)
        return torch.gather(points, 1, nearest.unsqueeze(-1).expand(-1, -1, 3))

    return keypoint_fn, model


def run(args: argparse.Namespace) -> int:
    from ..data.sequences import SequenceFormatError

    def say(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    if args.baseline == 'landmarks' or args.detections:
        what = '--detections scores keypoints already published' if args.detections else \
            '--baseline landmarks reads the ground truth'
        not_applying = inference_options(args)
        if not_applying:
            print(f'keygrid evaluate: {what}, so {", ".join(not_applying)} do not apply to it', file=sys.stderr)
            return 2
        compute = functools.partial(detections_report if args.detections else landmark_report, args, say)
    elif args.sweep and (args.tracking or args.sampling != 'fps'):
        print('keygrid evaluate: --sweep scores the perturbations one frame at a time on FPS samples; run it '
              'without --tracking and --sampling', file=sys.stderr)
        return 2
    else:
        detector = load_detector(args)
        if detector is None:
            return 2
        compute = functools.partial(detector_report, args, *detector, say)
    try:
        report = compute()
    except (SequenceFormatError, FileNotFoundError, ValueError) as exc:
        print(f'keygrid evaluate: {exc}', file=sys.stderr)
        return 2
    return print_report(report, args.json, args.timeline)


def load_detector(args: argparse.Namespace):
    """(:data:`KeypointFn`, the point count it was trained on, its label), or None after printing why not."""
    from ..model.io import ModelFileError
    from . import evaluate

    if args.baseline:
        return evaluate.extreme_point_keypoint_fn(args.num_keypoints), 2048, f'baseline:{args.baseline}'
    try:
        keypoint_fn, model = load_keypoint_fn(args.model, args.device, args.keypoints, args.canonicalize)
    except (ModelFileError, OSError, ValueError) as exc:
        print(f'keygrid evaluate: {exc}', file=sys.stderr)
        return None
    return keypoint_fn, model.config.num_points, str(args.model)


def detector_report(args: argparse.Namespace, keypoint_fn, trained_points: int, label: str, say) -> dict:
    """Score a detector on ``args.data`` under the requested perturbation (and the sweep with ``--sweep``)."""
    from ..data.sequences import fingerprint, load_sequence
    from . import evaluate

    # --points below the training count downsamples the usual sample; above it samples more points directly.
    num_points = max(trained_points, args.points or 0)
    points = args.points if args.points and args.points < num_points else None
    perturbation = evaluate.Perturbation(noise=args.noise, points=points, se3=args.se3, seed=args.seed)
    common = dict(batch_size=args.batch_size, max_frames=args.max_frames)
    tracking = tracker_config(args)
    report = evaluate.evaluate_paths(keypoint_fn, args.data, num_points, perturbation, progress=say,
                                     sampling=args.sampling, tracking=tracking, snap_tracked=args.keypoints != 'soft',
                                     **common)
    report['model'] = label
    report['keypoints'] = args.keypoints
    report['canonicalize'] = args.canonicalize
    if args.sweep:
        sweep = evaluate.robustness_sweep(keypoint_fn, args.data, num_points, seed=args.seed, **common)
        prefix = Path(args.sweep_out)
        plot = evaluate.plot_sweep(sweep, prefix.with_name(prefix.name + '.png'), title=Path(label).name)
        sweep_json = prefix.with_name(prefix.name + '.json')
        # The data travels with the numbers: keygrid compare refuses sweeps scored on different data, known by
        # its content (the same files elsewhere, another machine's copy, are the same data), by path in old files.
        described = {'model': label, 'keypoints': args.keypoints,
                     'data': sorted(str(Path(p).resolve()) for p in args.data),
                     'data_fingerprints': sorted(fingerprint(load_sequence(p))
                                                 for p in evaluate.sorted_sequence_files(args.data)), **sweep}
        sweep_json.write_text(json.dumps(json.loads(evaluate.to_json(described)), indent=1) + '\n')
        report.update(robustness=sweep, plot=str(plot), robustness_json=str(sweep_json))
    return report


def tracker_config(args: argparse.Namespace):
    """The tracker settings of ``--tracking`` (None without it); the node's defaults where not given."""
    from ..perception.tracking import TrackerConfig

    if not args.tracking:
        if args.tracking_radius is not None or args.tracking_gate is not None:
            raise ValueError('--tracking-radius and --tracking-gate need --tracking')
        return None
    given = {'patch_radius': args.tracking_radius, 'gate': args.tracking_gate}
    return TrackerConfig(**{k: v for k, v in given.items() if v is not None})


def inference_options(args: argparse.Namespace) -> list[str]:
    """The options given that change how a detector runs (meaningless where no detector runs)."""
    given = {'--noise': args.noise, '--points': args.points, '--se3': args.se3, '--sweep': args.sweep,
             '--tracking': args.tracking, '--tracking-radius': args.tracking_radius is not None,
             '--tracking-gate': args.tracking_gate is not None, '--sampling': args.sampling != 'fps',
             '--keypoints': args.keypoints != 'file', '--canonicalize': args.canonicalize != 'none',
             '--max-frames': args.max_frames is not None and bool(args.detections)}  # landmarks take --max-frames
    return [option for option, is_given in given.items() if is_given]


def detections_report(args: argparse.Namespace, say) -> dict:
    """``--detections``: the node's published keypoints against rendered ground truth
    (:mod:`keygrid_ros.train.detection_scoring`)."""
    from .detection_scoring import evaluate_detections

    report = evaluate_detections(args.detections, args.data, progress=say)
    return {**report, 'model': 'detections', 'keypoints': 'published'}


def landmark_report(args: argparse.Namespace, say) -> dict:
    """``--baseline landmarks``: score the files' own landmarks (:func:`evaluate.landmark_predictions`)."""
    from . import evaluate

    report = evaluate.evaluate_landmark_oracle(args.data, args.num_keypoints, args.max_frames, progress=say)
    return {**report, 'model': 'baseline:landmarks', 'keypoints': 'ground truth'}


def print_report(report: dict, as_json: bool, timeline: bool = False) -> int:
    from . import evaluate

    if as_json:
        print(evaluate.to_json(report), flush=True)
    else:
        print_table(report, timeline)
    return 0


def print_table(report: dict, timeline: bool = False) -> None:
    """Human-readable summary; with ``timeline`` each keypoint's runs under its sequence."""
    print(f'{"sequence":50s} {"motion":8s} {"frames":>6s} {"DAS(B)":>7s} {"DAS(A)":>7s} {"switches":>8s}')
    for s in report['sequences']:
        print(f'{Path(s["source"]).name[:50]:50s} {s["motion"][:8]:8s} {s["frames"]:6d} {s["das"]:7.1f} '
              f'{s["das_reference_frame"]:7.1f} {sum(s["switches"]):8d}')
        if timeline:
            for k, runs in enumerate(s['timeline']):
                print(f'    kp{k}: ' + ' | '.join(f'gt{gt} {first}-{last}' for gt, first, last in runs))
    groups = [(motion, scores) for motion, scores in report['by_motion'].items()]
    groups += [(f'fold ({kind})', scores) for kind, scores in report.get('by_fold', {}).items()]
    for name, scores in groups:
        print(f'{"mean " + name:50s} {"":8s} {"":6s} {scores["das"]:7.1f} {scores["das_reference_frame"]:7.1f}')
    print(f'DAS {report["das"]:.1f} (protocol B, correspondence; forward {report["das_forward"]:.1f}, backward '
          f'{report["das_backward"]:.1f}), reference-frame DAS {report["das_reference_frame"]:.1f} (protocol A)')
    print(f'coverage {report["coverage"]:.2f} (share of the ground-truth vertices some keypoint is nearest to, '
          'per frame; collapsed keypoints score DAS (B) high and coverage low)')
    if report.get('miou') is not None:
        print(f'mIoU@0.1: {report["miou"]:.1f}')
    if 'plot' in report:
        print(f'robustness sweep: {report["plot"]}, {report["robustness_json"]}')
