"""The physics of the cryo-ET simulator: density maps from atoms, the contrast transfer function,
and noise to a target signal-to-noise ratio. Pure numpy; the simulator composes them.

Units: atom coordinates and lengths in Ångström, defocus in µm (negative = underfocus, as the
paper writes "-5 µm"), voltage in kV, spherical aberration Cs in mm.
"""

from __future__ import annotations

import math

import numpy as np

# Chimera's molmap convention: a Gaussian per atom whose width follows the resolution.
SIGMA_PER_RESOLUTION = 1.0 / (math.pi * math.sqrt(2.0))
_ATOM_CHUNK = 8192  # atoms per matrix product: bounds memory at chunk x box^2 floats


def density_map(coords: np.ndarray, weights: np.ndarray | None = None, box: int = 32, voxel: float = 10.0,
                resolution: float = 20.0, centre: np.ndarray | None = None) -> np.ndarray:
    """A (box, box, box) map of Gaussian-blurred atoms, indexed [z, y, x] (mrcfile's order, which
    every dcbench volume follows).

    coords (N, 3) in Å; weights (N,) (e.g. atomic numbers; default 1); each atom is a normalised
    3D Gaussian of sigma = resolution / (pi sqrt 2) Å sampled at voxel centres, so the map sums
    to sum(weights) / voxel^3 when sigma is at least a voxel and no atom is near the edge (coarser
    Gaussians are point-sampled, not integrated over the voxel). The box is centred on
    `centre` (default: the weighted centre of mass)."""
    coords = np.asarray(coords, dtype=np.float64)
    weights = np.ones(len(coords)) if weights is None else np.asarray(weights, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 3 or len(weights) != len(coords):
        raise ValueError(f"need (N, 3) coordinates and N weights, got {coords.shape} and {weights.shape}")
    if centre is None:
        centre = (weights[:, None] * coords).sum(0) / weights.sum()
    sigma = resolution * SIGMA_PER_RESOLUTION
    axis = (np.arange(box) - (box - 1) / 2) * voxel  # voxel centres in Å, relative to the centre
    norm = 1.0 / (math.sqrt(2 * math.pi) * sigma)
    volume = np.zeros((box, box * box))
    for start in range(0, len(coords), _ATOM_CHUNK):
        part = coords[start:start + _ATOM_CHUNK] - centre
        # separable Gaussian: (atoms, box) per axis; the map is sum_n w gz (x) gy (x) gx
        gx, gy, gz = (norm * np.exp(-0.5 * ((axis[None, :] - part[:, i:i + 1]) / sigma) ** 2) for i in range(3))
        gyx = (gy[:, :, None] * gx[:, None, :]).reshape(len(part), -1)
        volume += (weights[start:start + _ATOM_CHUNK, None] * gz).T @ gyx
    return volume.reshape(box, box, box)


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å (0.0197 Å at 300 kV)."""
    volts = voltage_kv * 1e3
    return 12.2643 / math.sqrt(volts * (1 + 0.978466e-6 * volts))


def ctf(frequency: np.ndarray, defocus_um: float = -5.0, voltage_kv: float = 300.0, cs_mm: float = 1.7,
        amplitude_contrast: float = 0.1) -> np.ndarray:
    """The (rotationally symmetric) CTF at spatial frequencies |k| in 1/Å:
    CTF = -(sqrt(1 - A^2) sin(chi) + A cos(chi)), chi = pi lambda dz k^2 - pi/2 Cs lambda^3 k^4,
    with dz the underfocus in Å (positive for the paper's -5 µm). Defaults: the paper's -5 µm, 300 kV,
    Cs 1.7 mm (as stated in the paper) and amplitude contrast 0.1."""
    wavelength = electron_wavelength(voltage_kv)
    underfocus = -defocus_um * 1e4
    cs = cs_mm * 1e7
    k2 = np.asarray(frequency, dtype=np.float64) ** 2
    chi = math.pi * wavelength * underfocus * k2 - 0.5 * math.pi * cs * wavelength**3 * k2**2
    a = amplitude_contrast
    return -(math.sqrt(1 - a * a) * np.sin(chi) + a * np.cos(chi))


def apply_ctf(volume: np.ndarray, voxel: float = 10.0, **ctf_parameters: float) -> np.ndarray:
    """Multiply a volume's 3D Fourier transform by the CTF of |k| (k in 1/Å for `voxel` Å)."""
    freqs = [np.fft.fftfreq(n, d=voxel) for n in volume.shape]
    radius = np.sqrt(sum(f**2 for f in np.meshgrid(*freqs, indexing="ij")))
    return np.fft.ifftn(np.fft.fftn(volume) * ctf(radius, **ctf_parameters)).real


def rfft_frequencies(side: int, voxel: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frequencies (1/Å) along z, y, x of a (side, side, side // 2 + 1) rfftn of a [z, y, x]
    volume, shaped to broadcast against it."""
    full = np.fft.fftfreq(side, d=voxel)
    half = np.fft.rfftfreq(side, d=voxel)
    return full[:, None, None], full[None, :, None], half[None, None, :]


def missing_wedge_mask(side: int, tilt_degrees: float, voxel: float = 10.0) -> np.ndarray:
    """1 where a single-axis tilt series over +-tilt_degrees samples Fourier space, 0 in the
    missing wedge, in rfftn layout. The beam runs along z and the tilt axis along y: the tilted
    projections sample the central planes with |k_z| <= |k_x| tan(tilt)."""
    if not 0 < tilt_degrees < 90:
        raise ValueError(f"tilt range must be between 0 and 90 degrees, got {tilt_degrees}")
    kz, _, kx = rfft_frequencies(side, voxel)
    sampled = np.abs(kz) <= np.abs(kx) * math.tan(math.radians(tilt_degrees)) + 1e-12
    return np.broadcast_to(sampled, (side, side, side // 2 + 1)).astype(np.float64)


def ctf_rfft(side: int, voxel: float = 10.0, **ctf_parameters: float) -> np.ndarray:
    """The CTF of |k| on a (side, side, side // 2 + 1) rfftn grid of a volume with `voxel` Å."""
    kz, ky, kx = rfft_frequencies(side, voxel)
    return ctf(np.sqrt(kz**2 + ky**2 + kx**2), **ctf_parameters)


def add_noise(volume: np.ndarray, snr: float, rng: np.random.Generator) -> np.ndarray:
    """volume + Gaussian noise with variance var(volume) / snr: SNR is the ratio of signal
    variance to noise variance over the box (the paper's definition, SNR 0.1 by default)."""
    if snr <= 0:
        raise ValueError(f"SNR must be positive, got {snr}")
    return volume + rng.normal(scale=math.sqrt(volume.var() / snr), size=volume.shape)
