"""Which way is up, read from a garment's own shape: an SE(3)-equivariant "up" for clouds without gravity.

A garment at rest on a table is a thin sheet whose wrinkles, drape and folds rise from the table and never go
below it. So (1) the cloud's least-spread principal axis is the table normal, up to sign, and (2) the sign is
the side where the heights along that axis have their long tail: most points lie in the flat bottom layer, a
few stand up, so the third central moment is positive along "up". Both steps commute with rotations and ignore
translations, so ``up_direction(X @ R.T + t) == up_direction(X) @ R.T`` exactly (away from ties).

What it is for:
- The USEEK student (``SPRINConfig.up_cue``): SE(3)-invariant descriptor entries measured against this vector.
  Without it nothing SE(3)-invariant tells a flat symmetric garment's left sleeve from its right one (a half
  turn about the garment's axis of symmetry maps one onto the other); the relief gives the turn away.
- Canonicalisation (:func:`canonicalize`, ``KeypointModel.load(..., canonicalize='up')``): turn a cloud seen at
  any pose so that its estimated up is +z, where a Key-Grid model trained at every yaw (z up) applies.

Where it fails (measured on the held-out ``split_medium`` sequences, every 4th frame: the sign agrees with the
simulator's +z in 84-100 % of the frames of each sequence): a perfectly flat sheet (no relief, so no tail;
frame 0 of a drop, or a flat cloth in a noise-free render) and mid-fold, when the lifted half stands upright
and the least-spread axis is no longer the table normal. Real depth noise is symmetric, so it does not tip
the sign by itself; a cloud whose skewness is near 0 gets an arbitrary but deterministic sign (+).
"""

from __future__ import annotations

import torch


def _principal_axes(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred float64 points (B, N, 3) and their principal axes (B, 3, 3), columns by ascending spread.

    Float64 because a thin sheet's smallest eigenvalue is ~1e-4 of the largest.
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f'expected points (B, N, 3), got shape {tuple(points.shape)}')
    x = points.detach().double()
    centred = x - x.mean(dim=1, keepdim=True)
    covariance = centred.transpose(1, 2) @ centred / max(points.shape[1], 1)  # (B, 3, 3)
    return centred, torch.linalg.eigh(covariance).eigenvectors


def _signed_by_skew(centred: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """``axis`` (B, 3) turned towards the long tail of the points' coordinates along it (+ at a tie)."""
    heights = (centred @ axis.unsqueeze(-1)).squeeze(-1)  # (B, N)
    sign = torch.where((heights ** 3).mean(dim=1) < 0, -1.0, 1.0).to(axis.dtype)
    return axis * sign.unsqueeze(-1)


def up_direction(points: torch.Tensor) -> torch.Tensor:
    """Unit "up" vectors (B, 3) of clouds ``points`` (B, N, 3): least-spread axis, signed by the heights' skew."""
    with torch.autocast(points.device.type, enabled=False):
        centred, axes = _principal_axes(points)
        return _signed_by_skew(centred, axes[..., 0]).to(points.dtype)


def principal_frame(points: torch.Tensor) -> torch.Tensor:
    """Rotations (B, 3, 3) whose rows are a cloud's own axes: the most-spread axis, the middle one, up.

    Row 3 is :func:`up_direction`; row 1 is the most-spread axis signed by its skew (a T-shirt's collar side and
    hem side differ), row 2 completes a right-handed frame. Like every PCA frame it is ambiguous where two
    spreads are nearly equal (a T-shirt whose sleeve span is close to its length): there the heading can jump
    by 90 or 180 degrees between frames.
    """
    with torch.autocast(points.device.type, enabled=False):
        centred, axes = _principal_axes(points)
        up = _signed_by_skew(centred, axes[..., 0])
        major = _signed_by_skew(centred, axes[..., 2])
        return torch.stack([major, torch.linalg.cross(up, major), up], dim=1).to(points.dtype)


def rotation_to_z(up: torch.Tensor) -> torch.Tensor:
    """Rotations (B, 3, 3) taking unit vectors ``up`` (B, 3) to +z by the shortest turn (``R @ up = z``).

    Rodrigues' formula about ``up x z``; a vector at -z (no unique shortest turn) gets the half turn about x.
    """
    u = up.double()
    z = torch.zeros_like(u)
    z[:, 2] = 1.0
    axis = torch.linalg.cross(u, z)  # (B, 3), |axis| = sin(angle)
    cos = u[:, 2]
    skew = torch.zeros(u.shape[0], 3, 3, dtype=u.dtype, device=u.device)
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    skew = skew - skew.transpose(1, 2)
    eye = torch.eye(3, dtype=u.dtype, device=u.device).expand_as(skew)
    opposite = cos < -1.0 + 1e-9
    factor = torch.where(opposite, torch.zeros_like(cos), 1.0 / (1.0 + cos).clamp_min(1e-12))
    rotation = eye + skew + skew @ skew * factor.view(-1, 1, 1)
    half_turn = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=u.dtype, device=u.device)).expand_as(skew)
    rotation = torch.where(opposite.view(-1, 1, 1), half_turn, rotation)
    return rotation.to(up.dtype)


def canonicalize(points: torch.Tensor, mode: str = 'up') -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn clouds (B, N, 3) about their centroids into a pose read from their own shape.

    ``mode='up'``: the shortest turn that makes :func:`up_direction` +z; the yaw stays as it was.
    ``mode='frame'``: into :func:`principal_frame` (up to +z, the most-spread axis to +x), so the yaw is fixed too.
    Returns ``(turned (B, N, 3), rotation (B, 3, 3), centre (B, 1, 3))`` with ``turned = (points - centre) @
    rotation.T``; map results back with ``turned_result @ rotation + centre``.
    """
    if mode == 'up':
        rotation = rotation_to_z(up_direction(points))
    elif mode == 'frame':
        rotation = principal_frame(points)
    else:
        raise ValueError(f"canonicalize mode must be 'up' or 'frame', got {mode!r}")
    centre = points.mean(dim=1, keepdim=True)
    return (points - centre) @ rotation.transpose(1, 2), rotation, centre
