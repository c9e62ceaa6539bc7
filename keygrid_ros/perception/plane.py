"""Table detection: the dominant plane by RANSAC, refined by least squares.

All hypotheses are scored at once: ``iterations`` random triplets from a subsample give an
(iterations, 3) batch of normals, and one (subsample, iterations) distance matrix counts their
inliers. The winner is then refitted (PCA of its inliers over the whole cloud) twice, which removes
the bias of the three sampled points; the refit is what makes the plane accurate enough to peel a
few-millimetre-thick garment off the table. A garment lying flat over most of the view outvotes the table,
so the fit then steps down to a parallel layer of points behind the winner, the table.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import torch

#: A layer behind the winning plane is looked for down to this many inlier thresholds (a flat garment's thickness).
DESCENT_DEPTH = 8.0
#: ... and taken as the table when it holds at least this share of the points within the threshold of the winner
#: (sensor noise and reflections behind a real table are far fewer).
BELOW_SHARE = 0.1
#: ... and only when it is parallel to the winner within this angle (degrees).
PARALLEL_DEG = 2.0
#: A layer behind the winner counts only beyond this many noise widths of it (a noisy table's far tail does not).
DESCENT_SIGMAS = 4.0
#: Hypotheses are scored, and the winner refitted, on the points within this share of the inlier threshold.
NARROW = 0.25
#: Most layers stepped down through (a garment on a cloth on the table).
MAX_DESCENTS = 3


@dataclass(frozen=True)
class Plane:
    """``normal . p + offset = 0``; ``normal`` is unit length and points towards the sensor."""

    normal: torch.Tensor  # (3,)
    offset: float
    inlier_ratio: float

    def coefficients(self) -> list[float]:
        """[a, b, c, d] of ``a x + b y + c z + d = 0`` (pcl_msgs/ModelCoefficients order)."""
        return [*(float(v) for v in self.normal.tolist()), float(self.offset)]

    def signed_distance(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) -> (N,) distance to the plane, positive on the sensor's side."""
        return points @ self.normal + self.offset


def _refit(points: torch.Tensor, inliers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares plane through ``points[inliers]``: (normal (3,), centroid (3,))."""
    selected = points[inliers].double()
    centroid = selected.mean(dim=0)
    centered = selected - centroid
    _, eigenvectors = torch.linalg.eigh(centered.T @ centered)
    return eigenvectors[:, 0].to(points.dtype), centroid.to(points.dtype)


def _settle(points: torch.Tensor, normal: torch.Tensor, offset: torch.Tensor, band: float, origin: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Refit a plane twice to the points within ``band`` of it, then turn its normal towards ``origin``."""
    for _ in range(2):
        inliers = (points @ normal + offset).abs() < band
        if int(inliers.sum()) < 3:
            break
        normal, centroid = _refit(points, inliers)
        offset = -(normal @ centroid)
    side = float(normal @ origin + offset)
    if abs(side) < band:
        # The sensor on the plane (a cloud given without one): the side holding more of the points off the
        # plane, the objects on the table, is taken for the sensor's.
        distance = points @ normal + offset
        side = float((distance > band).sum() - (distance < -band).sum())
    if side < 0:
        normal, offset = -normal, -offset
    return normal, offset


def fit_plane(points: torch.Tensor, threshold: float, iterations: int = 256, *,
              sensor_origin: torch.Tensor | None = None, up: torch.Tensor | None = None,
              max_tilt_deg: float = 0.0, subsample: int = 4096, seed: int = 0) -> Plane | None:
    """Find the table: the plane with the most points within ``threshold / 4``, refined by least squares, or
    a parallel layer of points behind it.

    Hypotheses are scored, and the winner refitted, on a quarter of the inlier distance: on a wider band a
    plane hovering between the table and a garment lying flat a few millimetres above it, tilted a fraction
    of a degree, collects parts of both and beats the table itself (a compromise that eats the garment). When
    the garment covers more of the view than the table around it, the garment's own layer wins; the table is
    then a parallel layer behind the winner (away from the sensor), more than ``DESCENT_SIGMAS`` noise widths
    and less than ``DESCENT_DEPTH`` thresholds behind it, holding ``BELOW_SHARE`` of the winner's points, and
    the fit steps down to it. The noise width is measured on the winner's far side, where a table has nothing
    but noise. ``inlier_ratio`` is reported at the full ``threshold`` (the points the table stage will remove).

    Args:
        points: (N, 3) float, finite.
        threshold: inlier distance (same unit as the points).
        iterations: number of random hypotheses.
        sensor_origin: (3,) where the sensor is, to orient the normal towards it (default: origin).
        up: (3,) unit axis; with ``max_tilt_deg > 0`` only planes whose normal is within that angle
            of ``up`` (either sign) are accepted.
        subsample: hypotheses are scored on at most this many points.
        seed: the generator seed, so the same cloud always gives the same plane.

    Returns:
        The refined :class:`Plane`, or None when fewer than 3 points are given or no hypothesis
        satisfies the tilt constraint.
    """
    count = points.shape[0]
    if count < 3:
        return None
    generator = torch.Generator(device='cpu').manual_seed(seed)
    if count > subsample:
        pick = torch.randperm(count, generator=generator)[:subsample].to(points.device)
        sample = points[pick]
    else:
        sample = points
    triplets = torch.randint(0, sample.shape[0], (iterations, 3), generator=generator).to(points.device)
    a, b, c = sample[triplets[:, 0]], sample[triplets[:, 1]], sample[triplets[:, 2]]
    normals = torch.linalg.cross(b - a, c - a)
    norms = normals.norm(dim=1)
    valid = norms > 1e-12
    normals = normals / norms.clamp_min(1e-12)[:, None]
    if up is not None and max_tilt_deg > 0:
        valid &= (normals @ up).abs() >= math.cos(math.radians(max_tilt_deg))
    if not bool(valid.any()):
        return None
    offsets = -(normals * a).sum(dim=1)
    origin = sensor_origin if sensor_origin is not None else torch.zeros(3, dtype=points.dtype, device=points.device)
    # The vote is on a quarter of the threshold. On a wider band a plane tilted a fraction of a degree passes
    # close enough to both the table and a garment lying flat a few millimetres above it, and that compromise
    # outvotes the table (half the threshold still did, on a rendered drag bag); the narrow band holds the
    # densest thin layer.
    band = NARROW * threshold
    sample_distance = sample @ normals.T + offsets  # (S, iterations)
    scores = (sample_distance.abs() < band).sum(dim=0)
    best = int(torch.argmax(torch.where(valid, scores, torch.full_like(scores, -1))))
    normal, offset = _settle(points, normals[best], offsets[best], band, origin)
    # The table is the far side. A garment lying flat can cover more of the view than the table left around
    # it and win the vote: then the table is a parallel layer of points behind the winner (away from the
    # sensor), beyond its depth noise, measured on its far side (nothing lies under a table but noise).
    distance = points @ normal + offset
    far = distance[(distance <= 0) & (distance > -2 * band)]  # within 2 bands: not the next layer's points
    noise = 1.4826 * float(far.abs().median()) if far.numel() else band
    gap = max(band, DESCENT_SIGMAS * noise)
    for _ in range(MAX_DESCENTS):
        below = (distance <= -gap) & (distance > -DESCENT_DEPTH * threshold)
        if int(below.sum()) < max(3, BELOW_SHARE * int((distance.abs() < threshold).sum())):
            break
        lower_normal, centroid = _refit(points, below)
        if float((lower_normal @ normal).abs()) < math.cos(math.radians(PARALLEL_DEG)):
            break  # not a layer under the winner: the edge of a wall, a box, the far side of a crumple
        normal, offset = _settle(points, lower_normal, -(lower_normal @ centroid), band, origin)
        distance = points @ normal + offset
    inlier_ratio = float((distance.abs() < threshold).float().mean())
    return Plane(normal=normal, offset=float(offset), inlier_ratio=inlier_ratio)
