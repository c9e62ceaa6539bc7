"""``keygrid viz``: pictures of keypoints over several frames, from an output bag or a ``keygrid predict`` file.

::

    keygrid viz --bag OUT_BAG --png strip.png            # what `keygrid detect` wrote
    keygrid viz --predict KP.npz --data SEQ.npz --png strip.png

A strip of panels, one per chosen frame (evenly spaced over the frames that have keypoints): the garment
cloud in grey (darker = higher), the keypoints as dots in the node's marker colours (``outputs.PALETTE``,
so a keypoint has the same colour here as in RViz) and the learned skeleton as lines whose opacity is the
segment strength. From a bag, everything comes from the node's own outputs: the points from
``~/cropped_points`` (run the node with ``publish_cropped_points:=true``), the keypoints and skeleton from
``~/markers`` (or, without markers, the ``keypoints`` PoseArray). Frames are matched by ``header.stamp``.

The view is from above: a z-up frame (REP 103 body frames such as ``table`` or ``base_link``) is drawn as
x right, y up; a camera optical frame (``*_optical_frame``: z forward, y down) as the camera sees it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
import json
from pathlib import Path
import sys

import numpy as np

MARKERS_SUFFIX = 'markers'
CLOUD_SUFFIX = 'cropped_points'
KEYPOINTS_SUFFIX = 'keypoints'
POSE_ARRAY = 'geometry_msgs/msg/PoseArray'
MARKER_ARRAY = 'visualization_msgs/msg/MarkerArray'
POINTCLOUD2 = 'sensor_msgs/msg/PointCloud2'


@dataclass
class FrameView:
    """What one panel draws. ``points`` (N, 3) or None; ``keypoints`` (K, 3); ``colors`` (K, 4) RGBA;
    ``segments`` (S, 2, 3) skeleton lines with ``segment_alpha`` (S,); all in ``frame_id``."""

    stamp_ns: int
    frame_id: str
    keypoints: np.ndarray
    colors: np.ndarray
    points: np.ndarray | None = None
    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 2, 3)))
    segment_alpha: np.ndarray = field(default_factory=lambda: np.zeros(0))
    names: list[str] = field(default_factory=list)


def _xyz(p) -> list[float]:
    return [float(p.x), float(p.y), float(p.z)]


def _topic(topics: dict[str, str], msgtype: str, suffix: str) -> str | None:
    """The first topic of ``msgtype`` whose last name component is ``suffix`` (namespaces vary)."""
    for name, kind in topics.items():
        if kind == msgtype and name.rstrip('/').rsplit('/', 1)[-1] == suffix:
            return name
    return None


def _from_markers(array, stamp_ns: int) -> FrameView | None:
    """Spheres (keypoints), labels (names) and the LINE_LIST skeleton of one MarkerArray."""
    from keygrid_ros.perception.outputs import NS_KEYPOINTS, NS_LABELS, NS_SKELETON

    spheres, labels, segments, alpha, frame_id = {}, {}, [], [], ''
    for m in array.markers:
        if m.action != 0:  # DELETE / DELETEALL
            continue
        frame_id = m.header.frame_id or frame_id
        if m.ns == NS_KEYPOINTS:
            c = m.color
            spheres[int(m.id)] = (_xyz(m.pose.position), [float(c.r), float(c.g), float(c.b), float(c.a)])
        elif m.ns == NS_LABELS:
            labels[int(m.id)] = str(m.text).split(' ', 1)[-1]
        elif m.ns == NS_SKELETON:
            pts = np.array([_xyz(p) for p in m.points], dtype=np.float64).reshape(-1, 2, 3)
            cols = list(m.colors)
            segments.append(pts)
            alpha += [float(cols[2 * i].a) if len(cols) >= 2 * len(pts) else 1.0 for i in range(len(pts))]
    if not spheres:
        return None  # a failed frame: the node published only the DELETEALLs
    ids = sorted(spheres)
    return FrameView(stamp_ns=stamp_ns, frame_id=frame_id,
                     keypoints=np.array([spheres[i][0] for i in ids]),
                     colors=np.array([spheres[i][1] for i in ids]),
                     segments=np.concatenate(segments) if segments else np.zeros((0, 2, 3)),
                     segment_alpha=np.array(alpha, dtype=np.float64),
                     names=[labels.get(i, f'kp_{i}') for i in ids])


def frames_from_bag(path: str | Path) -> list[FrameView]:
    """One :class:`FrameView` per output stamp with keypoints, in stamp order, from a ``keygrid detect`` bag.

    Raises ``ValueError`` when the bag has neither the node's markers nor its keypoints topic.
    """
    from keygrid_ros.perception.cloud_io import bag_topics, iter_bag_messages
    from keygrid_ros.perception.outputs import PALETTE
    from keygrid_ros.perception.pointcloud2 import read_xyz
    from keygrid_ros.ros.node import stamp_ns

    topics = bag_topics(path)
    markers = _topic(topics, MARKER_ARRAY, MARKERS_SUFFIX)
    poses = _topic(topics, POSE_ARRAY, KEYPOINTS_SUFFIX)
    cloud = _topic(topics, POINTCLOUD2, CLOUD_SUFFIX)
    if markers is None and poses is None:
        raise ValueError(f'{path}: no keygrid output topics (a MarkerArray ".../{MARKERS_SUFFIX}" or a PoseArray '
                         f'".../{KEYPOINTS_SUFFIX}"); topics are: {", ".join(topics) or "none"}')
    views: dict[int, FrameView] = {}
    clouds: dict[int, np.ndarray] = {}
    wanted = [t for t in (markers or poses, cloud) if t]
    for topic, _msgtype, msg, _t in iter_bag_messages(path, topics=wanted):
        if topic == cloud:
            clouds[stamp_ns(msg.header)] = read_xyz(msg)
        elif topic == markers:
            stamp = next((stamp_ns(m.header) for m in msg.markers), None)
            view = _from_markers(msg, stamp) if stamp is not None else None
            if view is not None:
                views[stamp] = view
        elif msg.poses:  # PoseArray: no colours or skeleton in the message; colour by id like the markers
            kps = np.array([_xyz(p.position) for p in msg.poses])
            colors = np.column_stack([PALETTE[np.arange(len(kps)) % len(PALETTE)], np.ones(len(kps))])
            stamp = stamp_ns(msg.header)
            views[stamp] = FrameView(stamp, msg.header.frame_id, kps, colors)
    for stamp, view in views.items():
        view.points = clouds.get(stamp)
    return [views[s] for s in sorted(views)]


def frames_from_predict(predict_path: str | Path, data_path: str | Path) -> list[FrameView]:
    """Frames of a ``keygrid predict`` file over the mesh vertices of the sequence it was run on."""
    from keygrid_ros.data.sequences import load_sequence
    from keygrid_ros.perception.outputs import PALETTE

    with np.load(predict_path, allow_pickle=False) as f:
        keypoints, frames = f['keypoints'], f['frames']
        names = [str(n) for n in f['keypoint_names']] if 'keypoint_names' in f.files else []
    seq = load_sequence(data_path)
    if frames.max(initial=-1) >= seq.frames:
        raise ValueError(f'{predict_path} has frame {int(frames.max())} but {data_path} only {seq.frames} frames')
    k = keypoints.shape[1]
    colors = np.column_stack([PALETTE[np.arange(k) % len(PALETTE)], np.ones(k)])
    return [FrameView(stamp_ns=int(fr), frame_id='', keypoints=keypoints[i].astype(np.float64), colors=colors,
                      points=seq.vertices[int(fr)].astype(np.float64), names=names)
            for i, fr in enumerate(frames)]


def choose(views: list[FrameView], count: int) -> list[FrameView]:
    """``count`` views evenly spaced over the list, first and last included."""
    if len(views) <= count:
        return list(views)
    return [views[int(round(i))] for i in np.linspace(0, len(views) - 1, count)]


def _plane(xyz: np.ndarray, frame_id: str) -> np.ndarray:
    """(N, 3) -> (N, 2) drawing coordinates: top view of a z-up frame, or the camera's view of an optical one."""
    if frame_id.endswith('optical_frame'):
        return np.column_stack([xyz[:, 0], -xyz[:, 1]])
    return xyz[:, :2]


def _height(xyz: np.ndarray, frame_id: str) -> np.ndarray:
    return -xyz[:, 2] if frame_id.endswith('optical_frame') else xyz[:, 2]


def draw_strip(views: list[FrameView], path: str | Path, title: str = '', columns: int = 6) -> Path:
    """Write a PNG strip of ``views`` (at most ``columns`` per row) and return its path."""
    from keygrid_ros.plotting import pyplot, save_figure

    plt = pyplot()
    if not views:
        raise ValueError('nothing to draw: no frame has keypoints')
    rows = (len(views) + columns - 1) // columns
    cols = min(columns, len(views))
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.8 * rows + (0.4 if title else 0)), squeeze=False)
    t0 = views[0].stamp_ns
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, view in zip(axes.ravel(), views):
        ax.set_aspect('equal')
        if view.points is not None and len(view.points):
            pts = view.points[np.isfinite(view.points).all(axis=1)]
            xy, h = _plane(pts, view.frame_id), _height(pts, view.frame_id)
            order = np.argsort(h)  # draw the highest points last, on top
            ax.scatter(xy[order, 0], xy[order, 1], c=h[order], cmap='Greys', s=3, linewidths=0,
                       vmin=h.min() - 0.6 * np.ptp(h) - 0.02, vmax=h.max() + 1e-3)
        for (a, b), alpha in zip(view.segments, view.segment_alpha):
            ab = _plane(np.stack([a, b]), view.frame_id)
            ax.plot(ab[:, 0], ab[:, 1], color='#303030', alpha=float(np.clip(0.7 * alpha, 0.1, 0.7)), linewidth=0.9)
        kp = _plane(view.keypoints, view.frame_id)
        ax.scatter(kp[:, 0], kp[:, 1], c=np.clip(view.colors[:, :3], 0, 1), s=46, edgecolors='black',
                   linewidths=0.7, zorder=3)
        label = f'frame {view.stamp_ns}' if view.frame_id == '' else f't = {(view.stamp_ns - t0) / 1e9:.2f} s'
        ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--bag', help='output rosbag2 of keygrid detect (or of the node, recorded)')
    source.add_argument('--predict', help='keypoints file of keygrid predict (.npz); needs --data')
    parser.add_argument('--data', help='the sequence --predict was run on (its mesh vertices are drawn)')
    parser.add_argument('--png', required=True, help='output picture')
    parser.add_argument('--frames', type=int, default=6, help='panels, evenly spaced over the frames (default 6)')
    parser.add_argument('--columns', type=int, default=6, help='panels per row (default 6)')
    parser.add_argument('--title', default='', help='title over the strip')


def run(args: argparse.Namespace) -> int:
    if args.predict and not args.data:
        print('keygrid viz: --predict needs --data SEQUENCE (the points to draw the keypoints on)', file=sys.stderr)
        return 2
    if args.frames < 1 or args.columns < 1:
        print('keygrid viz: --frames and --columns must be at least 1', file=sys.stderr)
        return 2
    try:
        views = frames_from_bag(args.bag) if args.bag else frames_from_predict(args.predict, args.data)
        chosen = choose(views, args.frames)
        out = draw_strip(chosen, args.png, args.title, args.columns)
    except (ValueError, OSError, KeyError) as exc:
        print(f'keygrid viz: {exc}', file=sys.stderr)
        return 1
    with_points = sum(v.points is not None for v in chosen)
    print(json.dumps({'png': str(out), 'frames_with_keypoints': len(views), 'drawn': len(chosen),
                      'drawn_with_points': with_points}))
    return 0
