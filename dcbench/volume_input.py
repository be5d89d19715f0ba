"""How a method sees subtomograms: Gaussian low-pass, then binning, as cryo-ET practice does
before classification.

Why (docs/subtomograms.md, "Why volumes did not train"): at SNR 0.1 nine tenths of each voxel's
variance is noise, most of it above the resolution the particles carry. A network trained on raw
32^3 particles memorises that noise (the training reconstruction error falls while the test
error rises), and a particle and its rotated copy T(x) share their noise exactly, so the
positive content pair can be matched on noise instead of shape. Low-pass filtering removes the
noise the signal does not need; 2x binning then averages what is left (8x fewer voxels, 8x
cheaper networks).

The method's networks see `prepare(x)`; its decoder's outputs go back to the input grid through
`restore` (trilinear upsampling), so encode/decode keep the dataset's shape. With sigma 0 and
bin 1 (the `paper` preset) both are the identity.

Imported only by method plugins (it needs torch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from dcbench.errors import DcbenchError

# The one quick budget every 3D method shares (docs/subtomograms.md): low-passed, 2x binned
# particles, 70 epochs of 32 = 3,150 steps on subtomo-sim, lr 1e-3. RAW_VOLUMES: the paper's input.
QUICK_VOLUME_BUDGET = {"lowpass_sigma": 1.5, "bin": 2, "batch_size": 32, "epochs": 70, "lr": 1e-3}
RAW_VOLUMES = {"lowpass_sigma": 0.0, "bin": 1}


@dataclass(frozen=True)
class VolumeInput:
    """Gaussian low-pass (std in voxels of the input grid; 0 = off), then average-pool binning
    by an integer factor (1 = off)."""

    lowpass_sigma: float = 0.0
    bin: int = 1

    @classmethod
    def from_config(cls, config: Mapping[str, Any], input_shape: tuple[int, ...]) -> VolumeInput:
        """The settings `lowpass_sigma` and `bin` of a method's config, checked against the
        input shape; images (3D shapes) always get the identity."""
        sigma, factor = float(config.get("lowpass_sigma", 0.0)), config.get("bin", 1)
        if len(input_shape) != 4:
            return cls()
        if not math.isfinite(sigma) or sigma < 0:
            raise DcbenchError(f"lowpass_sigma must be a number >= 0 (voxels; 0 = off), got {sigma}; set e.g. "
                               "--set lowpass_sigma=1.5")
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise DcbenchError(f"bin must be a whole number >= 1 (1 = off), got {factor!r}; set e.g. --set bin=2")
        for side in input_shape[1:]:
            if side % factor:
                raise DcbenchError(f"bin {factor} does not divide the volume side {side}: "
                                   "use a divisor of it (bin=1 turns binning off)")
        return cls(sigma, factor)

    @property
    def identity(self) -> bool:
        return self.lowpass_sigma == 0 and self.bin == 1

    def network_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape the networks see: the input shape with each side divided by `bin`."""
        if len(input_shape) != 4:
            return tuple(input_shape)
        return (input_shape[0], *(side // self.bin for side in input_shape[1:]))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, D, H, W) volumes as the networks see them."""
        if x.dim() != 5 or self.identity:
            return x
        if self.lowpass_sigma > 0:
            x = gaussian_lowpass(x, self.lowpass_sigma)
        return F.avg_pool3d(x, self.bin) if self.bin > 1 else x

    def restore(self, y: torch.Tensor) -> torch.Tensor:
        """Network-grid volumes (N, C, d, h, w) back on the input grid (trilinear upsampling)."""
        if y.dim() != 5 or self.bin == 1:
            return y
        return F.interpolate(y, scale_factor=self.bin, mode="trilinear", align_corners=False)


def gaussian_lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter (std `sigma` voxels, kernel to 3 sigma) along the three spatial
    axes of (N, C, D, H, W), with replicate padding so that the box edges are not darkened."""
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    n, c = x.shape[:2]
    y = x.reshape(n * c, 1, *x.shape[2:])
    for axis in range(3):
        view = [1, 1, 1, 1, 1]
        view[2 + axis] = -1
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius  # F.pad counts from the last axis
        y = F.conv3d(F.pad(y, pad, mode="replicate"), kernel.view(view))
    return y.reshape(x.shape)
