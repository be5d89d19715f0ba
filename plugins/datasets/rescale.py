"""Bringing cubic volumes of any box to the box the 3D methods take (32^3), for the file datasets.

Fourier cropping (a larger box) or zero-padding (a smaller one) of the volume's DFT: the
frequencies both grids hold are kept exactly, so a band-limited map is unchanged up to its new
sampling, and the voxel size becomes voxel * box / 32 (the physical box stays the same). The box
centre (voxel B // 2, as dcbench and RELION count it) stays the centre (voxel 16) for odd and even
boxes alike. Values keep their scale (the mean is preserved), and the volumes are z-scored after.

Done with scipy.signal.resample (the textbook Fourier method, splitting and joining the Nyquist
bins of even boxes) along each axis, wrapped in ifftshift / fftshift so that the centre, not
voxel 0, is the fixed point. torch-fourier-rescale was measured for this and not used: it
centres with fftshift where ifftshift is needed, so an odd box's centre moves by one input voxel
(a Gaussian blob at 45^3 -> 32^3 moved 0.71 voxels; correlation 0.94 with the blob made at 32^3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

RESAMPLE_MODES = ("auto", "fourier", "off")
MIN_BOX = 8  # as the simulator's: a smaller box holds too few frequencies to stand for a particle
VOXEL_TOLERANCE = 0.01  # relative: voxel sizes this close are the same scale (header rounding)
CHUNK = 64  # volumes per rescaling step: bounds the complex128 temporaries


def check_resample(value: Any) -> None:
    """For the datasets' check_options: data.resample is one of RESAMPLE_MODES."""
    from dcbench.errors import DcbenchError

    if value not in RESAMPLE_MODES:
        raise DcbenchError(f"data.resample must be one of {', '.join(RESAMPLE_MODES)}, got {value!r}; auto rescales "
                           "volumes of another box to 32^3 by Fourier cropping/padding, off refuses them")


def fourier_rescale(volumes: np.ndarray, box: int) -> np.ndarray:
    """(..., B, B, B) real volumes -> (..., box, box, box) float32 by Fourier cropping or padding
    about the box centre (see the module docstring). Many volumes: chunk them (CHUNK) to bound memory."""
    from scipy.signal import resample

    axes = (-3, -2, -1)
    if volumes.shape[-1] == box:
        return np.asarray(volumes, dtype=np.float32)
    # centre to voxel 0, where resample's grid is anchored; resample keeps the mean (x box / B)
    out = np.fft.ifftshift(np.asarray(volumes, dtype=np.float64), axes=axes)
    for axis in axes:  # the 3D DFT is separable, so three 1D crops/pads are the 3D one
        out = resample(out, box, axis=axis)
    return np.fft.fftshift(out, axes=axes).astype(np.float32)


@dataclass(frozen=True)
class BoxChange:
    """What the volumes were (box, voxel in Å or None when no header says) and what they become."""

    box: int
    voxel: float | None
    new_box: int = 32
    mode: str = "auto"

    @property
    def rescaled(self) -> bool:
        return self.box != self.new_box

    @property
    def method(self) -> str:
        if not self.rescaled:
            return "none"
        return "Fourier cropping" if self.box > self.new_box else "Fourier padding"

    @property
    def new_voxel(self) -> float | None:
        return None if self.voxel is None else self.voxel * self.box / self.new_box

    def notice(self, dataset: str) -> str:
        """'mrc: 52^3 volumes at 10 Å rescaled to 32^3 at 16.25 Å by Fourier cropping'."""
        at, to = ((f" at {self.voxel:g} Å", f" at {self.new_voxel:g} Å") if self.voxel is not None
                  else (" (voxel size unknown)", ""))
        return f"{dataset}: {self.box}^3 volumes{at} rescaled to {self.new_box}^3{to} by {self.method}"

    def record(self) -> dict[str, Any]:
        """For the run's provenance: the original and the new box and voxel size, and how."""
        return {"original_box": self.box, "original_voxel_A": self.voxel, "box": self.new_box,
                "voxel_A": self.new_voxel, "method": self.method, "resample": self.mode}


def same_voxel(a: float | None, b: float | None) -> bool:
    """Unknown voxel sizes match anything; known ones within VOXEL_TOLERANCE."""
    return a is None or b is None or abs(a - b) <= VOXEL_TOLERANCE * max(a, b)


def rescale_all(volumes: np.ndarray, box: int) -> np.ndarray:
    """(N, B, B, B) -> (N, box, box, box) float32, CHUNK volumes at a time (bounds the FFT temporaries)."""
    out = np.empty((len(volumes), box, box, box), dtype=np.float32)
    for start in range(0, len(volumes), CHUNK):
        out[start:start + CHUNK] = fourier_rescale(volumes[start:start + CHUNK], box)
    return out
