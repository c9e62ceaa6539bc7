"""``keygrid align``: turn whole sequences about the table's z axis into the garment's canonical heading.

::

    keygrid align --data out/dataset/train out/dataset/val --out out/aligned

Our simulator lays every garment down at a random yaw. Key-Grid's PointNet++ encoder is not rotation
invariant, and the paper trains and tests it per category on *aligned* garments (ClothesNet's canonical
poses); the SE(3) case is the USEEK student's job (its Table 4). This tool gives the aligned setting without
simulating again: each sequence is turned, as a rigid whole (every frame by the same rotation, so the
physics is untouched), so that on its first frame the garment's body axis points along +y of the table frame
(T-shirt: hem centre -> neck; pants: crotch -> waist), about the first frame's centroid, which stays put.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import json
import math
from pathlib import Path
import sys

import numpy as np

#: Per garment: the landmark pair (from, to) whose direction on the first frame becomes +y.
BODY_AXIS = {
    'tshirt': ('hem_centre', 'neck_front'),
    'pants': ('crotch', 'waist_centre'),
}


def heading(seq) -> float:
    """Yaw (radians, about +z from +x) of the garment's body axis on the first frame."""
    if seq.keypoints is None or not seq.keypoint_names:
        raise ValueError(f'{seq.source}: no named keypoints to find the garment heading from')
    if seq.garment not in BODY_AXIS:
        raise ValueError(f'{seq.source}: no body axis known for garment {seq.garment!r} '
                         f'(known: {", ".join(BODY_AXIS)})')
    tail, head = BODY_AXIS[seq.garment]
    names = list(seq.keypoint_names)
    axis = seq.keypoints[0, names.index(head)] - seq.keypoints[0, names.index(tail)]
    return math.atan2(float(axis[1]), float(axis[0]))


def align_sequence(seq, target_yaw: float = math.pi / 2):
    """``seq`` turned about z through its first frame's centroid so that its heading becomes ``target_yaw``.

    Returns a new Sequence (vertices and keypoints turned; faces and order unchanged) whose ``info`` records
    ``aligned_by_deg``.
    """
    angle = target_yaw - heading(seq)
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    centre = seq.vertices[0].astype(np.float64).mean(axis=0)
    centre[2] = 0.0  # turn about a vertical axis: heights above the table stay exactly as they were

    def turn(points: np.ndarray) -> np.ndarray:
        return ((points.astype(np.float64) - centre) @ rot.T + centre).astype(np.float32)

    keypoints = turn(seq.keypoints) if seq.keypoints is not None else None
    info = {**seq.info, 'aligned_by_deg': math.degrees(angle)}
    return replace(seq, vertices=turn(seq.vertices), keypoints=keypoints, info=info)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--data', required=True, nargs='+', help='sequence files or folders (layout is kept)')
    parser.add_argument('--out', required=True, help='output folder')


def run(args: argparse.Namespace) -> int:
    from keygrid_ros.data.dataset import sequence_files
    from keygrid_ros.data.sequences import SequenceFormatError, load_sequence, save_sequence

    out = Path(args.out)
    done = []
    for entry in args.data:
        root = Path(entry)
        files = sequence_files([entry])
        if not files:
            print(f'keygrid align: no sequence files in {entry}', file=sys.stderr)
            return 2
        for path in files:
            try:
                aligned = align_sequence(load_sequence(path))
            except (SequenceFormatError, ValueError) as exc:
                print(f'keygrid align: {exc}', file=sys.stderr)
                return 2
            relative = path.relative_to(root) if root.is_dir() else Path(path.name)
            target = out / (root.name if root.is_dir() else '') / relative
            save_sequence(target, aligned)
            done.append({'sequence': str(target), 'turned_deg': round(aligned.info['aligned_by_deg'], 2)})
    print(json.dumps({'aligned': len(done), 'out': str(out), 'sequences': done}))
    return 0
