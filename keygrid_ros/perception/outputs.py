"""Detection -> the node's output messages (``keygrid_ros.messages`` dataclasses; transports convert them).

Every builder takes the *input* cloud's header re-targeted to the output frame (``output_header``), so all
outputs of one frame share its stamp and frame. Contracts (README, ARCHITECTURE "Topics"):

* ``keypoints`` PoseArray: ``poses[i]`` is keypoint ``i`` (the model's keypoint id, names in the marker
  labels / ``Detection.names``); orientation identity (a keypoint is a point).
* ``garment_pose`` PoseStamped: centroid of the garment points; orientation from the Kabsch fit of the
  keypoints to the model's reference layout, or the principal axes (x major, z away from the table).
* ``~/markers`` MarkerArray: DELETEALL for each of our namespaces first (scoped on new RViz, global on old:
  either way no stale marker survives), then one SPHERE per keypoint (ns ``keygrid/keypoints``, id = keypoint
  id, colour by id, alpha by confidence), one TEXT label per keypoint (ns ``keygrid/labels``, id = keypoint id),
  one LINE_LIST skeleton (ns ``keygrid/skeleton``, id 0; segment alpha = strength), one ARROW for the garment
  pose (ns ``keygrid/garment``, id 0). Failed frames get the DELETEALLs only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math

import numpy as np

from keygrid_ros.messages import (
    ColorRGBA,
    DiagnosticArray,
    DiagnosticStatus,
    Header,
    KeyValue,
    Marker,
    MarkerArray,
    Point,
    PointCloud2,
    Pose,
    PoseArray,
    PoseStamped,
    Quaternion,
    TFMessage,
    Time,
    Transform,
    TransformStamped,
    Vector3,
)
from keygrid_ros.perception.detector import Detection
from keygrid_ros.perception.pointcloud2 import create_cloud_xyz32

NS_KEYPOINTS = 'keygrid/keypoints'
NS_LABELS = 'keygrid/labels'
NS_SKELETON = 'keygrid/skeleton'
NS_GARMENT = 'keygrid/garment'
NAMESPACES = (NS_KEYPOINTS, NS_LABELS, NS_SKELETON, NS_GARMENT)

#: Keypoint colours by id (Tableau 10: distinct, colour-blind friendlier than a rainbow); wraps after 10.
PALETTE = np.array([
    (0.122, 0.467, 0.706), (1.000, 0.498, 0.055), (0.173, 0.627, 0.173), (0.839, 0.153, 0.157),
    (0.580, 0.404, 0.741), (0.549, 0.337, 0.294), (0.890, 0.467, 0.761), (0.498, 0.498, 0.498),
    (0.737, 0.741, 0.133), (0.090, 0.745, 0.812),
])

SPHERE_DIAMETER = 0.025  # metres: visible on a 60 cm garment without hiding it
TEXT_HEIGHT = 0.02
MIN_SEGMENT_STRENGTH = 0.25  # weaker skeleton segments are not drawn at all


def output_header(input_header, frame_id: str) -> Header:
    """The input's stamp with the output frame (copying the stamp into our own Time)."""
    stamp = input_header.stamp
    return Header(stamp=Time(sec=int(stamp.sec), nanosec=int(stamp.nanosec)), frame_id=frame_id)


def _point(xyz) -> Point:
    return Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def _quaternion(xyzw) -> Quaternion:
    return Quaternion(x=float(xyzw[0]), y=float(xyzw[1]), z=float(xyzw[2]), w=float(xyzw[3]))


def keypoint_color(index: int, alpha: float = 1.0) -> ColorRGBA:
    r, g, b = PALETTE[index % len(PALETTE)]
    return ColorRGBA(r=float(r), g=float(g), b=float(b), a=float(alpha))


def keypoints_pose_array(header: Header, detection: Detection) -> PoseArray:
    """PoseArray with ``poses[i]`` = keypoint ``i`` (empty when the frame failed)."""
    poses = [] if not detection.ok else [Pose(position=_point(p)) for p in detection.keypoints]
    return PoseArray(header=header, poses=poses)


def garment_pose_stamped(header: Header, detection: Detection) -> PoseStamped | None:
    """The garment pose, or None when the frame failed (nothing is published then)."""
    if not detection.ok:
        return None
    return PoseStamped(header=header, pose=Pose(position=_point(detection.position),
                                                orientation=_quaternion(detection.orientation)))


def delete_all_markers(header: Header) -> list[Marker]:
    """One DELETEALL per namespace we draw in."""
    return [Marker(header=header, ns=ns, id=0, action=Marker.DELETEALL) for ns in NAMESPACES]


def marker_array(header: Header, detection: Detection) -> MarkerArray:
    """DELETEALLs, then spheres, labels, skeleton and garment axis (see the module docstring)."""
    markers = delete_all_markers(header)
    if not detection.ok:
        return MarkerArray(markers=markers)
    keypoints, confidence = detection.keypoints, detection.confidence
    names = detection.names
    for i, position in enumerate(keypoints):
        alpha = 0.35 + 0.65 * float(confidence[i])  # faint = unsure, never invisible
        markers.append(Marker(
            header=header, ns=NS_KEYPOINTS, id=i, type=Marker.SPHERE, action=Marker.ADD,
            pose=Pose(position=_point(position)),
            scale=Vector3(x=SPHERE_DIAMETER, y=SPHERE_DIAMETER, z=SPHERE_DIAMETER),
            color=keypoint_color(i, alpha)))
    for i, position in enumerate(keypoints):
        label = names[i] if i < len(names) else f'kp_{i}'
        lifted = np.asarray(position, np.float64) + np.array([0.0, 0.0, SPHERE_DIAMETER])
        markers.append(Marker(
            header=header, ns=NS_LABELS, id=i, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
            pose=Pose(position=_point(lifted)), scale=Vector3(z=TEXT_HEIGHT),
            color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0), text=f'{i} {label}'))
    skeleton = _skeleton(header, keypoints, detection.pairs, detection.strengths)
    if skeleton is not None:
        markers.append(skeleton)
    markers.append(_garment_arrow(header, detection))
    return MarkerArray(markers=markers)


def _skeleton(header: Header, keypoints: np.ndarray, pairs: np.ndarray | None,
              strengths: np.ndarray | None) -> Marker | None:
    """LINE_LIST of the segments at least MIN_SEGMENT_STRENGTH strong; per-vertex alpha = strength."""
    if pairs is None or strengths is None or len(pairs) != len(strengths):
        return None
    keep = np.flatnonzero(strengths >= MIN_SEGMENT_STRENGTH)
    if keep.size == 0:
        return None  # an empty LINE_LIST makes RViz complain; the DELETEALL already cleared the old one
    points, colors = [], []
    for s in keep:
        a, b = pairs[s]
        color = ColorRGBA(r=0.9, g=0.9, b=0.9, a=float(strengths[s]))
        points += [_point(keypoints[a]), _point(keypoints[b])]
        colors += [color, color]
    return Marker(header=header, ns=NS_SKELETON, id=0, type=Marker.LINE_LIST, action=Marker.ADD,
                  scale=Vector3(x=0.004), color=ColorRGBA(r=0.9, g=0.9, b=0.9, a=1.0), points=points, colors=colors)


def _garment_arrow(header: Header, detection: Detection) -> Marker:
    """An arrow along the garment's x axis at its centroid (shows the pose's orientation)."""
    return Marker(header=header, ns=NS_GARMENT, id=0, type=Marker.ARROW, action=Marker.ADD,
                  pose=Pose(position=_point(detection.position), orientation=_quaternion(detection.orientation)),
                  scale=Vector3(x=0.15, y=0.012, z=0.012), color=ColorRGBA(r=1.0, g=1.0, b=0.2, a=0.9))


def cropped_cloud(header: Header, detection: Detection) -> PointCloud2:
    """The model input points (target frame) as an xyz32 PointCloud2 (empty when the frame failed)."""
    points = detection.points if detection.ok and detection.points is not None else np.zeros((0, 3), np.float32)
    return create_cloud_xyz32(header, points)


def keypoint_frame_name(index: int, prefix: str = 'keygrid_kp_') -> str:
    return f'{prefix}{index}'


def keypoint_transforms(header: Header, detection: Detection, prefix: str = 'keygrid_kp_') -> TFMessage:
    """One TF frame per keypoint (``keygrid_kp_<i>``, child of the output frame, identity rotation)."""
    if not detection.ok:
        return TFMessage()
    transforms = [
        TransformStamped(header=header, child_frame_id=keypoint_frame_name(i, prefix),
                         transform=Transform(translation=Vector3(x=float(p[0]), y=float(p[1]), z=float(p[2]))))
        for i, p in enumerate(detection.keypoints)
    ]
    return TFMessage(transforms=transforms)


def _format(value) -> str:
    if isinstance(value, float):
        return 'nan' if math.isnan(value) else f'{value:.3f}'
    return str(value)


def diagnostic_array(header: Header, name: str, level: int, message: str, values: Mapping[str, object],
                     hardware_id: str = '') -> DiagnosticArray:
    """One DiagnosticStatus (the node's) with ``values`` as key/value strings, floats to 3 decimals."""
    status = DiagnosticStatus(level=int(level), name=name, message=message, hardware_id=hardware_id,
                              values=[KeyValue(key=str(k), value=_format(v)) for k, v in values.items()])
    return DiagnosticArray(header=header, status=[status])


def detection_values(detection: Detection) -> dict[str, object]:
    """Per-stage milliseconds and point counts of one frame, for the diagnostics values."""
    values: dict[str, object] = {}
    for stage, ms in detection.ms.items():
        values[f'ms.{stage}'] = float(ms)
    for stage, count in detection.stage_points.items():
        values[f'points.{stage}'] = int(count)
    if detection.ok:
        values['pose_method'] = detection.pose_method
        values['confidence.mean'] = float(np.mean(detection.confidence))
    return values


def names_text(names: Sequence[str]) -> str:
    """``0:name0 1:name1 ...`` — documents the PoseArray index -> keypoint mapping in diagnostics."""
    return ' '.join(f'{i}:{n}' for i, n in enumerate(names))
