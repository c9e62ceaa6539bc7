"""Carry keypoints from frame to frame by registering the cloth around each one (local rigid ICP).

Why: a single-frame detector places keypoints by the garment's shape, so when a flap is folded over or the
garment is pulled across the table, a keypoint can move onto other cloth (docs/results.md, "Keypoints carried
from frame to frame"). A robot sees a stream; between two frames the cloth around a keypoint moves almost
rigidly, so registering that patch of the last cloud onto the new cloud says where the keypoint's own cloth
went, whatever the new outline looks like.

Tracks start from the detections once these have held still for ``start_frames`` frames (a detector that is
still settling, right after the garment was put down, would hand a track a wrong start it never loses).
Then, per frame, for keypoint k at ``s_k`` (the tracker's state, target frame, metres):

1. the patch: points of the previous cloud within ``patch_radius`` of ``s_k`` (at least ``MIN_PATCH`` points);
2. trimmed rigid ICP of the patch onto the new cloud (point to point, ``iterations`` steps, pairs beyond
   ``TRIM`` times the median distance left out) from two first guesses, no motion and the whole cloud's
   rigid motion (ICP of the whole previous cloud, started from the centroid shift), keeping the one with the
   smaller median residual: the first follows a flap lifted off a garment that stays put, the second a
   garment that falls or slides as a whole;
3. ``s_k <- R s_k + t``, put back onto the new cloud's local surface (:func:`project_to_surface`); a
   keypoint with no cloud point within ``hide_distance`` of where it was nor of where it went is hidden
   (one camera no longer sees the cloth under a fold) and waits where it was; one whose residual stays above
   ``max_residual`` is lost and takes the detection instead;
4. optional fusion: a detection within ``gate`` of ``s_k`` pulls it by ``detection_weight`` (stops drift where
   detector and tracker agree, and ignores the detector where it jumped to other cloth);
5. tracks closer than ``min_separation`` have merged (their patches overlap, so they would move as one from
   then on); the one farther from its detection takes it.

The state is kept unsnapped (snapping every frame to a resampled cloud adds a random walk); callers snap the
output to the cloud if they want a point of it. All patches of a frame are registered together: one k-d tree
query per ICP step and a batched SVD, so a frame costs a few milliseconds for K = 8.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy.spatial import cKDTree

from keygrid_ros.blas import single_threaded_blas
from keygrid_ros.params import TRACKING_METHODS as METHODS
from keygrid_ros.perception.cloth_prior import ClothGraph, cloth_graph, limit_stretch, node_visibility
from keygrid_ros.perception.cpd import coherent_point_drift
from keygrid_ros.perception.sampling import fps_order

#: Fewest points a patch is registered with (the nearest ones when the radius holds fewer).
MIN_PATCH = 8
#: Pairs farther apart than this many times their patch's median distance are left out of an ICP step.
TRIM = 2.5
#: Most points of the previous cloud used for the whole-cloud motion guess (a random-free stride subset).
GLOBAL_POINTS = 1024
#: Nodes a keypoint rides (inverse-distance weights, fixed when its track starts).
ATTACH_NODES = 4


@dataclass(frozen=True)
class TrackerConfig:
    """Settings of :class:`KeypointTracker` (metres where a length)."""

    patch_radius: float = 0.06
    iterations: int = 8
    max_residual: float = 0.03
    gate: float = 0.0
    detection_weight: float = 0.5
    min_separation: float = 0.03
    hide_distance: float = 0.015
    start_frames: int = 3
    method: str = 'cpd'
    nodes: int = 500
    smoothness: float = 0.08
    regularisation: float = 2.0
    outlier_weight: float = 0.1
    cpd_iterations: int = 30
    balance: float = 1.0
    visibility_margin: float = 0.0
    max_stretch: float = 0.0

    def __post_init__(self) -> None:
        if not self.patch_radius > 0:
            raise ValueError(f'tracking patch_radius must be > 0 m, got {self.patch_radius}')
        if not 1 <= self.iterations <= 100:
            raise ValueError(f'tracking iterations must be in [1, 100], got {self.iterations}')
        if not self.max_residual > 0:
            raise ValueError(f'tracking max_residual must be > 0 m, got {self.max_residual}')
        if self.gate < 0:
            raise ValueError(f'tracking gate must be >= 0 m (0 = no fusion), got {self.gate}')
        if not 0.0 <= self.detection_weight <= 1.0:
            raise ValueError(f'tracking detection_weight must be in [0, 1], got {self.detection_weight}')
        if not 1 <= self.start_frames <= 1000:
            raise ValueError(f'tracking start_frames must be in [1, 1000], got {self.start_frames}')
        if not self.hide_distance > 0:
            raise ValueError(f'tracking hide_distance must be > 0 m, got {self.hide_distance}')
        if self.min_separation < 0:
            raise ValueError(f'tracking min_separation must be >= 0 m, got {self.min_separation}')
        if self.method not in METHODS:
            raise ValueError(f'tracking method must be one of {METHODS}, got {self.method!r}')
        if not 16 <= self.nodes <= 4096:
            raise ValueError(f'tracking nodes must be in [16, 4096], got {self.nodes}')
        if not self.smoothness > 0:
            raise ValueError(f'tracking smoothness must be > 0 m, got {self.smoothness}')
        if not self.regularisation > 0:
            raise ValueError(f'tracking regularisation must be > 0, got {self.regularisation}')
        if not 0.0 <= self.outlier_weight < 1.0:
            raise ValueError(f'tracking outlier_weight must be in [0, 1), got {self.outlier_weight}')
        if not 1 <= self.cpd_iterations <= 200:
            raise ValueError(f'tracking cpd_iterations must be in [1, 200], got {self.cpd_iterations}')
        if not 0.0 <= self.balance <= 10.0:
            raise ValueError(f'tracking balance must be in [0, 10], got {self.balance}')
        if self.visibility_margin < 0:
            raise ValueError(f'tracking visibility_margin must be >= 0 m (0 = off), got {self.visibility_margin}')
        if self.max_stretch < 0:
            raise ValueError(f'tracking max_stretch must be >= 0 (0 = off), got {self.max_stretch}')

    @classmethod
    def from_params(cls, values) -> TrackerConfig | None:
        """The settings from the node's ``tracking.*`` parameters; None when ``tracking.enabled`` is false."""
        if not values.get('tracking.enabled', False):
            return None
        # Every field that is a node parameter (``tracking.<field>``) comes from it; the rest keep their defaults.
        given = {f.name: values[f'tracking.{f.name}'] for f in fields(cls) if f'tracking.{f.name}' in values}
        return cls(**given)


def batched_kabsch(source: np.ndarray, target: np.ndarray, starts: np.ndarray, weights: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares rigid motions, one per segment of paired points.

    Args:
        source, target: (P, 3) paired points; segment j is rows ``starts[j]:starts[j + 1]`` (the last runs to P).
        starts: (J,) increasing row offsets, ``starts[0] == 0``, every segment non-empty.
        weights: (P,) non-negative pair weights (default: all 1); every segment needs a positive sum.

    Returns:
        R (J, 3, 3) proper rotations and t (J, 3) minimising sum_p w_p ||R[j] s_p + t[j] - t_p||² per segment.
    """
    counts = np.diff(np.append(starts, len(source)))  # (J,)
    segment = np.repeat(np.arange(len(starts)), counts)  # (P,)
    w = np.ones(len(source)) if weights is None else np.asarray(weights, np.float64)
    total = np.add.reduceat(w, starts)[:, None]  # (J, 1)
    source_mean = np.add.reduceat(source * w[:, None], starts, axis=0) / total  # (J, 3)
    target_mean = np.add.reduceat(target * w[:, None], starts, axis=0) / total
    a = (source - source_mean[segment]) * w[:, None]
    b = target - target_mean[segment]
    cross = np.add.reduceat(a[:, :, None] * b[:, None, :], starts, axis=0)  # (J, 3, 3) = sum w a b^T
    u, _, vt = np.linalg.svd(cross)
    v, ut = np.swapaxes(vt, 1, 2), np.swapaxes(u, 1, 2)
    flip = np.sign(np.linalg.det(v @ ut))  # reflections become rotations
    v[:, :, 2] *= flip[:, None]
    rotation = v @ ut
    return rotation, target_mean - np.einsum('jab,jb->ja', rotation, source_mean)


def register_segments(source: np.ndarray, starts: np.ndarray, tree: cKDTree, target: np.ndarray,
                      rotation: np.ndarray, translation: np.ndarray, iterations: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point-to-point ICP of every segment of ``source`` onto ``target`` (indexed by ``tree``) at once.

    ``rotation`` (J, 3, 3) and ``translation`` (J, 3) are the first guesses. Pairs farther apart than
    ``TRIM`` times their segment's median distance are left out of each step (trimmed ICP): where part of a
    patch is hidden or gone, its points would otherwise pull the fit towards whatever cloth is nearest. Returns
    the refined motions and each segment's median distance (J,) from its moved points to the target.
    """
    counts = np.diff(np.append(starts, len(source)))
    segment = np.repeat(np.arange(len(starts)), counts)
    for _ in range(iterations):
        moved = np.einsum('pab,pb->pa', rotation[segment], source) + translation[segment]
        distance, nearest = tree.query(moved)
        keep = distance <= TRIM * segment_median(distance, starts)[segment] + 1e-9
        rotation, translation = batched_kabsch(source, target[nearest], starts, keep.astype(np.float64))
    moved = np.einsum('pab,pb->pa', rotation[segment], source) + translation[segment]
    distance, _ = tree.query(moved)
    return rotation, translation, segment_median(distance, starts)


def segment_median(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(J,) the median of each segment of ``values`` (P,) (segments as in :func:`batched_kabsch`)."""
    ends = np.append(starts[1:], len(values))
    return np.array([np.median(values[a:b]) for a, b in zip(starts, ends)])


def project_to_surface(positions: np.ndarray, tree: cKDTree, points: np.ndarray, neighbours: int = MIN_PATCH
                       ) -> np.ndarray:
    """(K, 3) ``positions`` moved along the normal of the plane through their nearest ``neighbours`` points.

    A keypoint sits on the cloth, but a patch's rotation is least certain about its own normal, and the keypoint
    may lie a few centimetres from the patch's centre: the lever arm would lift it off the cloth a little every
    frame. Removing only the normal component keeps the motion along the cloth, which snapping to the nearest
    point would turn into a random walk on a cloud sampled afresh each frame.
    """
    _, nearest = tree.query(positions, k=min(neighbours, len(points)))
    local = points[nearest]  # (K, n, 3)
    centre = local.mean(1)
    offsets = local - centre[:, None]
    _, vectors = np.linalg.eigh(np.einsum('kna,knb->kab', offsets, offsets))
    normal = vectors[:, :, 0]  # (K, 3): the direction of least spread
    return positions - np.einsum('ka,ka->k', positions - centre, normal)[:, None] * normal


class KeypointTracker:
    """Keypoints carried over a stream of clouds: ``state = tracker(points, detections, viewpoint=None)``.

    ``points`` (N, 3) the garment's cloud in a frame fixed in the world (the node's ``target_frame``),
    ``detections`` (K, 3) this frame's detected keypoints in the same frame; returns (K, 3) float64, the
    tracked keypoints (unsnapped); ``viewpoint`` (3,), the camera's position in that frame, or None (a whole
    garment, no one camera), lets ``cpd`` tell the cloth the camera cannot see (``visibility_margin``).
    Until ``start_frames`` consecutive frames of steady detections have been seen (after construction or
    :meth:`reset`) it returns the detections. Reset when the garment is lost, the
    stream jumps, or the detector changes. :attr:`lost` and :attr:`hidden` say what happened to each keypoint
    in the last frame.
    """

    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self._cloud: np.ndarray | None = None
        self._tree: cKDTree | None = None
        self._state: np.ndarray | None = None
        self._steady = 0
        self._nodes: np.ndarray | None = None  # (M, 3) cpd: the garment's nodes, moved frame by frame
        self._anchors: np.ndarray | None = None  # (M, 3) cpd: where the nodes were placed (the kernel's cloth)
        self._graph: ClothGraph | None = None  # cpd with max_stretch: the nodes' neighbours on the cloth
        self._riders: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # cpd: each keypoint's nodes
        #: Keypoints that took their detection in the last frame because their cloth was lost (K,) bool.
        self.lost = np.zeros(0, bool)
        #: Keypoints held where they were in the last frame because their cloth was not seen (K,) bool.
        self.hidden = np.zeros(0, bool)

    @property
    def nodes(self) -> np.ndarray | None:
        """(M, 3) ``cpd``: the garment's nodes where the last frame put them; None before tracks start, or ``icp``."""
        return None if self._nodes is None else self._nodes.copy()

    @property
    def tracking(self) -> bool:
        """True when the next frame continues a track (False until ``start_frames`` steady detections)."""
        return self._state is not None and self._steady >= self.config.start_frames

    def reset(self) -> None:
        self._cloud = self._tree = self._state = self._nodes = self._anchors = self._riders = self._graph = None
        self._steady = 0  # consecutive frames whose detections moved less than half a patch radius
        self.lost = self.hidden = np.zeros(0, bool)

    @single_threaded_blas  # small matrices: BLAS threads only spin (keygrid_ros/blas.py)
    def __call__(self, points: np.ndarray, detections: np.ndarray, viewpoint: np.ndarray | None = None) -> np.ndarray:
        points = np.asarray(points, np.float64)
        detections = np.asarray(detections, np.float64)
        if points.ndim != 2 or points.shape[1] != 3 or len(points) < MIN_PATCH:
            raise ValueError(f'tracking needs (N >= {MIN_PATCH}, 3) points, got shape {points.shape}')
        if detections.ndim != 2 or detections.shape[1] != 3:
            raise ValueError(f'detections must be (K, 3), got shape {detections.shape}')
        tree = cKDTree(points)
        if self._state is not None and self._state.shape != detections.shape:
            self.reset()
        if self._steady < self.config.start_frames:
            # Tracks start only from steady detections: right after a restart (a garment put down, a grasp
            # ending) the detector can still be settling, and a track keeps whatever it starts from.
            steady = self._state is not None and \
                np.linalg.norm(detections - self._state, axis=1).max() < self.config.patch_radius / 2
            self._steady = self._steady + 1 if steady else 1
            state = detections.copy()
            self.lost = self.hidden = np.zeros(len(detections), bool)
            self._nodes = self._anchors = self._riders = None  # nodes are placed on the cloud the tracks start from
        elif self.config.method == 'cpd':
            state = self._follow_garment(points, tree, detections, viewpoint)
        else:
            state = self._follow(points, tree, detections)
        self._cloud, self._tree, self._state = points, tree, state
        return state.copy()

    def _follow_garment(self, points: np.ndarray, tree: cKDTree, detections: np.ndarray,
                        viewpoint: np.ndarray | None) -> np.ndarray:
        """``cpd``: move the garment's nodes onto the new cloud; each keypoint moves with its nodes. With the
        camera's ``viewpoint`` (3,) and ``visibility_margin``, nodes the camera cannot see claim no points; with
        ``max_stretch``, no edge of the node graph ends longer than its limit (``cloth_prior``)."""
        config = self.config
        if self._nodes is None:
            self._place_nodes(self._cloud, self._state)
        # The whole cloud's rigid motion first (a garment lifted, dropped or slid as a whole): CPD's smoothness
        # term makes large motions lag, and on flat cloth nothing pulls a lagging node back along the cloth.
        rotation, translation = self._whole_motion(points, tree)
        self._nodes = self._nodes @ rotation.T + translation
        visibility = None
        if viewpoint is not None and config.visibility_margin > 0:
            visibility = node_visibility(self._nodes, points, viewpoint, config.visibility_margin)
        result = coherent_point_drift(self._nodes, points, config.smoothness, config.regularisation,
                                      config.outlier_weight, config.cpd_iterations, tree=tree,
                                      balance=config.balance, anchors=self._anchors, visibility=visibility)
        if not result.sigma <= config.max_residual:
            # The cloud is not the garment the nodes were on any more (a new garment, a jump): start again.
            self._place_nodes(points, detections)
            self.lost, self.hidden = np.ones(len(detections), bool), np.zeros(len(detections), bool)
            return detections.copy()
        self._nodes = result.nodes
        if config.max_stretch > 0:
            # A node that explains much of the cloud is where the data put it; one that sees nothing gives way.
            self._nodes = limit_stretch(self._nodes, self._graph, config.max_stretch, 1.0 / (1.0 + result.matched))
        moved = self._ride()
        self.lost = np.zeros(len(moved), bool)
        # Informational: a keypoint whose cloth is not seen (the lower layer of a fold, from one camera) still
        # moves with its nodes, which move with the cloth around them.
        self.hidden = tree.query(moved)[0] > config.hide_distance
        self._fuse(moved, detections)
        if config.gate > 0 or self.lost.any():
            self._riders = self._attach(moved)  # the keypoints moved off their nodes: ride from where they are
        return moved

    def _place_nodes(self, cloud: np.ndarray, keypoints: np.ndarray) -> None:
        """``cpd``: nodes spread over ``cloud`` (N, 3) by FPS, and ``keypoints`` (K, 3) attached to them."""
        self._nodes = cloud[fps_order(cloud, min(self.config.nodes, len(cloud)))]
        self._anchors = self._nodes.copy()
        self._graph = cloth_graph(self._anchors) if self.config.max_stretch > 0 else None
        self._riders = self._attach(keypoints)

    def _whole_motion(self, points: np.ndarray, tree: cKDTree) -> tuple[np.ndarray, np.ndarray]:
        """(3, 3), (3,): the rigid motion of the whole last cloud onto ``points`` (trimmed ICP from the centroid
        shift, on at most ``GLOBAL_POINTS`` of its points)."""
        previous = self._cloud
        whole = previous[::max(1, len(previous) // GLOBAL_POINTS)]
        shift = points.mean(0) - previous.mean(0)
        rotation, translation, _ = register_segments(whole, np.zeros(1, np.int64), tree, points, np.eye(3)[None],
                                                     shift[None], self.config.iterations)
        return rotation[0], translation[0]

    def _attach(self, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each keypoint's nearest nodes (K, n), their inverse-distance weights (K, n) and the offset (K, 3) that
        puts the weighted mean of the nodes back onto the keypoint."""
        distance, index = cKDTree(self._nodes).query(keypoints, k=min(ATTACH_NODES, len(self._nodes)))
        distance, index = distance.reshape(len(keypoints), -1), index.reshape(len(keypoints), -1)
        weights = 1.0 / (distance + 1e-3)
        weights /= weights.sum(1, keepdims=True)
        return index, weights, keypoints - np.einsum('kn,kna->ka', weights, self._nodes[index])

    def _ride(self) -> np.ndarray:
        """(K, 3) the keypoints where their nodes now are."""
        index, weights, offset = self._riders
        return np.einsum('kn,kna->ka', weights, self._nodes[index]) + offset

    def _follow(self, points: np.ndarray, tree: cKDTree, detections: np.ndarray) -> np.ndarray:
        """``icp``: register each keypoint's patch of the last cloud onto the new one."""
        config, state = self.config, self._state
        K = len(state)
        rotation, translation = self._whole_motion(points, tree)
        rotation, translation = rotation[None], translation[None]

        # The patches, twice: hypothesis 0 starts from the whole cloud's motion, hypothesis 1 from none.
        patches = [self._patch(s) for s in state]
        counts = np.array([len(p) for p in patches])
        source = np.concatenate(patches * 2)
        starts = np.concatenate([[0], np.cumsum(np.tile(counts, 2))[:-1]])
        first_rotation = np.concatenate([np.repeat(rotation, K, 0), np.repeat(np.eye(3)[None], K, 0)])
        first_translation = np.concatenate([np.repeat(translation, K, 0), np.zeros((K, 3))])
        rotations, translations, residuals = register_segments(source, starts, tree, points, first_rotation,
                                                               first_translation, config.iterations)
        best = np.where(residuals[K:] < residuals[:K], np.arange(K) + K, np.arange(K))  # (K,) per keypoint
        carried = np.einsum('kab,kb->ka', rotations[best], state) + translations[best]
        moved = project_to_surface(carried, tree, points)

        # Nothing seen where the keypoint was, nor where its patch went: its cloth is hidden (a single view
        # loses the lower layer under a fold). Cloth under a flap does not move, so it waits where it was,
        # instead of being pulled onto the flap above it.
        self.hidden = (tree.query(carried)[0] > config.hide_distance) & (tree.query(state)[0] > config.hide_distance)
        moved[self.hidden] = state[self.hidden]
        self.lost = (residuals[best] > config.max_residual) & ~self.hidden
        moved[self.lost] = detections[self.lost]
        self._fuse(moved, detections)
        return moved

    def _fuse(self, moved: np.ndarray, detections: np.ndarray) -> None:
        """Steps 4 and 5 of both methods, in place on ``moved`` (K, 3): detections inside the gate pull their
        tracks, merged tracks are re-seeded from their detections (added to :attr:`lost`)."""
        config = self.config
        if config.gate > 0:
            near = np.linalg.norm(detections - moved, axis=1) < config.gate
            moved[near] += config.detection_weight * (detections[near] - moved[near])
        if config.min_separation > 0:
            self.lost |= self._separate(moved, detections)

    def _separate(self, moved: np.ndarray, detections: np.ndarray) -> np.ndarray:
        """Re-seed merged tracks from their detections, in place; returns which were re-seeded (K,) bool.

        Two keypoints closer than ``min_separation`` share their patches (``icp``) or nodes (``cpd``), so from
        then on they move as one (a merge never undoes itself): on flat cloth sampled afresh each frame,
        neighbouring patches can slide together, and the detector can start two tracks on one spot. Of each such
        pair the track farther from its own detection, the one more likely to have slid, takes its detection.
        ``cpd`` keypoints that ride no common node are on different cloth however near they come (a flap laid
        on the cloth under it): not merged.
        """
        reseeded = np.zeros(len(moved), bool)
        off = np.linalg.norm(moved - detections, axis=1)  # (K,)
        apart = np.zeros((len(moved), len(moved)), bool)  # (K, K) pairs that ride no common node
        if self.config.method == 'cpd' and self._riders is not None:
            index = self._riders[0]  # (K, n)
            apart = ~(index[:, None, :, None] == index[None, :, None, :]).any(axis=(2, 3))
        for _ in range(len(moved)):
            gaps = np.linalg.norm(moved[:, None] - moved[None], axis=-1)
            gaps[apart] = np.inf
            np.fill_diagonal(gaps, np.inf)
            i, j = np.unravel_index(np.argmin(gaps), gaps.shape)
            if gaps[i, j] >= self.config.min_separation:
                break
            k = i if off[i] >= off[j] and not reseeded[i] else j
            if reseeded[k]:  # both already took their detections: the detector itself put them together
                break
            moved[k], off[k], reseeded[k] = detections[k], 0.0, True
        return reseeded

    def _patch(self, centre: np.ndarray) -> np.ndarray:
        """(P, 3) points of the previous cloud around ``centre``: within the radius, else the nearest few."""
        inside = self._tree.query_ball_point(centre, self.config.patch_radius)
        if len(inside) < MIN_PATCH:
            _, inside = self._tree.query(centre, k=min(MIN_PATCH, len(self._cloud)))
        return self._cloud[np.atleast_1d(inside)]
