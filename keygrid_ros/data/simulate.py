"""Garment deformation sequences with Newton's VBD cloth solver: drop, drag and fold on a table.

The table top is the plane z = 0 (Newton's ground plane), z is up, units are metres. A motion is a
*plan*: the garment's start pose plus kinematic grasps. A grasp is a patch of vertices around a
landmark that follows a rigid trajectory (its particles are made inactive, so VBD treats them as
kinematic, and their positions are written before every substep) until its release time, when the
particles become dynamic again and the cloth settles.

- ``drop``: the flat garment, randomly tilted and turned, falls from above the table and drapes.
- ``drag``: one grasp lifts a point of the garment lying on the table, pulls it across and puts it down.
- ``fold``: two grasps rotate a side of the garment about a fold line on the table (a half fold, or
  sleeve-to-side for tops) so it lands on the other side, and let go.

Frames are taken at equal times from the start pose (frame 0) to the end of the motion. The physics
checks at the end of this module are what the tests and the CLI report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
import math
import time

import numpy as np

from keygrid_ros.data.garments import Garment, mesh_edges

log = logging.getLogger(__name__)

MOTIONS = ('drop', 'drag', 'fold')
#: motion -> default duration in seconds (128 frames at 60 fps is 2.13 s).
DURATION = {'drop': 1.7, 'drag': 3.0, 'fold': 3.0}
#: garment -> fold kinds: name -> (grasp landmarks, fold line) where the line is 'x' (the pattern's
#: centre line x = 0, folding the left half over), 'y' (across the middle, bottom over top) or
#: 'sleeve' (a vertical line just inside the left armpit).
FOLDS: dict[str, dict[str, tuple[tuple[str, str], str]]] = {
    'tshirt': {'half': (('shoulder_l', 'hem_l'), 'x'), 'bottom_up': (('hem_l', 'hem_r'), 'y'),
               'sleeve': (('sleeve_top_l', 'sleeve_bottom_l'), 'sleeve')},
    'longsleeve': {'half': (('shoulder_l', 'hem_l'), 'x'), 'bottom_up': (('hem_l', 'hem_r'), 'y'),
                   'sleeve': (('sleeve_top_l', 'sleeve_bottom_l'), 'sleeve')},
    'dress': {'half': (('shoulder_l', 'hem_l'), 'x'), 'bottom_up': (('hem_l', 'hem_r'), 'y'),
              'sleeve': (('sleeve_top_l', 'sleeve_bottom_l'), 'sleeve')},
    'pants': {'half': (('waist_l', 'leg_outer_l'), 'x'), 'bottom_up': (('leg_outer_l', 'leg_outer_r'), 'y')},
    'shorts': {'half': (('waist_l', 'leg_outer_l'), 'x'), 'bottom_up': (('leg_outer_l', 'leg_outer_r'), 'y')},
    'skirt': {'half': (('waist_l', 'hem_l'), 'x'), 'bottom_up': (('hem_l', 'hem_r'), 'y')},
    'towel': {'half': (('corner_top_l', 'corner_bottom_l'), 'x'),
              'bottom_up': (('corner_bottom_l', 'corner_bottom_r'), 'y')},
    'scarf': {'half': (('corner_top_l', 'corner_bottom_l'), 'x'),
              'bottom_up': (('corner_bottom_l', 'corner_bottom_r'), 'y')},
}


@dataclass
class SimConfig:
    """Solver and material settings. The defaults are the dataset quality; tests use fewer substeps.

    ``sim_hz`` is the substep rate (substeps per output frame follow from the frame spacing),
    ``iterations`` the VBD iterations per substep. ``self_contact=None`` means: on for folds and for
    two-layer garments, off otherwise (it costs about 3x).
    """

    frames: int = 128
    duration: float | None = None
    sim_hz: float = 600.0
    iterations: int = 5
    self_contact: bool | None = None
    density: float = 0.2  # kg/m^2, a cotton T-shirt
    tri_ke: float = 1.0e4  # membrane stretch stiffness
    tri_ka: float = 1.0e4  # membrane area stiffness
    tri_kd: float = 1.0e-3  # membrane damping
    edge_ke: float = 2.0e-4  # bending stiffness
    edge_kd: float = 1.0e-6
    particle_radius: float = 0.004  # table contact distance
    contact_ke: float = 1.0e4
    contact_kd: float = 1.0e-2
    friction: float = 0.6
    self_contact_margin: float = 0.003  # cloth-cloth interaction distance (about the cloth's thickness)
    self_contact_gap: float = 0.003  # extra detection reach beyond the margin
    grasp_radius: float = 0.025
    drop_height: tuple[float, float] = (0.05, 0.25)  # lowest point above the table at release
    drop_tilt: tuple[float, float] = (0.3, 1.3)  # radians from flat at release
    device: str = 'cpu'
    capture: bool = True  # replay substeps as a captured graph (saves the launch overhead)


@dataclass
class Grasp:
    """Vertices held kinematically: ``indices`` (k,) at rest positions ``start`` (k, 3), moved by ``pose``."""

    indices: np.ndarray
    start: np.ndarray
    pose: object  # callable t -> (R (3, 3), p (3,)): positions = (start - pivot) R^T + pivot + p
    pivot: np.ndarray
    release: float

    def positions(self, t: float) -> np.ndarray:
        rot, shift = self.pose(min(t, self.release))
        return (self.start - self.pivot) @ rot.T + self.pivot + shift


@dataclass
class MotionPlan:
    start: np.ndarray  # (V, 3) start positions
    grasps: list[Grasp]
    duration: float
    info: dict = field(default_factory=dict)


@dataclass
class SimResult:
    vertices: np.ndarray  # (T, V, 3) float32
    faces: np.ndarray  # (F, 3) int32
    rest: np.ndarray  # (V, 3) rest shape (edge rest lengths)
    times: np.ndarray  # (T,) seconds
    keypoints: np.ndarray  # (T, M, 3) float32
    keypoint_names: list[str]
    info: dict


# ----------------------------------------------------------------------------------------------
# Motion plans


def _smooth(x: float) -> float:
    """Smoothstep on [0, 1]: zero velocity at both ends, so grasps start and stop without a jerk."""
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_axis(axis: np.ndarray, a: float) -> np.ndarray:
    """Rodrigues rotation about unit ``axis`` by angle ``a``."""
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(a) * k + (1.0 - math.cos(a)) * (k @ k)


def _on_table(garment: Garment, rng: np.random.Generator, rest_z: float) -> tuple[np.ndarray, np.ndarray]:
    """Garment lying flat on the table, turned by a random yaw; returns positions (V, 3) and the yaw matrix."""
    rot = _rot_z(rng.uniform(-math.pi, math.pi))
    pos = garment.vertices @ rot.T
    pos[:, :2] += rng.uniform(-0.05, 0.05, 2)
    pos[:, 2] += rest_z - pos[:, 2].min()
    return pos, rot


def _grasp_patch(rest: np.ndarray, centre: int, radius: float) -> np.ndarray:
    """Vertex indices within ``radius`` of vertex ``centre`` (a pinch takes both layers at an edge)."""
    return np.flatnonzero(np.linalg.norm(rest - rest[centre], axis=1) <= radius)


def plan_motion(garment: Garment, motion: str, rng: np.random.Generator, config: SimConfig,
                fold: str | None = None) -> MotionPlan:
    """Random start pose and grasp trajectories for ``motion`` (see the module docstring)."""
    duration = config.duration or DURATION[motion]
    rest_z = config.particle_radius + 0.001
    if motion == 'drop':
        axis = np.array([*rng.normal(size=2), 0.0])
        axis /= np.linalg.norm(axis)
        tilt = rng.uniform(*config.drop_tilt)
        rot = _rot_axis(axis, tilt) @ _rot_z(rng.uniform(-math.pi, math.pi))
        pos = garment.vertices @ rot.T
        height = rng.uniform(*config.drop_height)
        pos[:, :2] += rng.uniform(-0.05, 0.05, 2) - pos[:, :2].mean(axis=0)
        pos[:, 2] += rest_z + height - pos[:, 2].min()
        return MotionPlan(pos, [], duration, {'tilt': float(tilt), 'height': float(height)})

    pos, yaw = _on_table(garment, rng, rest_z)
    if motion == 'drag':
        names = garment.landmark_names
        if names:
            name = names[rng.integers(len(names))]
            centre = garment.landmarks[name]
        else:  # a loaded mesh without landmarks: grasp any vertex
            centre = int(rng.integers(len(pos)))
            name = f'vertex_{centre}'
        idx = _grasp_patch(pos, centre, config.grasp_radius)
        lift = rng.uniform(0.08, 0.2)
        away = pos[centre, :2] - pos[:, :2].mean(axis=0)  # pull mostly away from the garment's centre
        heading = math.atan2(away[1], away[0]) + rng.uniform(-1.2, 1.2)
        dist = rng.uniform(0.2, 0.45)
        target = np.array([math.cos(heading) * dist, math.sin(heading) * dist])
        t1, t2, t3 = 0.15 * duration, 0.55 * duration, 0.65 * duration

        def pose(t: float) -> tuple[np.ndarray, np.ndarray]:
            z = lift * _smooth(t / t1) - (lift - 0.01) * _smooth((t - t2) / (t3 - t2))
            xy = target * _smooth((t - t1) / (t2 - t1))
            return np.eye(3), np.array([xy[0], xy[1], z])

        grasp = Grasp(idx, pos[idx].copy(), pose, pos[centre].copy(), t3)
        return MotionPlan(pos, [grasp], duration, {'grasp': name, 'distance': float(dist), 'lift': float(lift)})

    if motion != 'fold':
        raise ValueError(f'unknown motion {motion!r}; choose from {MOTIONS}')
    kinds = FOLDS.get(garment.name) if garment.landmarks else None
    if not kinds:
        raise ValueError(f'{garment.name}: folds need a pattern garment with landmarks '
                         '(drop and drag work on any mesh)')
    fold = fold or list(kinds)[rng.integers(len(kinds))]
    if fold not in kinds:
        raise ValueError(f'{garment.name} has no fold {fold!r}; choose from {sorted(kinds)}')
    (a_name, b_name), line = kinds[fold]
    uv = garment.uv
    # The fold line in pattern coordinates: a point on it and its direction; the grasped side is x < line.
    if line == 'x':
        origin, direction = np.array([0.0, 0.0]), np.array([0.0, 1.0])
    elif line == 'y':
        ys = uv[:, 1]
        origin, direction = np.array([0.0, 0.5 * (ys.min() + ys.max())]), np.array([-1.0, 0.0])
    else:  # sleeve: a vertical line a little inside the left armpit
        origin = np.array([uv[garment.landmarks['armpit_l'], 0] + 0.03, 0.0])
        direction = np.array([0.0, 1.0])
    # Pattern -> table: the same yaw and shift that placed the garment.
    shift = pos[0, :2] - (yaw[:2, :2] @ uv[0])
    o_table = yaw[:2, :2] @ origin + shift
    d_table = yaw[:2, :2] @ direction
    thickness = 0.012 if garment.layers == 2 else 0.006
    pivot = np.array([o_table[0], o_table[1], rest_z + thickness])
    axis = np.array([d_table[0], d_table[1], 0.0])
    # Rotate so that the grasped side (left of the line) goes up and over: check the sign on one grasp.
    centre = garment.landmarks[a_name]
    probe = _rot_axis(axis, 0.5) @ (pos[centre] - pivot)
    sign = 1.0 if probe[2] > pos[centre, 2] - pivot[2] else -1.0
    angle = math.pi  # lands mirrored, 2 x thickness above the bottom layer
    t1, t2 = 0.05 * duration, 0.6 * duration

    def pose(t: float) -> tuple[np.ndarray, np.ndarray]:
        return _rot_axis(axis, sign * angle * _smooth((t - t1) / (t2 - t1))), np.zeros(3)

    grasps = []
    for name in (a_name, b_name):
        idx = _grasp_patch(pos, garment.landmarks[name], config.grasp_radius)
        grasps.append(Grasp(idx, pos[idx].copy(), pose, pivot, t2))
    return MotionPlan(pos, grasps, duration, {'fold': fold, 'grasps': [a_name, b_name]})


# ----------------------------------------------------------------------------------------------
# Newton

_KERNEL = None


def _handle_kernel():
    """A warp kernel moving held vertices to their targets (built on first use: warp imports lazily)."""
    global _KERNEL
    if _KERNEL is None:
        import warp as wp

        @wp.kernel
        def set_handles(idx: wp.array(dtype=wp.int32), held: wp.array(dtype=wp.int32),
                        targets: wp.array(dtype=wp.vec3), q_in: wp.array(dtype=wp.vec3),
                        q_out: wp.array(dtype=wp.vec3), qd_in: wp.array(dtype=wp.vec3)):
            i = wp.tid()
            if held[i] != 0:
                v = idx[i]
                # Inactive (kinematic) particles keep their input position: set both buffers.
                q_in[v] = targets[i]
                q_out[v] = targets[i]
                qd_in[v] = wp.vec3(0.0, 0.0, 0.0)

        _KERNEL = set_handles
    return _KERNEL


def simulate(garment: Garment, motion: str, seed: int = 0, config: SimConfig | None = None,
             fold: str | None = None, progress=None) -> SimResult:
    """Simulate ``motion`` of ``garment`` with Newton VBD; returns frames (T, V, 3) and physics info.

    ``progress``, if given, is called as ``progress(frame, frames)`` after each output frame.
    """
    import warp as wp

    wp.config.quiet = not log.isEnabledFor(logging.DEBUG)  # kernel-cache chatter would bury the CLI's output
    import newton

    config = config or SimConfig()
    rng = np.random.default_rng([seed, 7])  # the motion's own stream, independent of the pattern's
    plan = plan_motion(garment, motion, rng, config, fold)
    frames = config.frames
    if frames < 2:
        raise ValueError('need at least 2 frames')
    frame_dt = plan.duration / (frames - 1)
    substeps = 2 * max(1, math.ceil(frame_dt * config.sim_hz / 2))  # even: replayed in pairs
    dt = frame_dt / substeps
    self_contact = config.self_contact if config.self_contact is not None else (
        motion == 'fold' or garment.layers == 2)

    t0 = time.perf_counter()
    with wp.ScopedDevice(config.device):
        builder = newton.ModelBuilder()
        builder.add_ground_plane()
        builder.add_cloth_mesh(
            pos=wp.vec3(0.0, 0.0, 0.0), rot=wp.quat_identity(), scale=1.0, vel=wp.vec3(0.0, 0.0, 0.0),
            vertices=[wp.vec3(*p) for p in plan.start], indices=garment.faces.reshape(-1).tolist(),
            density=config.density, tri_ke=config.tri_ke, tri_ka=config.tri_ka, tri_kd=config.tri_kd,
            edge_ke=config.edge_ke, edge_kd=config.edge_kd, particle_radius=config.particle_radius)
        builder.color(include_bending=True)
        model = builder.finalize()
        model.soft_contact_ke = config.contact_ke
        model.soft_contact_kd = config.contact_kd
        model.soft_contact_mu = config.friction
        solver_kwargs = {}
        if self_contact:
            solver_kwargs = dict(particle_self_contact_margin=config.self_contact_margin,
                                 particle_self_contact_gap=config.self_contact_gap)
        solver = newton.solvers.SolverVBD(model, iterations=config.iterations,
                                          particle_enable_self_contact=self_contact, **solver_kwargs)
        state_0, state_1 = model.state(), model.state()
        control = model.control()
        pipeline = newton.CollisionPipeline(model)
        contacts = pipeline.contacts()

        flags = model.particle_flags.numpy()
        active = int(newton.ParticleFlags.ACTIVE)
        for grasp in plan.grasps:
            flags[grasp.indices] &= ~active
        model.particle_flags.assign(flags)
        # All grasped vertices together; a kernel writes their targets before each substep, so a whole
        # pair of substeps (state_0 -> state_1 -> state_0) can be captured as one graph and replayed.
        handle_idx = np.concatenate([g.indices for g in plan.grasps]) if plan.grasps else np.zeros(0, int)
        owner = np.concatenate([np.full(len(g.indices), k) for k, g in enumerate(plan.grasps)]) \
            if plan.grasps else np.zeros(0, int)
        k = max(len(handle_idx), 1)
        w_idx = wp.array(np.resize(handle_idx, k).astype(np.int32), dtype=wp.int32)
        w_held = wp.array(np.full(k, int(len(handle_idx) > 0), dtype=np.int32), dtype=wp.int32)
        w_targets = [wp.zeros(k, dtype=wp.vec3), wp.zeros(k, dtype=wp.vec3)]
        host_targets = [np.zeros((k, 3), dtype=np.float32), np.zeros((k, 3), dtype=np.float32)]
        held = [True] * len(plan.grasps)
        set_handles = _handle_kernel()

        def substep(s_in, s_out, targets):
            wp.launch(set_handles, dim=k, inputs=[w_idx, w_held, targets, s_in.particle_q, s_out.particle_q,
                                                    s_in.particle_qd])
            s_in.clear_forces()
            pipeline.collide(s_in, contacts)
            solver.step(s_in, s_out, control, contacts, dt)

        def pair():
            substep(state_0, state_1, w_targets[0])
            substep(state_1, state_0, w_targets[1])

        graph = None
        if config.capture:
            try:
                with wp.ScopedCapture() as capture:
                    pair()
                graph = capture.graph
            except Exception as exc:  # capture is an optimisation only
                log.info('graph capture unavailable (%s); launching kernels one by one', exc)
        # Whether or not capturing also ran the pair, restart both states from the start pose.
        for st in (state_0, state_1):
            st.particle_q.assign(plan.start.astype(np.float32))
            st.particle_qd.zero_()
        out = np.empty((frames, len(plan.start), 3), dtype=np.float32)
        out[0] = state_0.particle_q.numpy()
        setup_s = time.perf_counter() - t0
        t = 0.0
        for frame in range(1, frames):
            for _ in range(substeps // 2):
                for half in range(2):
                    t_sub = t + (half + 1) * dt
                    changed = False
                    targets = host_targets[half]
                    for g, grasp in enumerate(plan.grasps):
                        if held[g] and t_sub > grasp.release:
                            held[g] = False
                            flags[grasp.indices] |= active
                            changed = True
                        if held[g]:
                            targets[owner == g] = grasp.positions(t_sub)
                    if changed:
                        # Both half-steps of this pair see the release (at most one substep early).
                        model.particle_flags.assign(flags)
                        w_held.assign(np.isin(owner, np.flatnonzero(held)).astype(np.int32))
                    if plan.grasps:
                        w_targets[half].assign(targets)  # a copy on CPU too, so the code is the same on GPU
                t += 2 * dt
                if graph is not None:
                    wp.capture_launch(graph)
                else:
                    pair()
            out[frame] = state_0.particle_q.numpy()
            if progress is not None:
                progress(frame, frames)
    seconds = time.perf_counter() - t0
    info = dict(plan.info, motion=motion, seed=seed, frames=frames, duration=plan.duration, substeps=substeps,
                iterations=config.iterations, self_contact=bool(self_contact), seconds=seconds,
                setup_seconds=setup_s, vertices=len(plan.start))
    times = np.arange(frames) * frame_dt
    return SimResult(out, garment.faces.astype(np.int32), plan.start, times,
                     garment.keypoints(out).astype(np.float32), garment.landmark_names, info)


# ----------------------------------------------------------------------------------------------
# Physics checks


def edge_stretch(vertices: np.ndarray, faces: np.ndarray, rest: np.ndarray, q: float = 99.0) -> np.ndarray:
    """Per-frame ``q``-th percentile of edge length / rest length: vertices (T, V, 3) -> (T,)."""
    e = mesh_edges(faces)
    rest_len = np.linalg.norm(rest[e[:, 0]] - rest[e[:, 1]], axis=1)
    length = np.linalg.norm(vertices[:, e[:, 0]] - vertices[:, e[:, 1]], axis=-1)
    return np.percentile(length / rest_len, q, axis=1)


def layer_coverage(vertices: np.ndarray, faces: np.ndarray, cell: float = 0.005) -> np.ndarray:
    """How many sheets of cloth lie over each covered table cell seen from above: (V, 3) -> (C,) counts."""
    from keygrid_ros.data.camera import rasterize

    xy = vertices[:, :2]
    lo = xy.min(axis=0)
    grid = (xy - lo) / cell
    shape = (int(grid[:, 1].max()) + 2, int(grid[:, 0].max()) + 2)
    frag = rasterize(grid[faces], None, shape)
    counts = np.bincount(frag.pixel, minlength=shape[0] * shape[1])
    return counts[counts > 0]


def physics_checks(result: SimResult, motion: str | None = None, garment_layers: int = 1,
                   table_z: float = 0.0) -> dict:
    """The numbers that say whether a sequence is physical, each with its pass flag.

    - ``finite``: no NaN/inf anywhere;
    - ``stretch_p99``: worst frame's 99th-percentile edge stretch, pass at <= 1.1;
    - ``min_z``: lowest vertex over all frames, pass when not more than 2 mm through the table;
    - ``final_speed_p95`` (m/s, last two frames) and ``final_min_z``: at rest and lying on the table;
    - folds: ``overlap_fraction``, the share of the final footprint covered by more sheets than the
      flat garment has (two for one layer, four for two), pass at >= 0.05, and ``area_ratio`` of the
      final to the first footprint.
    """
    v = result.vertices
    motion = motion or result.info.get('motion')
    finite = bool(np.isfinite(v).all())
    out: dict = {'finite': finite}
    if not finite:
        out['pass'] = False
        return out
    stretch = edge_stretch(v, result.faces, result.rest)
    out['stretch_p99'] = float(stretch.max())
    out['min_z'] = float(v[..., 2].min() - table_z)
    dt = float(result.times[-1] - result.times[-2])
    speed = np.linalg.norm(v[-1] - v[-2], axis=1) / dt
    out['final_speed_p95'] = float(np.percentile(speed, 95))
    out['final_min_z'] = float(v[-1, :, 2].min() - table_z)
    out['final_max_z'] = float(v[-1, :, 2].max() - table_z)
    checks = {
        'stretch_ok': out['stretch_p99'] <= 1.1,
        'above_table_ok': out['min_z'] >= -0.002,
        'at_rest_ok': out['final_speed_p95'] <= 0.05,
        'on_table_ok': out['final_min_z'] <= 0.015,
    }
    if motion == 'fold':
        first, last = layer_coverage(v[0], result.faces), layer_coverage(v[-1], result.faces)
        flat = 2 * garment_layers
        out['overlap_fraction'] = float(np.mean(last >= flat))
        out['overlap_fraction_start'] = float(np.mean(first >= flat))
        out['area_ratio'] = float(len(last) / max(len(first), 1))
        checks['overlap_ok'] = out['overlap_fraction'] >= 0.05 and out['overlap_fraction'] > out[
            'overlap_fraction_start']
    out.update(checks)
    out['pass'] = all(checks.values())
    return out
