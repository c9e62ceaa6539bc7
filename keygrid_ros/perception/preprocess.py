"""From a raw depth-camera cloud to Key-Grid's normalised, FPS-ordered model input.

Stages (each optional, configured from the node's parameters, see ``config/detect.yaml``):

0. ``decimate``: every n-th row and column of an organised cloud (a view, no copy).
1. ``transform`` + ``crop``: into the target frame (a 4x4 from TF, given by the caller) and an
   axis-aligned workspace box there; NaN points go in the same pass.
   ``self_filter`` (when the caller passes robot frame origins): points within a radius of each origin, or of
   the segments joining consecutive ones, are cut, so a gripper holding the garment does not join it.
2. ``voxel``: one averaged point per voxel, so the later stages cost the same at any camera range.
3. ``table``: the dominant plane by RANSAC (reported, so the caller can publish it); points on it
   and, optionally, behind it are removed.
4. ``cluster``: the garment is the largest Euclidean cluster (or the one nearest the box centre) that is
   garment-sized and rests on the table: cans, walls and robot arms are not garments.
5. ``sample``: farthest point sampling to ``num_points``, kept in FPS order.
6. ``normalize``: Key-Grid's scalar min/max normalisation to [-1, 1] (exactly invertible).

A frame the pipeline cannot use (empty crop, no table, no cluster big enough, too few points) is
not an exception: :class:`PreprocessResult` carries ``reason`` saying why, and the report says how
many points each stage kept and how long it took.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
import time
from typing import Any
import warnings

import numpy as np
from scipy.spatial import cKDTree
import torch

from keygrid_ros.normalize import Normalization
from keygrid_ros.params import defaults as default_params
from keygrid_ros.perception.clustering import ATTACH_MIN_POINTS, Clusters, attach_pieces, euclidean_clusters
from keygrid_ros.perception.filters import cut_robot, transform_and_crop, voxel_downsample
from keygrid_ros.perception.plane import Plane, fit_plane
from keygrid_ros.perception.sampling import fps_order


@dataclass(frozen=True)
class PreprocessConfig:
    """Stage settings; see ``keygrid_ros.params`` for what each one means."""

    decimation: int = 2
    crop_enabled: bool = True
    crop_min: tuple[float, float, float] = (-0.6, -0.6, -0.2)
    crop_max: tuple[float, float, float] = (0.6, 0.6, 1.5)
    self_filter_radius: float = 0.06
    self_filter_chain: bool = False
    voxel_size: float = 0.004
    table_enabled: bool = True
    table_distance_threshold: float = 0.004
    table_iterations: int = 256
    table_min_inlier_ratio: float = 0.1
    table_remove_below: bool = True
    table_max_tilt_deg: float = 0.0
    cluster_enabled: bool = True
    cluster_tolerance: float = 0.015
    cluster_min_points: int = 500
    cluster_min_cell_points: int = 3
    cluster_min_extent: float = 0.15
    cluster_max_extent: float = 1.5
    cluster_max_gap: float = 0.05
    cluster_min_height: float = 0.015
    cluster_select: str = 'largest'
    cluster_attach_distance: float = 0.1
    num_points: int = 2048
    min_points: int = 256

    @classmethod
    def from_params(cls, values: Mapping[str, Any] | None = None) -> PreprocessConfig:
        """Build from the node's parameter dict (dotted names); missing names take the defaults."""
        merged = default_params()
        merged.update(values or {})
        return cls(
            decimation=merged['decimation'],
            crop_enabled=merged['crop.enabled'],
            crop_min=tuple(merged['crop.min']),
            crop_max=tuple(merged['crop.max']),
            self_filter_radius=merged['self_filter.radius'],
            self_filter_chain=merged['self_filter.chain'],
            voxel_size=merged['voxel_size'],
            table_enabled=merged['table.enabled'],
            table_distance_threshold=merged['table.distance_threshold'],
            table_iterations=merged['table.iterations'],
            table_min_inlier_ratio=merged['table.min_inlier_ratio'],
            table_remove_below=merged['table.remove_below'],
            table_max_tilt_deg=merged['table.max_tilt_deg'],
            cluster_enabled=merged['cluster.enabled'],
            cluster_tolerance=merged['cluster.tolerance'],
            cluster_min_points=merged['cluster.min_points'],
            cluster_min_cell_points=merged['cluster.min_cell_points'],
            cluster_min_extent=merged['cluster.min_extent'],
            cluster_max_extent=merged['cluster.max_extent'],
            cluster_max_gap=merged['cluster.max_gap'],
            cluster_min_height=merged['cluster.min_height'],
            cluster_select=merged['cluster.select'],
            cluster_attach_distance=merged['cluster.attach_distance'],
            num_points=merged['num_points'],
            min_points=merged['min_points'],
        )


# A piece seen apart from the garment joins it only when all of it is this far above the table (metres): cloth
# held up by a gripper. Patches of sensor noise and objects lying next to the garment touch the table (on real
# Kinect clouds their lowest points sit at the 4 mm table threshold), so they stay out.
ATTACH_MIN_LIFT = 0.02
# ... or when at least this share of its points lies within ``cluster.tolerance`` of the garment the previous frame
# kept: cloth the garment already was (the part of a garment a flap's shadow cuts off from the rest, lying on the
# table). Things lying next to the garment were never part of it, so they stay out however near they are.
ATTACH_MIN_OVERLAP = 0.5


@dataclass
class PreprocessReport:
    """What each stage did: points kept and milliseconds, in stage order, and why it stopped."""

    points: dict[str, int] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)
    reason: str | None = None

    @property
    def total_ms(self) -> float:
        return float(sum(self.ms.values()))


@dataclass
class PreprocessResult:
    """The model input and everything needed to map the model's answer back.

    ``model_input`` (N, 3) float32 is normalised to [-1, 1]; ``points`` (N, 3) float32 are the same
    points in the target frame (metres); ``normalization.invert`` maps model-space coordinates back
    to the target frame; ``garment`` (G, 3) float32 is every point the front end took for the garment
    (before sampling; the next frame's ``previous``). All four are None when ``report.reason`` says why
    the frame was unusable.
    """

    model_input: np.ndarray | None
    points: np.ndarray | None
    normalization: Normalization | None
    plane: Plane | None
    report: PreprocessReport
    garment: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.report.reason is None


class _Stopwatch:
    """Adds the time since the previous lap to ``report.ms[name]``."""

    def __init__(self, report: PreprocessReport, device: torch.device):
        self._report = report
        self._sync = device.type == 'cuda'
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self._sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self._report.ms[name] = self._report.ms.get(name, 0.0) + (now - self._last) * 1e3
        self._last = now


class Preprocessor:
    """Callable front end: ``result = Preprocessor(config)(points, transform)``.

    Stateless between frames apart from the configuration, so it may be swapped atomically when
    parameters change at run time.
    """

    def __init__(self, config: PreprocessConfig | None = None, device: str | torch.device = 'cpu'):
        self.config = config or PreprocessConfig()
        self.device = torch.device(device)
        cfg = self.config
        self._box_min = torch.tensor(cfg.crop_min, dtype=torch.float32, device=self.device)
        self._box_max = torch.tensor(cfg.crop_max, dtype=torch.float32, device=self.device)
        self._box_centre = (np.asarray(cfg.crop_min) + np.asarray(cfg.crop_max)) / 2.0
        self._up = torch.tensor([0.0, 0.0, 1.0], device=self.device)

    def __call__(self, points: np.ndarray, transform: np.ndarray | None = None,
                 previous: np.ndarray | None = None, robot: np.ndarray | None = None) -> PreprocessResult:
        """Run every enabled stage.

        Args:
            points: (N, 3) or organised (H, W, 3) float32/float64 sensor points, NaN for no return
                (read-only or strided views are fine; nothing is written). Pass organised clouds as
                (H, W, 3) so that ``decimation`` can apply.
            transform: (4, 4) target <- sensor transform, or None when the cloud is already in the
                target frame.
            previous: (P, 3) the garment points of the stream's previous frame (its result's ``garment``),
                or None: pieces of the cloud that were garment then may join the garment now
                (``cluster.attach_distance``).
            robot: (M, 3) origins of the robot frames to cut out (``self_filter.frames``), in the target
                frame, or None: no self-filter.
        """
        cfg = self.config
        report = PreprocessReport()
        watch = _Stopwatch(report, self.device)
        report.points['input'] = int(points.size // 3)
        if points.ndim == 3 and points.shape[0] > 1 and cfg.decimation > 1:  # organised: a strided view
            points = points[::cfg.decimation, ::cfg.decimation]
            report.points['decimate'] = int(points.size // 3)
        flat = points.reshape(-1, 3)
        with warnings.catch_warnings():
            # A zero-copy view of a message buffer is read-only; torch warns but never writes to it.
            warnings.simplefilter('ignore', UserWarning)
            cloud = torch.from_numpy(flat).to(device=self.device, dtype=torch.float32)
        tf = None
        sensor_origin = torch.zeros(3, device=self.device)
        if transform is not None:
            tf = torch.as_tensor(np.asarray(transform, dtype=np.float32), device=self.device)
            sensor_origin = tf[:3, 3]
        cropped = transform_and_crop(cloud, tf, self._box_min if cfg.crop_enabled else None,
                                     self._box_max if cfg.crop_enabled else None)
        report.points['crop'] = int(cropped.shape[0])
        watch.lap('crop')
        if robot is not None and len(robot):
            origins = torch.as_tensor(np.asarray(robot, dtype=np.float32).reshape(-1, 3), device=self.device)
            cropped = cut_robot(cropped, origins, cfg.self_filter_radius, cfg.self_filter_chain)
            report.points['self_filter'] = int(cropped.shape[0])
            watch.lap('self_filter')
        if cropped.shape[0] < cfg.min_points:
            where = 'inside the crop box' + (' away from the robot' if 'self_filter' in report.points else '')
            return self._give_up(report, f'only {cropped.shape[0]} valid points {where} '
                                         f'(need {cfg.min_points}); is the garment in the workspace?')

        voxels = voxel_downsample(cropped, cfg.voxel_size)
        report.points['voxel'] = int(voxels.shape[0])
        watch.lap('voxel')

        plane, height = None, None
        if cfg.table_enabled:
            plane = fit_plane(voxels, cfg.table_distance_threshold, cfg.table_iterations,
                              sensor_origin=sensor_origin, up=self._up, max_tilt_deg=cfg.table_max_tilt_deg)
            if plane is None or plane.inlier_ratio < cfg.table_min_inlier_ratio:
                found = 'no plane' if plane is None else f'best plane holds {plane.inlier_ratio:.0%} of the points'
                watch.lap('table')
                return self._give_up(report, f'no table found ({found}; need '
                                             f'{cfg.table_min_inlier_ratio:.0%}); disable table removal '
                                             'for garments held in the air')
            distance = plane.signed_distance(voxels)
            off_table = distance > cfg.table_distance_threshold
            if not cfg.table_remove_below:
                off_table |= distance < -cfg.table_distance_threshold
            voxels = voxels[off_table]
            height = distance[off_table].cpu().numpy()
            report.points['table'] = int(voxels.shape[0])
            watch.lap('table')

        candidates = voxels.cpu().numpy()
        if cfg.cluster_enabled:
            candidates, reason = self._isolate(candidates, height, previous)
            watch.lap('cluster')
            report.points['cluster'] = int(candidates.shape[0])
            if reason:
                return self._give_up(report, reason, plane)
        if candidates.shape[0] < cfg.min_points:
            return self._give_up(report, f'only {candidates.shape[0]} garment points left (need '
                                         f'{cfg.min_points})', plane)

        selected = candidates[fps_order(candidates, cfg.num_points)]
        report.points['sample'] = int(selected.shape[0])
        watch.lap('sample')
        normalization = Normalization.fit(selected)
        model_input = normalization.apply(selected)
        watch.lap('normalize')
        return PreprocessResult(model_input=model_input, points=selected, normalization=normalization,
                                plane=plane, report=report, garment=candidates)

    def _isolate(self, points: np.ndarray, height: np.ndarray | None, previous: np.ndarray | None = None
                 ) -> tuple[np.ndarray, str | None]:
        """Pick the garment cluster; returns its points, or an empty array and the reason.

        ``height`` (N,) is each point's distance above the table (None without table removal). A
        cluster qualifies as a garment when it is big enough, garment-sized (``min_extent`` to
        ``max_extent`` across) and, with a table, rests on it (lowest point within ``max_gap``) and
        stands out of it (99th-percentile height at least ``min_height``: depth cameras bend flat
        tables by several millimetres towards the image corners, and such patches are not garments).
        Other pieces then join it (``attach_distance``): held up off the table, or garment in ``previous``.
        """
        cfg = self.config
        clusters = euclidean_clusters(points, cfg.cluster_tolerance, cfg.cluster_min_cell_points)
        big = np.flatnonzero(clusters.sizes >= cfg.cluster_min_points)
        if big.size == 0:
            largest = int(clusters.sizes.max()) if clusters.sizes.size else 0
            return points[:0], (f'no garment: no cluster of at least {cfg.cluster_min_points} points above the '
                                f'table (largest has {largest})')
        qualified, rejected = [], []
        for label in big[np.argsort(-clusters.sizes[big])]:
            members = clusters.labels == label
            extent = float(np.ptp(points[members], axis=0).max())
            gap = float(height[members].min()) if height is not None else 0.0
            if extent < cfg.cluster_min_extent:
                rejected.append(f'{clusters.sizes[label]} points only {extent:.2f} m across')
            elif extent > cfg.cluster_max_extent:
                rejected.append(f'{clusters.sizes[label]} points {extent:.2f} m across')
            elif gap > cfg.cluster_max_gap:
                rejected.append(f'{clusters.sizes[label]} points {gap:.2f} m above the table')
            elif height is not None and (top := float(np.percentile(height[members], 99))) < cfg.cluster_min_height:
                rejected.append(f'{clusters.sizes[label]} points at most {top * 1000:.0f} mm high')
            else:
                qualified.append(label)
        if not qualified:
            return points[:0], ('no garment: no cluster is garment-sized and resting on the table ('
                                + '; '.join(rejected[:3]) + ')')
        if cfg.cluster_select == 'nearest_center':
            centroids = np.stack([points[clusters.labels == label].mean(axis=0) for label in qualified])
            chosen = qualified[int(np.argmin(np.linalg.norm(centroids - self._box_centre, axis=1)))]
        else:
            chosen = qualified[0]  # sorted by size
        garment = clusters.labels == chosen
        # Only when some other cluster is big enough to join: most frames show the garment in one piece.
        if cfg.cluster_attach_distance > 0 and np.count_nonzero(clusters.sizes >= ATTACH_MIN_POINTS) > 1:
            eligible = None if height is None else self._may_join(points, clusters, chosen, height, previous)
            garment = attach_pieces(points, clusters, garment, cfg.cluster_attach_distance, eligible)
        return points[garment], None

    def _may_join(self, points: np.ndarray, clusters: Clusters, chosen: int, height: np.ndarray,
                  previous: np.ndarray | None) -> np.ndarray:
        """(C,) bool: which clusters may join the garment cluster ``chosen``: cloth held off the table (a lifted
        flap), or lying where the garment was in ``previous`` (P, 3); not things lying next to it."""
        labelled = clusters.labels >= 0
        lowest = np.full(clusters.sizes.shape, np.inf)
        np.minimum.at(lowest, clusters.labels[labelled], height[labelled])
        eligible = lowest > ATTACH_MIN_LIFT
        if previous is None or not len(previous):
            return eligible
        # Only the pieces that could still join are looked up (a few thousand points at most).
        undecided = (clusters.sizes >= ATTACH_MIN_POINTS) & ~eligible
        undecided[chosen] = False
        ask = labelled.copy()
        ask[labelled] = undecided[clusters.labels[labelled]]
        if ask.any():
            tree = cKDTree(np.asarray(previous))
            near = tree.query(points[ask], distance_upper_bound=self.config.cluster_tolerance)[0]
            overlap = np.bincount(clusters.labels[ask], np.isfinite(near), len(clusters.sizes))
            eligible |= overlap >= ATTACH_MIN_OVERLAP * np.maximum(clusters.sizes, 1)
        return eligible

    @staticmethod
    def _give_up(report: PreprocessReport, reason: str, plane: Plane | None = None) -> PreprocessResult:
        report.reason = reason
        return PreprocessResult(model_input=None, points=None, normalization=None, plane=plane, report=report)
