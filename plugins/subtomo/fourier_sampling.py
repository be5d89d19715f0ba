"""Scoring posed volumes in Fourier space, the engine of `alignment`'s searches.

With the centred transform F(k) = sum_x v(x) exp(-2 pi i k.(x - c) / side), c = (side - 1) / 2 the
box centre and k in cycles per box, rotating a volume about c (as `rotations.rotate_volumes` does)
samples F(R^T k), and shifting it by t multiplies by exp(-2 pi i k.t / side). By Parseval, the
cross-correlation of a particle P with a reference posed by (R, t) is
Re sum_k P(k) conj(F(R^T k)) exp(2 pi i k.t / side): no volume is rotated in real space. The
reference's transform is computed once, zero-padded 2x, and interpolated trilinearly at R^T k (as
RELION does), and only the frequencies 1 <= |k| <= kmax of one half-space are used (a low-pass
that also ignores the mean), so the scores of a batch of particles against many candidate poses
are one real matrix product.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F


class Frequencies:
    """The integer frequencies k (x, y, z order, cycles per box) of one half-space with
    1 <= |k| <= kmax, their positions in a flattened rfftn array, and the phase that refers the
    transform to the box centre."""

    def __init__(self, side: int, kmax: float) -> None:
        kz, ky, kx = np.meshgrid(np.fft.fftfreq(side) * side, np.fft.fftfreq(side) * side,
                                 np.arange(side // 2 + 1), indexing="ij")
        radius = np.sqrt(kx**2 + ky**2 + kz**2)
        # one of each pair k, -k (their terms are complex conjugates), and not k = 0
        half = (kx > 0) | ((kx == 0) & ((ky > 0) | ((ky == 0) & (kz > 0))))
        keep = half & (radius <= min(kmax, side / 2 - 1))
        self.side = side
        self.index = torch.as_tensor(np.flatnonzero(keep))
        self.k = torch.as_tensor(np.stack([kx[keep], ky[keep], kz[keep]], 1), dtype=torch.float32)
        self.phase = torch.exp(1j * (2 * math.pi * (side - 1) / 2 / side) * self.k.sum(1))

    def spectra(self, transforms: torch.Tensor) -> torch.Tensor:
        """(B, K) centred transforms at these frequencies, from (B, D, H, W // 2 + 1) rfftn's."""
        return transforms.reshape(len(transforms), -1)[:, self.index] * self.phase

    def shift_ramps(self, shifts: torch.Tensor) -> torch.Tensor:
        """exp(2 pi i k.t / side) for shifts t (..., 3) in voxels along x, y, z: (..., K). A
        particle's spectrum times this, correlated with a reference, scores the reference moved by t."""
        angles = (2 * math.pi / self.side) * (shifts @ self.k.T)
        return torch.polar(torch.ones_like(angles), angles)


class RotatableSpectrum:
    """The centred transform of one volume, zero-padded 2x so it can be sampled at R^T k."""

    def __init__(self, volume: torch.Tensor, kmax: float) -> None:
        side = volume.shape[0]
        size = 2 * side
        padded = torch.fft.fftn(volume.float(), s=(size,) * 3)  # index j: frequency j / 2 cycles per box
        self.half_width = int(math.ceil(2 * kmax)) + 2  # in half-frequencies, with a margin for interpolation
        j = torch.arange(-self.half_width, self.half_width + 1)
        cube = padded[j.view(-1, 1, 1) % size, j.view(1, -1, 1) % size, j.view(1, 1, -1) % size]
        total = (j.view(-1, 1, 1) + j.view(1, -1, 1) + j.view(1, 1, -1)).double()
        cube = cube * torch.exp(1j * (math.pi * (side - 1) / 2 / side) * total)
        self.cube = torch.stack([cube.real, cube.imag])[None].float()  # (1, 2, S, S, S), [z, y, x]

    def sample(self, rotation_matrices: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """F(R^T k) for rotations (P, 3, 3) and frequencies k (K, 3): (P, K) complex."""
        n, points = len(rotation_matrices), len(k)
        # (R^T k)_i = sum_j k_j R_ji, in grid_sample's [-1, 1] units, (x, y, z) order
        grid = (k * (2 / self.half_width)) @ rotation_matrices.reshape(n, 3, 3)
        # grid_sample uses one thread per batch item: split the points over as many items as threads
        parts = max(1, min(torch.get_num_threads(), n))
        rows = -(-n // parts)
        if rows * parts > n:
            grid = F.pad(grid, (0, 0, 0, 0, 0, rows * parts - n))
        grid = grid.reshape(parts, rows * points, 1, 1, 3)
        values = F.grid_sample(self.cube.expand(parts, -1, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=True)  # (parts, 2, rows x points, 1, 1)
        values = values.reshape(parts, 2, rows, points).transpose(0, 1).reshape(2, -1, points)[:, :n]
        return torch.complex(values[0], values[1])


def ncc(particles: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlations (..., S, G) of particle spectra (..., S, K) with candidate
    spectra (..., G, K) or (G, K), over the K frequencies."""
    # Re(a conj(b)) = a.real b.real + a.imag b.imag: a real dot product of the interleaved views
    a = torch.view_as_real(particles).flatten(-2)
    b = torch.view_as_real(candidates).flatten(-2)
    cross = a @ b.transpose(-1, -2)
    norms = a.square().sum(-1).sqrt()[..., :, None] * b.square().sum(-1).sqrt()[..., None, :]
    return cross / norms.clamp_min(1e-12)
