"""A small TF buffer for the transports that have no tf2 (DDS-direct, bag): /tf and /tf_static in, 4x4 out.

Same semantics as tf2 where the node relies on them: a lookup walks the frame tree through the common
ancestor, dynamic transforms are interpolated at the requested stamp (linear translation, slerp rotation),
static ones hold at every time, no extrapolation beyond the stored history (a small tolerance aside), and
``timeout_s`` waits for a transform that has not arrived yet. The rclpy transport uses tf2_ros instead and
converts its answer with :func:`matrix_from_transform`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
import threading
import time
from typing import Any

import numpy as np

#: Stamps closer than this to the stored history are accepted without extrapolating (camera vs tf jitter).
TOLERANCE_NS = 20_000_000
#: Dynamic history kept per edge (tf2's default cache is 10 s).
CACHE_NS = 10_000_000_000


class TransformUnavailableError(LookupError):
    """No transform between two frames at a stamp; the message names both frames and why."""


def quaternion_to_matrix(q) -> np.ndarray:
    """(x, y, z, w) -> (3, 3) rotation (normalising the quaternion first)."""
    x, y, z, w = (float(v) for v in q)
    n = x * x + y * y + z * z + w * w
    if n < 1e-12:
        return np.eye(3)
    s = 2.0 / n
    return np.array([
        [1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)],
        [s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w)],
        [s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)],
    ])


def matrix_from_transform(transform: Any) -> np.ndarray:
    """geometry_msgs/Transform (any message world) -> (4, 4) parent <- child."""
    t, r = transform.translation, transform.rotation
    out = np.eye(4)
    out[:3, :3] = quaternion_to_matrix((r.x, r.y, r.z, r.w))
    out[:3, 3] = (t.x, t.y, t.z)
    return out


def _slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    dot = float(q0 @ q1)
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(dot)
    return (np.sin((1 - t) * theta) * q0 + np.sin(t * theta) * q1) / np.sin(theta)


class _Edge:
    """History of one parent <- child transform: (stamp_ns, translation (3,), quaternion (4,))."""

    def __init__(self, static: bool):
        self.static = static
        self.stamps: deque[int] = deque()
        self.values: deque[tuple[np.ndarray, np.ndarray]] = deque()

    def add(self, stamp_ns: int, translation: np.ndarray, rotation: np.ndarray) -> None:
        if self.static:
            self.stamps, self.values = deque([stamp_ns]), deque([(translation, rotation)])
            return
        if self.stamps and stamp_ns < self.stamps[-1]:  # out of order: insert (rare; keep it simple)
            index = bisect_left(list(self.stamps), stamp_ns)
            self.stamps.insert(index, stamp_ns)
            self.values.insert(index, (translation, rotation))
        else:
            self.stamps.append(stamp_ns)
            self.values.append((translation, rotation))
        while self.stamps and self.stamps[-1] - self.stamps[0] > CACHE_NS:
            self.stamps.popleft()
            self.values.popleft()

    def at(self, stamp_ns: int | None) -> np.ndarray | str:
        """(4, 4) at ``stamp_ns`` (None = latest), or why not."""
        if not self.stamps:
            return 'no data'
        if self.static or stamp_ns is None or len(self.stamps) == 1:
            if not self.static and stamp_ns is not None and abs(stamp_ns - self.stamps[0]) > TOLERANCE_NS:
                return f'only one transform, at {self.stamps[0] / 1e9:.3f} s'
            translation, rotation = self.values[-1]
        else:
            stamps = self.stamps
            if stamp_ns < stamps[0] - TOLERANCE_NS or stamp_ns > stamps[-1] + TOLERANCE_NS:
                return (f'requested {stamp_ns / 1e9:.3f} s is outside the buffered '
                        f'{stamps[0] / 1e9:.3f} .. {stamps[-1] / 1e9:.3f} s (extrapolation)')
            index = min(max(bisect_left(stamps, stamp_ns), 1), len(stamps) - 1)
            s0, s1 = stamps[index - 1], stamps[index]
            t = min(max((stamp_ns - s0) / (s1 - s0), 0.0), 1.0) if s1 > s0 else 1.0
            (t0, r0), (t1, r1) = self.values[index - 1], self.values[index]
            translation, rotation = t0 + t * (t1 - t0), _slerp(r0, r1, t)
        out = np.eye(4)
        out[:3, :3] = quaternion_to_matrix(rotation)
        out[:3, 3] = translation
        return out


class TfBuffer:
    """Thread-safe frame tree fed with TransformStamped messages (any message world)."""

    def __init__(self):
        self._edges: dict[str, tuple[str, _Edge]] = {}  # child -> (parent, history)
        self._changed = threading.Condition()

    def set_transform(self, transform: Any, static: bool = False) -> None:
        child = transform.child_frame_id.lstrip('/')
        parent = transform.header.frame_id.lstrip('/')
        if not child or not parent or child == parent:
            return
        stamp = transform.header.stamp
        t, r = transform.transform.translation, transform.transform.rotation
        with self._changed:
            known = self._edges.get(child)
            if known is None or known[0] != parent or known[1].static != static:
                known = (parent, _Edge(static))
                self._edges[child] = known
            known[1].add(int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec), np.array([t.x, t.y, t.z], float),
                         np.array([r.x, r.y, r.z, r.w], float))
            self._changed.notify_all()

    def set_tf_message(self, message: Any, static: bool = False) -> None:
        """Feed a tf2_msgs/TFMessage (/tf or /tf_static)."""
        for transform in message.transforms:
            self.set_transform(transform, static)

    def frames(self) -> set[str]:
        with self._changed:
            return set(self._edges) | {parent for parent, _ in self._edges.values()}

    def lookup(self, target: str, source: str, stamp_ns: int | None = None, timeout_s: float = 0.0) -> np.ndarray:
        """(4, 4) mapping points in ``source`` into ``target`` at ``stamp_ns`` (None = latest).

        Waits up to ``timeout_s`` for missing data; raises :class:`TransformUnavailableError` naming both frames.
        """
        target, source = target.lstrip('/'), source.lstrip('/')
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                result = self._lookup(target, source, stamp_ns)
                if not isinstance(result, str):
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    when = 'latest' if stamp_ns is None else f'{stamp_ns / 1e9:.3f} s'
                    raise TransformUnavailableError(f"no transform from '{source}' to '{target}' at {when}: {result}")
                self._changed.wait(remaining)

    def _chain(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._edges and len(chain) <= len(self._edges):
            chain.append(self._edges[chain[-1]][0])
        return chain

    def _lookup(self, target: str, source: str, stamp_ns: int | None) -> np.ndarray | str:
        if target == source:
            return np.eye(4)
        up_source, up_target = self._chain(source), self._chain(target)
        common = next((f for f in up_source if f in set(up_target)), None)
        if common is None:
            known = self.frames()
            missing = [f for f in (source, target) if f not in known]
            if missing:
                return f"frame {' and '.join(repr(m) for m in missing)} does not exist (known: {sorted(known)})"
            return 'the two frames are not connected'
        # root <- source, then root <- target; answer = (root <- target)^-1 (root <- source)
        matrices = []
        for chain in (up_source, up_target):
            acc = np.eye(4)
            for child in chain[:chain.index(common)]:
                parent, edge = self._edges[child]
                step = edge.at(stamp_ns)
                if isinstance(step, str):
                    return f"'{parent}' <- '{child}': {step}"
                acc = step @ acc
            matrices.append(acc)
        return np.linalg.inv(matrices[1]) @ matrices[0]
