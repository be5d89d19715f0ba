"""3D rotations of volumes: uniform random rotations, conversions, and batched resampling.

Conventions (shared by the simulator and the FSC metric's alignment):
- Volumes are indexed [z, y, x] (mrcfile's order); rotation matrices act on physical
  (x, y, z) column vectors about the box centre.
- `rotate_volumes(v, R, t)` moves the feature at position q to R q + t (t in voxels along x, y, z):
  output(p) = v(R^T (p - t)). Its inverse is `rotate_volumes(., R^T, -R^T t)`.
- Quaternions are (w, x, y, z) with w >= 0.

Conversions are scipy's Rotation (issue 16: as fast or faster than the hand-written ones were, and
equal to 1e-15; as float32, as they reach the volumes, bit for bit). Kept by hand: random_quaternions
(Rotation.random draws other numbers, which would change every simulated particle),
rotation_angle_degrees (8x faster than composing Rotations) and rotate_volumes (torch, batched).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch.nn import functional as F


def random_quaternions(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 4) unit quaternions drawn uniformly over SO(3) (normalised 4D Gaussians)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q * np.where(q[:, :1] < 0, -1.0, 1.0)


def quaternions_to_matrices(q: np.ndarray) -> np.ndarray:
    """(n, 4) unit quaternions (w, x, y, z) -> (n, 3, 3) rotation matrices."""
    return Rotation.from_quat(np.asarray(q, dtype=np.float64), scalar_first=True).as_matrix()


def matrices_to_quaternions(r: np.ndarray) -> np.ndarray:
    """(n, 3, 3) rotation matrices -> (n, 4) unit quaternions with w >= 0 (where w = 0, the first
    non-zero component positive)."""
    return Rotation.from_matrix(np.asarray(r, dtype=np.float64)).as_quat(canonical=True, scalar_first=True)


def axis_angle_matrix(axis: np.ndarray, degrees: float) -> np.ndarray:
    """(3, 3) rotation by `degrees` about `axis` (x, y, z), right-handed."""
    axis = np.asarray(axis, dtype=np.float64)
    return Rotation.from_rotvec(axis / np.linalg.norm(axis) * math.radians(degrees)).as_matrix()


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
