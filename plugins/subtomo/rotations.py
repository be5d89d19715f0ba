"""3D rotations of volumes: uniform random rotations, conversions, and batched resampling.

Conventions (shared by the simulator and the FSC metric's alignment):
- Volumes are indexed [z, y, x] (mrcfile's order); rotation matrices act on physical
  (x, y, z) column vectors about the box centre.
- `rotate_volumes(v, R, t)` moves the feature at position q to R q + t (t in voxels along x, y, z):
  output(p) = v(R^T (p - t)). Its inverse is `rotate_volumes(., R^T, -R^T t)`.
- Quaternions are (w, x, y, z) with w >= 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F


def random_quaternions(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 4) unit quaternions drawn uniformly over SO(3) (normalised 4D Gaussians)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q * np.where(q[:, :1] < 0, -1.0, 1.0)


def quaternions_to_matrices(q: np.ndarray) -> np.ndarray:
    """(n, 4) unit quaternions (w, x, y, z) -> (n, 3, 3) rotation matrices."""
    q = np.asarray(q, dtype=np.float64)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def matrices_to_quaternions(r: np.ndarray) -> np.ndarray:
    """(n, 3, 3) rotation matrices -> (n, 4) unit quaternions with w >= 0 (Shepperd's method,
    picking the largest of the four candidates for numerical stability)."""
    r = np.asarray(r, dtype=np.float64)
    trace = np.trace(r, axis1=1, axis2=2)
    candidates = np.stack([trace, r[:, 0, 0], r[:, 1, 1], r[:, 2, 2]], 1)
    pick = candidates.argmax(1)
    q = np.empty((len(r), 4))
    for i, (m, k) in enumerate(zip(r, pick)):
        if k == 0:
            s = 2 * math.sqrt(max(1 + trace[i], 1e-12))
            q[i] = [s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
        elif k == 1:
            s = 2 * math.sqrt(max(1 + m[0, 0] - m[1, 1] - m[2, 2], 1e-12))
            q[i] = [(m[2, 1] - m[1, 2]) / s, s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
        elif k == 2:
            s = 2 * math.sqrt(max(1 + m[1, 1] - m[0, 0] - m[2, 2], 1e-12))
            q[i] = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s]
        else:
            s = 2 * math.sqrt(max(1 + m[2, 2] - m[0, 0] - m[1, 1], 1e-12))
            q[i] = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q * np.where(q[:, :1] < 0, -1.0, 1.0)


def axis_angle_matrix(axis: np.ndarray, degrees: float) -> np.ndarray:
    """(3, 3) rotation by `degrees` about `axis` (x, y, z), right-handed."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    half = math.radians(degrees) / 2
    return quaternions_to_matrices(np.concatenate([[math.cos(half)], math.sin(half) * axis])[None])[0]


def rotation_angle_degrees(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Geodesic angle in degrees between rotation matrices (batched over leading axes)."""
    relative = np.einsum("...ji,...jk->...ik", r1, r2)
    cos = (np.trace(relative, axis1=-2, axis2=-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def rotate_volumes(volumes: torch.Tensor | np.ndarray, rotations: torch.Tensor | np.ndarray,
                   shifts: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Rotate (about the box centre) then shift each of (N, D, H, W) cubic volumes, trilinear
    interpolation, zeros outside: output(p) = v(R^T (p - t)). rotations (N, 3, 3) or (3, 3)
    broadcast; shifts (N, 3) in voxels along x, y, z. Returns a float tensor (N, D, H, W)."""
    v = torch.as_tensor(volumes)
    if not v.is_floating_point():
        v = v.float()
    n, side = v.shape[0], v.shape[-1]
    if v.dim() != 4 or not (v.shape[1] == v.shape[2] == side):
        raise ValueError(f"need (N, D, H, W) cubic volumes, got shape {tuple(v.shape)}")
    r = torch.as_tensor(rotations, dtype=v.dtype, device=v.device)
    r = r.expand(n, 3, 3) if r.dim() == 2 else r
    inverse = r.transpose(1, 2)
    # sampling grid in grid_sample's normalised coordinates (x = W axis, y = H, z = D; one unit =
    # side / 2 voxels): input = R^T out - R^T t, built from the three axes by broadcasting
    # (F.affine_grid's batched matmul took 3x longer on CPU)
    offset = torch.zeros(n, 3, dtype=v.dtype, device=v.device)
    if shifts is not None:
        t = torch.as_tensor(shifts, dtype=v.dtype, device=v.device).expand(n, 3) * (2.0 / side)
        offset = -(inverse @ t.unsqueeze(-1)).squeeze(-1)
    axis = (torch.arange(side, dtype=v.dtype, device=v.device) * 2 + 1) / side - 1  # voxel centres
    a = inverse[:, None, None, None, :, :]
    # the offset joins the small z term first, so only one full-size addition remains
    in_plane = a[..., 0] * axis.view(1, 1, 1, side, 1) + a[..., 1] * axis.view(1, 1, side, 1, 1)
    grid = in_plane + (a[..., 2] * axis.view(1, side, 1, 1, 1) + offset[:, None, None, None, :])
    return F.grid_sample(v.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).squeeze(1)
