"""``keygrid demo``: the README's first command — the detector node on the bundled recording, and a picture.

The bundled sample (``data/samples/tshirt_fold``, installed to ``share/keygrid_ros``) is a rosbag2 made by our
own simulator and virtual depth camera: a T-shirt of a held-out size folded in half on a table, seen from
above by a 160x120 depth camera, with ``/tf_static``. The demo replays it through the same node logic the live
node runs (``keygrid detect --bag`` with ``data/samples/tshirt_fold.yaml``), writes the output bag, draws a
strip of frames with the keypoints and skeleton (``keygrid viz``) and prints one summary line: frames
processed, in how many a garment was found, the median latency per frame. The sample comes with the simulated
mesh of every frame, so the demo also scores the keypoints it published, as ``keygrid evaluate --detections``
does: DAS (protocol B) and coverage on this one fold.

Everything goes to ``--out`` (default ``out/demo``); the previous demo's output bag there is replaced.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
import shutil
import sys

SAMPLE_BAG = 'data/samples/tshirt_fold'
SAMPLE_PARAMS = 'data/samples/tshirt_fold.yaml'
SAMPLE_TRUTH = 'data/samples/tshirt_fold_mesh.npz'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', default='out/demo', help='output folder (default out/demo)')
    parser.add_argument('--model', help='model file (default: the parameters file\'s, the shipped T-shirt model)')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the encoder first (about 20 s; pays off on long recordings, not here)')
    parser.add_argument('--frames', type=int, default=6, help='panels in the picture (default 6)')


def run(args: argparse.Namespace) -> int:
    from keygrid_ros import params as schema
    from keygrid_ros.ros.bag_transport import run_bag
    from keygrid_ros.ros.node import NodeStartupError, resolve_share_file
    from keygrid_ros.viz import choose, draw_strip, frames_from_bag

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    try:
        bag = resolve_share_file(SAMPLE_BAG, what='bundled sample')
        values = schema.load_yaml(resolve_share_file(SAMPLE_PARAMS, what='sample parameters'))
        overrides = [f'compile:={str(args.compile).lower()}']
        if args.model:
            from keygrid_ros.ros.detect_cli import model_overrides

            overrides += model_overrides(args.model)
        values = schema.apply_overrides(values, overrides)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        out_bag = out / 'detections'
        if out_bag.exists():
            shutil.rmtree(out_bag)  # our own previous output: the demo is meant to be re-run
        summary = run_bag(bag, out_bag, values, logger=logging.getLogger('keygrid.demo.node'))
    except (schema.ParameterError, NodeStartupError) as exc:
        print(f'keygrid demo: {exc}', file=sys.stderr)
        return 1
    result = summary.to_dict()
    views = frames_from_bag(out_bag)
    picture = None
    if views:
        title = (f'keygrid_ros demo: {Path(values["model_path"]).name} on {bag.name} '
                 f'({summary.detected}/{summary.clouds} frames with a garment)')
        picture = draw_strip(choose(views, args.frames), out / 'keypoints.png', title)
    median = result['median_ms'].get('total')
    score = score_against_sample(out_bag) if views else None
    line = {'frames': summary.clouds, 'garment_found': summary.detected,
            'median_ms': median, 'model_ms': result['median_ms'].get('model'), 'bag': str(out_bag),
            'picture': str(picture) if picture else None, 'reasons': result['reasons'],
            'das': round(score['das'], 1) if score else None,
            'coverage': round(score['coverage'], 3) if score else None}
    (out / 'summary.json').write_text(json.dumps({**result, **line}, indent=1, sort_keys=True) + '\n')
    latency = f'median {median:.0f} ms per frame' if median is not None else 'no latency (nothing found)'
    print(f'{summary.clouds} frames processed, garment found in {summary.detected}, {latency}')
    for reason, count in summary.reasons.items():
        print(f'  {count} x {reason}')
    if score:
        print(f'keypoint consistency on this fold: DAS {score["das"]:.1f} (protocol B), coverage '
              f'{score["coverage"]:.2f}, against the simulated mesh ({score["scored"]} frames; '
              f'keygrid evaluate --detections {out_bag} --data {SAMPLE_TRUTH})')
    print(f'output bag: {out_bag}')
    if picture:
        print(f'picture:    {picture}')
    print(json.dumps(line, sort_keys=True))
    return 0 if summary.detected else 1


def score_against_sample(out_bag: Path) -> dict | None:
    """DAS of the published keypoints against the sample's simulated mesh, or None (with a warning) when they
    cannot be scored (the sample's ground truth missing, or keypoints in another frame than the mesh's)."""
    from keygrid_ros.ros.node import NodeStartupError, resolve_share_file
    from keygrid_ros.train.detection_scoring import DetectionMatchError, score_detections

    try:
        return score_detections(out_bag, resolve_share_file(SAMPLE_TRUTH, what='sample ground truth'))
    except (NodeStartupError, DetectionMatchError) as exc:
        logging.getLogger('keygrid.demo').warning('keypoints not scored: %s', exc)
        return None
