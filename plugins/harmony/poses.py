"""Harmony's parameterised transformations: phi -> a rigid warp, its inverse, and random draws.

phi = (rotation, shift): 2D (angle, dx, dy), 3D (three Euler angles, dx, dy, dz), angles in
radians and shifts in pixels (voxels), as in the reference code (which warps with kornia).
With R = R(rotation) and t the shift in grid_sample's normalised coordinates:

  pose(x, phi)(p)         = x(R p + t)                     rotate, then shift
  canonicalise(x, phi)(p) = x(R^T (p - t))                 the inverse of pose

so canonicalise(pose(x, phi), phi) = x up to resampling and the border. Training warps each
input to canonical pose with its own predicted phi (differentiable through grid_sample);
decoding puts the canonical image back into the pose of phi.

`warp` has the semantics of common.geometry.warp (tests check they agree) but builds
the sampling grid with a few broadcast multiply-adds instead of F.affine_grid: on CPU,
affine_grid's batched (HW x 3) @ (3 x 2) bmm and its base-grid copy took ~14% of a training
step at batch 100 on 28x28 (1 thread); the broadcast grid costs a fraction of that.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from dcbench_plugins.common.geometry import rotation_matrices_2d, rotation_matrices_3d


def _grid(linear: torch.Tensor, shift: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """F.affine_grid(cat([linear, shift]), align_corners=False) by broadcasting: grid (N, *size, s)
    with grid[..., k] = sum_j linear[:, k, j] * p_j + shift[:, k], p = (x, y[, z]) pixel centres."""
    s, n = len(size), linear.shape[0]
    coords = []
    for j in range(s):  # coordinate j = x, y, z runs along spatial dim s-1-j (W, H, D)
        length = size[s - 1 - j]
        c = (torch.arange(length, device=linear.device, dtype=linear.dtype) * 2 + 1) / length - 1
        view = [1] * s
        view[s - 1 - j] = length
        coords.append(c.view(1, *view))
    lin = linear.view(n, s, s, *[1] * s)
    comps = []
    for k in range(s):
        g = shift[:, k].view(n, *[1] * s) + lin[:, k, 0] * coords[0]
        for j in range(1, s):
            g = g + lin[:, k, j] * coords[j]
        comps.append(g)
    return torch.stack(comps, dim=-1)


def warp(x: torch.Tensor, linear: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Resample x (N,C,H,W) or (N,C,D,H,W) so that output(p) = x(linear @ p + shift), p in
    normalised [-1, 1] coordinates about the centre; zeros outside (as geometry.warp)."""
    grid = _grid(linear.to(x.dtype), shift.to(x.dtype), tuple(x.shape[2:]))
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _split(phi: torch.Tensor, spatial: int) -> tuple[torch.Tensor, torch.Tensor]:
    """phi (N, P) -> rotation matrices (N, s, s) and pixel shifts (N, s)."""
    if spatial == 2:
        return rotation_matrices_2d(phi[:, 0]), phi[:, 1:3]
    return rotation_matrices_3d(phi[:, :3]), phi[:, 3:6]


def _normalised(shift_pixels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Pixel shifts (x, y[, z] order, as affine_grid) -> normalised units: 2 units span the side
    (align_corners=False), so one pixel is 2 / side."""
    sides = torch.tensor(list(reversed(x.shape[2:])), device=x.device, dtype=shift_pixels.dtype)
    return shift_pixels * (2.0 / sides)


def pose(x: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Put canonical inputs x (N, C, ...) into the pose given by phi (N, P)."""
    spatial = x.dim() - 2
    rot, shift = _split(phi.to(x.dtype), spatial)
    return warp(x, rot, _normalised(shift, x))


def canonicalise(x: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Undo the pose phi: the inverse warp of `pose` (x(p) sampled at R^T (p - t))."""
    spatial = x.dim() - 2
    rot, shift = _split(phi.to(x.dtype), spatial)
    inv = rot.transpose(1, 2)
    return warp(x, inv, -(inv @ _normalised(shift, x).unsqueeze(-1)).squeeze(-1))


def random_phi(n: int, spatial: int, max_degrees: float, max_shift: float,
               gen: torch.Generator) -> torch.Tensor:
    """Per-sample phi: each angle U(-max_degrees, max_degrees) (as radians), each shift
    U(-max_shift, max_shift) pixels. One draw from the generator, on the CPU."""
    n_rot = 1 if spatial == 2 else 3
    u = torch.rand(n, n_rot + spatial, generator=gen) * 2 - 1
    return torch.cat([u[:, :n_rot] * math.radians(max_degrees), u[:, n_rot:] * max_shift], dim=1)
