"""The node's parameters: one schema, one YAML file, read by the ROS node and by the CLI alike.

``config/detect.yaml`` holds the values in the ROS ``/**: ros__parameters:`` layout (nested keys become
dotted parameter names, exactly as ``ros2 run ... --params-file`` flattens them). The schema below gives
each parameter its type, description, range and whether it may change at run time; the rclpy node
declares its parameters from it, the CLI validates the same file with it, and the README table is
generated from it (``python -m keygrid_ros.params --markdown``), so the three can not drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
import math
import os
import re
from typing import Any

import yaml


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter (mirrors rcl_interfaces/ParameterDescriptor)."""

    name: str
    default: Any
    description: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    read_only: bool = False
    #: For list parameters: the exact length required.
    length: int | None = None

    @property
    def type(self) -> type:
        return type(self.default)

    def check(self, value: Any) -> str | None:
        """Return why ``value`` is not acceptable for this parameter, or None when it is."""
        expected = self.type
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # ROS YAML writes 1 for 1.0; rclpy would reject it, we are kinder.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            return f'{self.name}: expected {expected.__name__}, got {type(value).__name__} ({value!r})'
        if expected is float and not math.isfinite(value):
            return f'{self.name}: must be finite, got {value!r}'
        if expected in (int, float):
            if self.min is not None and value < self.min:
                return f'{self.name}: {value!r} is below the minimum {self.min}'
            if self.max is not None and value > self.max:
                return f'{self.name}: {value!r} is above the maximum {self.max}'
        if self.choices and value not in self.choices:
            return f'{self.name}: {value!r} is not one of {list(self.choices)}'
        if expected is list:
            if self.length is not None and len(value) != self.length:
                return f'{self.name}: expected {self.length} values, got {len(value)}'
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       for v in value):
                return f'{self.name}: expected finite numbers, got {value!r}'
        return None


def _p(name, default, description, **kw) -> ParamSpec:
    return ParamSpec(name, default, description, **kw)


#: How a keypoint is read from its weights over the input points (``keypoint_mode``); the first is the default.
#: 'snapped': the weighted mean moved to the nearest input point (on the garment, and as steady as the mean:
#: 7 DAS points above 'hard' on held-out T-shirts, docs/results.md); 'hard': the point of largest weight (the
#: released Key-Grid test mode); 'soft': the weighted mean itself (may lie off the cloth, between sleeves).
#: One list for the node, the detector and ``keygrid evaluate/predict --keypoints``.
KEYPOINT_MODES = ('snapped', 'hard', 'soft')

#: How tracked keypoints follow the cloth (``tracking.method``); the first is the default. 'cpd': the whole
#: garment's nodes are registered non-rigidly (Coherent Point Drift) and the keypoints ride them; 'icp': each
#: keypoint's own patch is registered rigidly (cheaper; drifts on flat cloth, docs/results.md).
TRACKING_METHODS = ('cpd', 'icp')

#: How a cloud is turned before a Key-Grid model (``keygrid evaluate/predict --canonicalize``): 'none' (as
#: given; its z must be up, as in training), 'up' (turned so that the up its own shape shows is +z) or
#: 'frame' (into its principal axes: up to +z, the longest axis to +x); keygrid_ros/model/canonical.py.
CANONICALIZATIONS = ('none', 'up', 'frame')

#: Every parameter of the detector node, in the order the README lists them.
DETECT_PARAMS: tuple[ParamSpec, ...] = (
    # --- model (read-only: changing them means restarting the node) ---
    _p('model_path', 'models/keygrid_tshirt.safetensors',
       'Model file (safetensors). A relative path resolves against the package share folder '
       '(share/keygrid_ros), then the current directory.', read_only=True),
    _p('model_type', 'keygrid', 'Which network the model file holds: the Key-Grid encoder, or the '
       'SE(3)-invariant USEEK SPRIN student.', choices=('keygrid', 'useek'), read_only=True),
    _p('device', 'auto', "Inference device: 'auto' uses the GPU when torch sees one and the CPU "
       "otherwise (with a warning), or an explicit torch device such as 'cpu' or 'cuda:0'.",
       read_only=True),
    _p('keypoint_mode', 'snapped', "How each keypoint is read from its weights over the input points: "
       "'snapped' moves the weighted mean to the nearest input point (on the garment, and steadier: 7 DAS "
       "points above 'hard' on held-out T-shirts); 'hard' takes the point of largest weight (the released "
       "Key-Grid test mode); 'soft' keeps the weighted mean, which can lie off the cloth.",
       choices=KEYPOINT_MODES, read_only=True),
    _p('canonicalize', 'none', "Turn each garment cloud into a pose read from its own shape before a Key-Grid "
       "model, for a target_frame whose z is not up (no trustworthy TF, a hand-held camera): 'frame' (its "
       "principal axes: relief-signed up to +z, longest axis to +x) makes Key-Grid SE(3)-invariant (held-out "
       "T-shirt DAS 68 at any pose, 21 without; 80.5 with z up and 'none'); 'up' fixes only the tilt; 'none' "
       "uses the cloud as given. Ignored by the already invariant useek student.", choices=CANONICALIZATIONS,
       read_only=True),
    _p('compile', True, 'torch.compile the Key-Grid encoder at start-up: about 20 s once (less with a warm '
       'compiler cache), then about 1.6x faster per frame on a CPU. Falls back to eager mode, with a '
       'warning, where compilation is unavailable or fails.', read_only=True),
    # --- frames and timing ---
    _p('target_frame', '', 'Frame the cloud is transformed into before cropping, and the frame of '
       'every output. Empty = stay in the cloud frame. Set it to base_link for grasp planners.'),
    _p('tf_timeout_s', 0.2, 'How long to wait for the cloud frame -> target_frame transform at the '
       "cloud's stamp.", min=0.0, max=5.0),
    _p('max_age_s', 0.5, 'Clouds older than this (stamp vs. clock) when processing starts are '
       'dropped. 0 disables the check (use it when replaying bags without sim time).',
       min=0.0, max=60.0),
    _p('smoothing', 0.0, 'Exponential smoothing of keypoints over frames: 0 = none, 0.9 = heavy. '
       'Reset whenever the garment is lost.', min=0.0, max=0.99),
    _p('tracking.enabled', False, 'Carry the keypoints from frame to frame with the cloth instead of detecting '
       'them afresh: the detector only starts the tracks (tracking.method says how they follow). Needs a '
       'target_frame fixed in the world (not a moving camera frame). Tracks restart when the garment is lost or '
       'the stream jumps (tracking.max_gap_s). Measured in docs/results.md, "Keypoints carried from frame to '
       'frame".'),
    _p('tracking.method', 'cpd', "'cpd': the whole garment's nodes are registered onto each new cloud by "
       'non-rigid Coherent Point Drift and each keypoint rides its nearest nodes (about 75 ms a frame on one CPU '
       'core; with fresh points every frame T-shirt folds 91.4 DAS against 81.2 with icp). From one camera it '
       'lifts T-shirt drags from 75.7 untracked to 91.2, but folds stay at 77.8 (77.0 untracked), short of a '
       "perfect tracker's 96 through the same camera. 'icp': each keypoint's own patch is registered rigidly "
       "(about 15 ms; drifts where the cloth is flat).",
       choices=TRACKING_METHODS),
    _p('tracking.nodes', 500, "cpd: nodes placed on the garment by farthest point sampling when tracks start.",
       min=16, max=4096),
    _p('tracking.smoothness', 0.08, 'cpd: correlation length (metres) of the displacement field: nodes closer '
       'than this move nearly together.', min=0.005, max=1.0),
    _p('tracking.regularisation', 2.0, 'cpd: how strongly the displacement field is kept smooth against the '
       'data (the lambda of Coherent Point Drift).', min=0.01, max=100.0),
    _p('tracking.balance', 1.0, 'cpd: how strongly each node is made to keep an equal share of the cloud, so '
       'that cloth sliding along itself (the flat part of a garment drawn up into a lifted flap) takes its nodes '
       'along instead of leaving them crowded behind; 0 = plain Coherent Point Drift. Measured in '
       'docs/results.md, "Nodes that keep their share".', min=0.0, max=10.0),
    _p('tracking.visibility_margin', 0.0, 'cpd: a node with cloud points in front of it on the line of sight '
       'from the camera (more than this, metres) is hidden (the cloth under a fold, a flap carried over seen '
       'edge on) and claims no points, instead of being drawn onto the cloth above it. The camera is the sensor '
       "frame's origin. Use together with tracking.max_stretch. 0 = off: with 0.05 and a stretch of 0.1, "
       'one-camera fold bags scored as without (docs/results.md, "Cloth nobody sees").', min=0.0, max=0.5),
    _p('tracking.max_stretch', 0.0, 'cpd: no edge between neighbouring nodes may end a frame longer than '
       '(1 + this) times its length when the nodes were placed: cloth does not stretch, so a node that sees '
       'nothing is pulled after its seen neighbours. 0 = off.', min=0.0, max=10.0),
    _p('tracking.patch_radius', 0.06, 'icp: cloth around a keypoint registered from one frame to the next '
       '(metres); both methods: detections steadier than half of it start the tracks.',
       min=0.01, max=0.5),
    _p('tracking.max_residual', 0.03, 'icp: a keypoint whose registered patch stays farther than this (median, '
       'metres) from the new cloud has lost its cloth and takes its detection. cpd: a registration whose '
       'residual width exceeds it restarts all tracks from the detections.', min=0.001, max=1.0),
    _p('tracking.hide_distance', 0.015, 'icp: no cloud point this near (metres) to a keypoint, nor to where its '
       'patch went: its cloth is hidden (under a fold, seen from one camera) and the keypoint waits where it was. '
       'cpd: a hidden keypoint moves with its nodes.',
       min=0.001, max=0.5),
    _p('tracking.start_frames', 3, 'Tracks start after this many consecutive frames whose detections moved less '
       'than half a patch radius, so that they do not start from a detector still settling.', min=1, max=1000),
    _p('tracking.gate', 0.0, 'Detections within this distance (metres) of their tracked keypoint pull it by '
       'tracking.detection_weight, which stops drift where the two agree. 0 = never. For folds seen from one '
       'camera, 0.05 with a weight of 0.3 lifted fold DAS by 5-6 and cost drags 3-7 with tracking.balance 0; '
       'with the default balance it moved folds by +2.7 (T-shirt) and -1.8 (pants), within noise.',
       min=0.0, max=1.0),
    _p('tracking.detection_weight', 0.5, 'How far a detection inside the gate pulls its tracked keypoint '
       '(0 = not at all, 1 = all the way).', min=0.0, max=1.0),
    _p('tracking.min_separation', 0.03, 'Two tracked keypoints closer than this (metres) that share their cloth '
       '(icp: always; cpd: they ride a common node) have merged; the one farther from its detection takes it. '
       'cpd keypoints on different cloth brought together by a fold are left alone. 0 = never.',
       min=0.0, max=0.5),
    _p('tracking.max_gap_s', 1.0, 'Restart the tracks when consecutive clouds are further apart than this '
       '(seconds, by stamp) or a stamp goes backwards (a bag looping).', min=0.0, max=60.0),
    _p('publish_markers', True, 'Publish ~/markers (MarkerArray) for RViz.'),
    _p('publish_cropped_points', False, 'Publish ~/cropped_points, the model input cloud in the '
       'target frame (debugging; costs bandwidth).'),
    _p('publish_tf', False, 'Broadcast one TF frame per keypoint (keygrid_kp_<i>), child of the '
       'output frame.'),
    # --- preprocessing ---
    _p('decimation', 2, 'Use every n-th row and column of an organised cloud before anything else (n² fewer '
       'points). A 640x480 camera at 1 m samples about every 1.6 mm, finer than the voxel grid, so 2 keeps '
       'what the voxel grid keeps at a quarter of the cost. Unorganised clouds are never decimated.',
       min=1, max=8),
    # --- crop box in the target frame ---
    _p('crop.enabled', True, 'Crop the cloud to an axis-aligned box in the target frame.'),
    _p('crop.min', [-0.6, -0.6, -0.2], 'Lower corner (x, y, z) of the workspace box, metres, '
       'target frame. Points below it on any axis are removed.', length=3),
    _p('crop.max', [0.6, 0.6, 1.5], 'Upper corner (x, y, z) of the workspace box, metres, target '
       'frame. Points above it on any axis are removed.', length=3),
    # --- the robot cut out of the cloud (a self-filter) ---
    _p('self_filter.frames', '', 'Robot frames whose surroundings are cut from the cloud after cropping, before '
       "the table and the garment are looked for, e.g. 'left_gripper right_gripper': TF frame names separated by "
       'spaces or commas (one string, not a list: an empty list parameter is typed as a byte array by rclpy). A '
       "gripper holding the garment would otherwise join it. Each frame's origin is looked up in target_frame at "
       "the cloud's stamp; a cloud whose robot transforms are unavailable is skipped (and counted as a TF error), "
       'never processed with the robot in it. Empty = off.'),
    _p('self_filter.radius', 0.06, 'Points within this distance (metres) of a self_filter frame origin are cut: '
       "the gripper's reach around its frame, plus the sensor noise.", min=0.0, max=1.0),
    _p('self_filter.chain', False, 'Also cut points within self_filter.radius of the straight segments joining '
       'consecutive self_filter frames: list an arm\'s link frames in order (shoulder ... wrist, tool) to cut '
       'the arm as a chain of capsules.'),
    _p('voxel_size', 0.004, 'Voxel grid leaf size in metres applied after cropping (one averaged '
       'point per voxel) to bound the cost of the later stages. 0 disables.', min=0.0, max=0.05),
    # --- table removal ---
    _p('table.enabled', True, 'Find the dominant plane (the table) by RANSAC and remove it.'),
    _p('table.distance_threshold', 0.004, 'Points closer than this to the plane (metres) are '
       'table points. Keep it below the garment thickness plus sensor noise.', min=0.0005, max=0.1),
    _p('table.iterations', 256, 'RANSAC hypotheses scored per frame (all at once, on a 4096-point '
       'subsample).', min=8, max=10000),
    _p('table.min_inlier_ratio', 0.1, 'A plane must explain at least this fraction of the cropped '
       'points to count as the table.', min=0.0, max=1.0),
    _p('table.remove_below', True, 'Also drop points on the far side of the table from the sensor '
       '(reflections and noise under the table).'),
    _p('table.max_tilt_deg', 0.0, "If > 0, only accept planes whose normal is within this angle of "
       "the target frame's z axis (use with a z-up target frame such as base_link).",
       min=0.0, max=90.0),
    # --- garment isolation ---
    _p('cluster.enabled', True, 'Keep one Euclidean cluster: the garment.'),
    _p('cluster.tolerance', 0.015, 'Points closer than this (metres) belong to the same cluster.',
       min=0.001, max=0.2),
    _p('cluster.min_points', 500, 'Smallest cluster accepted as a garment (points after voxelising; 500 voxels of '
       '4 mm cover 80 cm²).',
       min=1, max=1000000),
    _p('cluster.min_cell_points', 3, 'Cells of the clustering grid (edge = tolerance) holding fewer points '
       'than this are noise and join no cluster: it stops sensor speckles left on the table from chaining '
       'into one table-sized cluster. 1 = plain Euclidean clustering.', min=1, max=1000),
    _p('cluster.min_extent', 0.15, 'A garment is at least this wide (largest side of its bounding box, '
       'metres): smaller clusters (cans, mugs, hands) are not garments.', min=0.0, max=5.0),
    _p('cluster.max_extent', 1.5, 'A garment is at most this wide (metres): bigger clusters are walls, '
       'shelves or the robot.', min=0.01, max=20.0),
    _p('cluster.max_gap', 0.05, 'With table removal on, a garment rests on the table: its lowest point must '
       'be within this distance of the table plane (metres).', min=0.0, max=5.0),
    _p('cluster.min_height', 0.015, 'With table removal on, a garment stands out of the table: the 99th '
       'percentile of its height above the plane must reach this (metres). Stops flat patches of sensor '
       'noise counting as garments; lower it (or 0) for thin cloth spread flat on a clean table.',
       min=0.0, max=1.0),
    _p('cluster.select', 'largest', "Which cluster is the garment: 'largest', or 'nearest_center' "
       '(the one whose centroid is nearest the crop box centre).',
       choices=('largest', 'nearest_center')),
    _p('cluster.attach_distance', 0.1, 'Other clusters (of at least 30 points, and with table removal on, all '
       'of them more than 2 cm above the table, or half of them where the last frame saw the garment) within '
       'this distance (metres) of the garment cluster are part of it: one camera sees a flap lifted by a '
       'gripper apart from the rest when its bend faces away, or a flap\'s shadow cuts the cloth under it off, '
       'and dropping those pieces loses the cloth on them. 0 = keep the garment cluster alone.',
       min=0.0, max=1.0),
    # --- model input ---
    _p('num_points', 2048, 'Points fed to the model, chosen by farthest point sampling (kept in FPS '
       'order). Must match the model file.', min=16, max=65536, read_only=True),
    _p('min_points', 256, 'Give up on a frame (and say so) when fewer points than this remain after '
       'isolation.', min=16, max=1000000),
)

PARAMS_BY_NAME: dict[str, ParamSpec] = {spec.name: spec for spec in DETECT_PARAMS}


class ParameterError(ValueError):
    """A parameter file or value is invalid; the message lists every problem found."""


#: What a TF frame name may hold (ROS names plus the dots and dashes real URDFs use).
FRAME_NAME = re.compile(r'[A-Za-z0-9_./-]+')


def frame_names(text: str) -> list[str]:
    """``'a, b  c'`` -> ``['a', 'b', 'c']``: the ``self_filter.frames`` string, leading slashes dropped (as tf2)."""
    return [name.lstrip('/') for name in re.split(r'[\s,]+', text.strip()) if name.lstrip('/')]


def defaults() -> dict[str, Any]:
    """The schema's default values, by dotted name (copies, so callers may mutate lists)."""
    return {spec.name: (list(spec.default) if isinstance(spec.default, list) else spec.default)
            for spec in DETECT_PARAMS}


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    """Nested mapping -> dotted names, the way ROS 2 flattens a parameters file."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + '.'))
        else:
            flat[name] = value
    return flat


def validate(values: Mapping[str, Any], *, allow_unknown: bool = False) -> dict[str, Any]:
    """Check ``values`` (dotted names) against the schema; return them with ints coerced to floats.

    Raises :class:`ParameterError` naming every unknown or invalid parameter.
    """
    problems = []
    clean: dict[str, Any] = {}
    for name, value in values.items():
        spec = PARAMS_BY_NAME.get(name)
        if spec is None:
            if not allow_unknown:
                problems.append(f'{name}: unknown parameter')
            continue
        if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if spec.type is list and isinstance(value, (list, tuple)):
            value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        reason = spec.check(value)
        if reason:
            problems.append(reason)
        clean[name] = value
    if 'crop.min' in clean or 'crop.max' in clean:
        lo = clean.get('crop.min', PARAMS_BY_NAME['crop.min'].default)
        hi = clean.get('crop.max', PARAMS_BY_NAME['crop.max'].default)
        if len(lo) == 3 and len(hi) == 3 and any(a >= b for a, b in zip(lo, hi)):
            problems.append(f'crop.min {lo} must be below crop.max {hi} on every axis')
    if isinstance(clean.get('self_filter.frames'), str):
        bad = [f for f in frame_names(clean['self_filter.frames']) if not FRAME_NAME.fullmatch(f)]
        if bad:
            problems.append(f'self_filter.frames: {bad} are not TF frame names (letters, digits, _ / . -)')
    if problems:
        raise ParameterError('invalid parameters:\n  ' + '\n  '.join(problems))
    return clean


def load_yaml(path: str | os.PathLike, node_name: str = 'keygrid_detector') -> dict[str, Any]:
    """Read a ROS 2 parameters file and return the validated, complete parameter set.

    Sections apply in ROS order: ``/**`` first, then ``<node_name>`` / ``/<node_name>`` (more specific
    wins). Missing parameters take the schema defaults.
    """
    with open(path, encoding='utf-8') as stream:
        try:
            document = yaml.safe_load(stream) or {}
        except yaml.YAMLError as exc:
            raise ParameterError(f'{path}: not valid YAML: {exc}') from None
    if not isinstance(document, Mapping):
        raise ParameterError(f'{path}: expected a mapping of node names at the top level')
    merged: dict[str, Any] = {}
    for section in ('/**', node_name, '/' + node_name):
        body = document.get(section)
        if body is None:
            continue
        if not isinstance(body, Mapping) or 'ros__parameters' not in body:
            raise ParameterError(f'{path}: section {section!r} has no ros__parameters')
        merged.update(flatten(body['ros__parameters'] or {}))
    values = defaults()
    try:
        values.update(validate(merged))
    except ParameterError as exc:
        raise ParameterError(f'{path}: {exc}') from None
    return values


def apply_overrides(values: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``name:=value`` / ``name=value`` strings (values parsed as YAML) and re-validate."""
    parsed = {}
    for item in overrides:
        sep = ':=' if ':=' in item else '='
        if sep not in item:
            raise ParameterError(f'override {item!r} is not name:=value')
        name, raw = item.split(sep, 1)
        parsed[name.strip()] = yaml.safe_load(raw)
    out = dict(values)
    out.update(validate(parsed))
    return out


def markdown_table(specs: Iterable[ParamSpec] = DETECT_PARAMS) -> str:
    """README table of the parameters (name, type, default, range, description)."""
    rows = ['| parameter | type | default | range / choices | live | description |',
            '|---|---|---|---|---|---|']
    for spec in specs:
        if spec.choices:
            rng = ', '.join(f'`{c}`' for c in spec.choices)
        elif spec.min is not None or spec.max is not None:
            rng = f'{spec.min} – {spec.max}'
        else:
            rng = ''
        default = f'`{spec.default!r}`' if not isinstance(spec.default, str) else f"`'{spec.default}'`"
        live = 'no' if spec.read_only else 'yes'
        rows.append(f'| `{spec.name}` | {spec.type.__name__} | {default} | {rng} | {live} | '
                    f'{spec.description} |')
    return '\n'.join(rows)


def to_yaml(values: Mapping[str, Any] | None = None, node: str = '/**') -> str:
    """A ROS 2 parameters file with every parameter, nested by its dotted name, each with its
    description as a comment (how ``config/detect.yaml`` is generated)."""
    values = dict(defaults(), **(values or {}))
    lines = [f'{node}:', '  ros__parameters:']
    open_groups: list[str] = []
    for spec in DETECT_PARAMS:
        *groups, leaf = spec.name.split('.')
        common = 0
        while common < min(len(groups), len(open_groups)) and groups[common] == open_groups[common]:
            common += 1
        for depth in range(common, len(groups)):
            lines.append('    ' + '  ' * depth + f'{groups[depth]}:')
        open_groups = groups
        indent = '    ' + '  ' * len(groups)
        for text_line in _wrap(spec.description, 100 - len(indent)):
            lines.append(f'{indent}# {text_line}')
        lines.append(f'{indent}{leaf}: {yaml.safe_dump(values[spec.name], default_flow_style=True).strip()}'
                     .replace('\n...', ''))
    return '\n'.join(lines) + '\n'


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width=max(width, 40))


if __name__ == '__main__':  # pragma: no cover - documentation helper
    import sys

    if '--markdown' in sys.argv:
        print(markdown_table())
    elif '--yaml' in sys.argv:
        sys.stdout.write(to_yaml())
