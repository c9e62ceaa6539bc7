"""Table detection: the dominant plane by RANSAC, refined by least squares.

All hypotheses are scored at once: ``iterations`` random triplets from a subsample give an
(iterations, 3) batch of normals, and one (subsample, iterations) distance matrix counts their
inliers. The winner is then refitted (PCA of its inliers over the whole cloud) twice, which removes
the bias of the three sampled points; the refit is what makes the plane accurate enough to peel a
few-millimetre-thick garment off the table.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import torch


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


def fit_plane(points: torch.Tensor, threshold: float, iterations: int = 256, *,
              sensor_origin: torch.Tensor | None = None, up: torch.Tensor | None = None,
              max_tilt_deg: float = 0.0, subsample: int = 4096, seed: int = 0) -> Plane | None:
    """Find the plane with the most points within ``threshold / 2``, refined by least squares.

    Hypotheses are scored, and the winner refitted, on the band of half the inlier distance: with the full
    band a plane hovering between the table and a garment lying flat a few millimetres above it collects
    both, and beats the table itself (a tilted compromise that eats the garment). The half band still holds
    the table's sensor noise when ``threshold`` is set above it, as the removal stage needs anyway.
    ``inlier_ratio`` is reported at the full ``threshold`` (the points the table stage will remove).

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
    band = 0.5 * threshold
    scores = ((sample @ normals.T + offsets).abs() < band).sum(dim=0)
    scores = torch.where(valid, scores, torch.full_like(scores, -1))
    best = int(torch.argmax(scores))
    normal, offset = normals[best], offsets[best]
    for _ in range(2):
        inliers = (points @ normal + offset).abs() < band
        if int(inliers.sum()) < 3:
            break
        normal, centroid = _refit(points, inliers)
        offset = -(normal @ centroid)
    origin = sensor_origin if sensor_origin is not None else torch.zeros(3, dtype=points.dtype, device=points.device)
    if float(normal @ origin + offset) < 0:
        normal, offset = -normal, -offset
    inlier_ratio = float(((points @ normal + offset).abs() < threshold).float().mean())
    return Plane(normal=normal, offset=float(offset), inlier_ratio=inlier_ratio)
