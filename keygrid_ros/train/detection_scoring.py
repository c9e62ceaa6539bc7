"""Score what the node published on a recording against the simulation that made the recording.

``keygrid evaluate`` scores a model on sequence files. A robot's keypoints come from the whole node instead:
one camera's partial, noisy view, the front end (crop, table, cluster, voxel grid, FPS), the keypoint mode
and the tracker. This scores those. The ground truth is the sequence file ``keygrid render --mesh-out``
writes next to a rendered bag: the mesh of every rendered frame in the table frame, with each frame's message
stamp in ``info.stamps_ns``. Every output of the node carries its input's stamp, so the node's keypoints
(``~/markers`` or the ``keypoints`` PoseArray, in an output bag of ``keygrid detect --bag`` or a ``ros2 bag
record`` of the live node) are matched to the frames by stamp and scored exactly as ``keygrid evaluate`` scores
a model (:func:`keygrid_ros.train.evaluate.score_sequence`: DAS protocols B and A, coverage, switches, mIoU
where the file has landmarks).

Frames the node found no garment in have no keypoints and are not scored; ``scored`` and ``missed`` say how
many. The protocol-B ground truth is chosen on the first scored frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.sequences import Sequence as MeshSequence
from ..data.sequences import load_sequence
from .evaluate import FramePredictions, score_sequence, summarize
from .metrics import nearest_index

#: Median distance (metres) from the node's keypoints to the ground-truth mesh above which the pairing is
#: refused. The node's keypoints are points of the cloud it saw (or tracked cloth): on the bundled sample
#: their median distance to the simulated mesh is 5 mm and their largest 1 cm, from depth noise and the
#: voxel grid. A bag scored against another sequence's mesh, or in another frame, lies much farther.
MAX_MEDIAN_DISTANCE = 0.05


class DetectionMatchError(ValueError):
    """The detections cannot be scored against this ground truth (what to do is in the message)."""


def match_detections(views: Sequence, truth: MeshSequence, truth_name: str = 'ground truth') -> FramePredictions:
    """Pair the node's keypoints with the ground-truth frames of the same stamp.

    ``views``: :class:`keygrid_ros.viz.FrameView` per output stamp (``stamp_ns``, ``frame_id``, ``keypoints``
    (K, 3)). ``truth``: a sequence with ``info['stamps_ns']`` (T,) and, where known, ``info['frame_id']``.
    Returns the predictions of the matched frames, in frame order: ``keypoints`` (S, K, 3) in the
    ground truth's coordinates and ``vertex_indices`` (S, K), the mesh vertex nearest to each keypoint.
    Raises :class:`DetectionMatchError` when the ground truth has no stamps, a detection's stamp is not one of
    its frames, the keypoints are in another frame or far from the garment, their count changes between
    messages, two messages share a stamp, or a keypoint is not finite.
    """
    stamps = truth.info.get('stamps_ns')
    if stamps is None:
        raise DetectionMatchError(f'{truth_name} has no message stamps (info.stamps_ns): use the sequence file '
                                  '"keygrid render --mesh-out" wrote next to the bag the node was run on')
    frame_of = {int(stamp): i for i, stamp in enumerate(stamps)}
    truth_frame = truth.info.get('frame_id')
    if not views:
        raise DetectionMatchError('the bag holds no keypoints: the node found no garment in any frame')
    matched = [v for v in views if int(v.stamp_ns) in frame_of]
    # Every output carries its input's stamp, so a detection at another stamp means another recording.
    if len(matched) < len(views):
        raise DetectionMatchError(
            f'{len(views) - len(matched)} of the {len(views)} detection stamps are not frame stamps of '
            f'{truth_name}: was the node run on the bag rendered from it?')
    other_frames = sorted({v.frame_id for v in matched} - {truth_frame}) if truth_frame else []
    if other_frames:
        raise DetectionMatchError(
            f'the keypoints are in frame {", ".join(map(repr, other_frames))}, the ground truth in {truth_frame!r}: '
            f'run the node with target_frame:={truth_frame}')
    counts = sorted({len(v.keypoints) for v in matched})
    if len(counts) > 1:
        raise DetectionMatchError(f'the number of keypoints changes between messages ({counts}): one model per run')
    if len({int(v.stamp_ns) for v in matched}) < len(matched):
        raise DetectionMatchError('two keypoint messages share a stamp: score one run of the node at a time')
    broken = [int(v.stamp_ns) for v in matched if not np.isfinite(np.asarray(v.keypoints, dtype=np.float64)).all()]
    if broken:
        raise DetectionMatchError(f'{len(broken)} messages hold non-finite keypoints (first at stamp {broken[0]} ns)')
    matched.sort(key=lambda v: frame_of[int(v.stamp_ns)])
    frames = np.array([frame_of[int(v.stamp_ns)] for v in matched], dtype=np.int64)  # (S,)
    keypoints = np.stack([np.asarray(v.keypoints, dtype=np.float64) for v in matched])  # (S, K, 3)
    vertices = truth.vertices[frames].astype(np.float64)  # (S, V, 3)
    # Frame by frame: all frames at once would hold (S, K, V, 3) differences.
    nearest = np.stack([nearest_index(kps[None], verts[None])[0] for verts, kps in zip(vertices, keypoints)])  # (S, K)
    on_mesh = np.take_along_axis(vertices, nearest[..., None], axis=1)  # (S, K, 3)
    distance = float(np.median(np.linalg.norm(keypoints - on_mesh, axis=-1)))
    if distance > MAX_MEDIAN_DISTANCE:
        raise DetectionMatchError(
            f'the keypoints lie {100 * distance:.0f} cm (median) from the garment of {truth_name}: is it the '
            f'ground truth of this bag, and are the keypoints in its frame ({truth_frame or "not recorded"})?')
    every_vertex = np.broadcast_to(np.arange(truth.num_vertices), (len(frames), truth.num_vertices))
    return FramePredictions(frames, keypoints, nearest, np.ascontiguousarray(every_vertex))


def score_detections(bag: str | Path, truth_path: str | Path, num_ground_truth: int | None = None) -> dict[str, Any]:
    """One output bag against its ground-truth file: :func:`score_sequence`'s result plus ``detections`` (the
    bag), ``scored`` (frames with keypoints) and ``missed`` (ground-truth frames without)."""
    from ..viz import frames_from_bag

    truth = load_sequence(truth_path)
    pred = match_detections(frames_from_bag(bag), truth, str(truth_path))
    result = score_sequence(truth, pred, num_ground_truth)
    return {**result, 'detections': str(bag), 'scored': len(pred.frames), 'missed': truth.frames - len(pred.frames)}


def evaluate_detections(bags: Sequence[str | Path], truths: Sequence[str | Path],
                        num_ground_truth: int | None = None, progress=None) -> dict[str, Any]:
    """Score each bag against the ground-truth file at the same position; the summary of
    :func:`keygrid_ros.train.evaluate.summarize` with the per-bag results in ``sequences``."""
    if len(bags) != len(truths):
        raise DetectionMatchError(f'{len(bags)} detection bags but {len(truths)} ground-truth files: give one '
                                  'ground-truth file per bag, in the same order')
    per_bag = []
    for bag, truth in zip(bags, truths):
        result = score_detections(bag, truth, num_ground_truth)
        per_bag.append(result)
        if progress:
            progress(f'{Path(bag).name}: {result["motion"]} DAS {result["das"]:.1f} '
                     f'(A {result["das_reference_frame"]:.1f}), coverage {result["coverage"]:.2f}, '
                     f'{result["scored"]} frames scored, {result["missed"]} without keypoints')
    return {**summarize(per_bag), 'scored': sum(r['scored'] for r in per_bag),
            'missed': sum(r['missed'] for r in per_bag), 'sequences': per_bag}
