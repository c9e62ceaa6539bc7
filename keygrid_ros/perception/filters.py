"""Per-point filters of the front end, in torch so the same code runs on CPU or GPU.

The crop and the voxel grid take the raw sensor points (NaN where the camera had no return) and never look at a
point twice: the frame change, the NaN test and the crop box are one fused mask, and the voxel
grid is one sort (``torch.unique``) plus one scatter-add.
"""

from __future__ import annotations

import torch

from .. import ops


def transform_and_crop(points: torch.Tensor, transform: torch.Tensor | None,
                       box_min: torch.Tensor | None, box_max: torch.Tensor | None) -> torch.Tensor:
    """Move points into the target frame and keep those inside an axis-aligned box.

    Args:
        points: (N, 3) float, sensor frame; NaN/inf rows are dropped (they fail every comparison).
        transform: (4, 4) target <- sensor homogeneous transform, or None for the identity.
        box_min, box_max: (3,) box corners in the target frame (inclusive), or None for no crop.

    Returns:
        (M, 3) float points in the target frame, M <= N, in input order.
    """
    if transform is not None:
        points = torch.addmm(transform[:3, 3], points, transform[:3, :3].T)
    if box_min is not None and box_max is not None:
        keep = ((points >= box_min) & (points <= box_max)).all(dim=1)
    else:
        keep = torch.isfinite(points).all(dim=1)
    return points[keep]


def voxel_downsample(points: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """Replace the points of every occupied voxel by their mean (PCL VoxelGrid semantics).

    The grid is anchored at the cloud's minimum corner, so the result depends only on the points.

    Args:
        points: (N, 3) float, finite.
        voxel_size: edge length in the points' units; <= 0 returns the input unchanged.

    Returns:
        (V, 3) float voxel centroids, V <= N, ordered by voxel key (deterministic).
    """
    if voxel_size <= 0 or points.shape[0] == 0:
        return points
    origin = points.min(dim=0).values
    cells = ((points - origin) / voxel_size).floor().to(torch.int64)
    extent = cells.max(dim=0).values + 1
    keys = (cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]
    unique_keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    count = unique_keys.shape[0]
    sums = torch.zeros((count, 3), dtype=points.dtype, device=points.device).index_add_(0, inverse, points)
    counts = torch.zeros(count, dtype=points.dtype, device=points.device).index_add_(
        0, inverse, torch.ones_like(points[:, 0]))
    return sums / counts[:, None]


def robot_segments(origins: torch.Tensor, chain: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The pieces of robot a self-filter cuts around: segment starts and ends ``(S, 3)`` each.

    Without ``chain`` every frame origin of ``origins`` (M, 3) is a zero-length segment (a sphere once given a
    radius); with it, the M - 1 segments joining consecutive origins (capsules: the links of an arm), whose
    round ends already hold those spheres.
    """
    if chain and origins.shape[0] > 1:
        return origins[:-1], origins[1:]
    return origins, origins


def cut_robot(points: torch.Tensor, origins: torch.Tensor, radius: float, chain: bool = False,
              chunk: int = 65536) -> torch.Tensor:
    """Drop the points within ``radius`` of the robot (a self-filter: a gripper must not join the garment).

    Args:
        points: (N, 3) float, target frame.
        origins: (M, 3) robot frame origins in the same frame; M = 0 returns ``points`` unchanged.
        radius: metres; <= 0 returns ``points`` unchanged.
        chain: also cut around the segments joining consecutive origins (see :func:`robot_segments`).
        chunk: points per distance block, so memory stays at ``chunk x segments`` whatever N is.

    Returns:
        (K, 3) the points farther than ``radius`` from every sphere (and capsule), in input order.
    """
    if radius <= 0 or origins.shape[0] == 0 or points.shape[0] == 0:
        return points
    origins = origins.to(points)
    starts, ends = robot_segments(origins, chain)
    # Only points inside the robot's bounding box grown by the radius can be cut: a gripper over the garment
    # leaves most of the cloud (the table) to one cheap comparison instead of a distance to every segment.
    near = ((points >= origins.amin(dim=0) - radius) & (points <= origins.amax(dim=0) + radius)).all(dim=1)
    candidates = near.nonzero().squeeze(1)
    keep = torch.ones(points.shape[0], dtype=torch.bool, device=points.device)
    for i in range(0, candidates.shape[0], chunk):
        index = candidates[i:i + chunk]
        sqdist = ops.point_segment_sqdist(points[index][None], starts[None], ends[None])[0]  # (n, S)
        keep[index] = sqdist.amin(dim=1) > radius * radius
    return points[keep]
