"""Rotation matrices and affine resampling of image and volume batches: used by DualContrast's
transformations T(x), the pose models of Harmony and spatial-VAE, and the sz metric."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def rotation_matrices_2d(angles: torch.Tensor) -> torch.Tensor:
    """(N,) angles in radians -> (N, 2, 2) rotation matrices."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def rotation_matrices_3d(euler: torch.Tensor) -> torch.Tensor:
    """(N, 3) Euler angles (x, y, z) in radians -> (N, 3, 3) matrices Rz @ Ry @ Rx."""
    cx, cy, cz = torch.cos(euler).unbind(1)
    sx, sy, sz = torch.sin(euler).unbind(1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], 1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], 1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], 1).view(-1, 3, 3)
    return rz @ ry @ rx


def warp(x: torch.Tensor, linear: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """Resample x (N,C,H,W) or (N,C,D,H,W) so that output(p) = x(linear @ p + shift), with p
    in normalised [-1, 1] coordinates about the centre; zeros outside."""
    n, spatial = x.shape[0], x.dim() - 2
    shift = torch.zeros(n, spatial, device=x.device, dtype=x.dtype) if shift is None else shift.to(x.dtype)
    theta = torch.cat([linear.to(x.dtype), shift.unsqueeze(-1)], dim=-1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

