"""dcbench inputs -> the files Hydra (`drgnai`) reads: a 2D particle stack and a CTF pickle.

- Particles: Hydra reconstructs from 2D images. A subtomogram (1, D, H, W), indexed [z, y, x],
  becomes the image (H, W) of its sum along z, as in the Hydra paper's subtomogram experiment;
  2D single-channel images (1, H, W) pass through unchanged. The stack is one float32 MRC image
  stack (`.mrcs`, written with mrcfile) with the pixel size in its header, one image per input in
  the order given.
- CTF: cryoDRGN's pickle of a float32 (N, 9) array, one row per image, columns [box size (px),
  pixel size (Å), defocus U (Å), defocus V (Å), defocus angle (°), voltage (kV), Cs (mm),
  amplitude contrast, phase shift (°)], defocus positive for underfocus. dcbench's CTF
  dictionaries (DataBundle.ctf) give defocus in µm, negative for underfocus, so
  defocus U = V = -defocus_um x 10^4 Å, angle 0 (no astigmatism), phase shift 0.

Summing a volume along z keeps the kz = 0 plane of its 3D Fourier transform (the projection-slice
theorem), and there a rotationally symmetric 3D CTF of |k| equals the 2D CTF of |(ky, kx)| with the
same parameters: the images carry exactly the 2D CTF the pickle describes.

Without a CTF the pickle describes a constant one (defocus 0, Cs 0, amplitude contrast 1), which
cryoDRGN's formula makes -1 at every frequency: only the sign of the reconstructed density flips.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CTF_COLUMNS = ("box_px", "pixel_A", "defocus_u_A", "defocus_v_A", "defocus_angle_deg", "voltage_kv", "cs_mm",
               "amplitude_contrast", "phase_shift_deg")
# A CTF dictionary in dcbench's convention (see DataBundle.ctf) that leaves images unchanged up to sign.
FLAT_CTF = {"defocus_um": 0.0, "voltage_kv": 300.0, "cs_mm": 0.0, "amplitude_contrast": 1.0}


def to_images(x: np.ndarray) -> np.ndarray:
    """(N, 1, D, H, W) volumes -> (N, H, W) sums along z; (N, 1, H, W) images -> (N, H, W)."""
    if x.ndim == 5 and x.shape[1] == 1:
        return np.asarray(x[:, 0].sum(axis=1, dtype=np.float64), dtype=np.float32)
    if x.ndim == 4 and x.shape[1] == 1:
        return np.asarray(x[:, 0], dtype=np.float32)
    raise ValueError(f"Hydra takes single-channel images or volumes, got inputs of shape {x.shape[1:]}")


def ctf_table(n: int, box: int, pixel_size: float, ctf: dict[str, float] | None) -> np.ndarray:
    """cryoDRGN's (n, 9) float32 CTF array (columns CTF_COLUMNS) for n images of box x box pixels
    of `pixel_size` Å, from a CTF in dcbench's convention (None: the flat CTF)."""
    ctf = FLAT_CTF if ctf is None else ctf
    underfocus_a = -float(ctf["defocus_um"]) * 1e4  # µm, negative = underfocus -> Å, positive = underfocus
    row = [box, pixel_size, underfocus_a, underfocus_a, 0.0, float(ctf["voltage_kv"]), float(ctf["cs_mm"]),
           float(ctf["amplitude_contrast"]), 0.0]
    return np.tile(np.asarray(row, dtype=np.float32), (n, 1))


def input_digests(x: np.ndarray) -> np.ndarray:
    """(N, 32) uint8: the SHA-256 of each input's float32 bytes, to recognise inputs later."""
    rows = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
    return np.array([np.frombuffer(hashlib.sha256(row.tobytes()).digest(), np.uint8) for row in rows],
                    dtype=np.uint8).reshape(len(x), 32)


@dataclass
class HydraInputs:
    particles: Path
    ctf: Path
    count: int
    box: int


def write_inputs(x: np.ndarray, folder: Path, pixel_size: float, ctf: dict[str, float] | None) -> HydraInputs:
    """Write `folder`/particles.mrcs and `folder`/ctf.pkl for the inputs x, in their order."""
    import mrcfile

    images = to_images(x)
    if images.shape[1] != images.shape[2] or images.shape[1] % 2:
        raise ValueError(f"Hydra needs square images of an even size, got {images.shape[1:]}")
    folder.mkdir(parents=True, exist_ok=True)
    particles, ctf_path = folder / "particles.mrcs", folder / "ctf.pkl"
    with mrcfile.new(particles, data=np.ascontiguousarray(images), overwrite=True) as mrc:
        mrc.set_image_stack()
        mrc.voxel_size = pixel_size
    with open(ctf_path, "wb") as handle:  # written by us, read by Hydra's own unpickler
        pickle.dump(ctf_table(len(images), images.shape[1], pixel_size, ctf), handle, protocol=4)
    return HydraInputs(particles, ctf_path, len(images), int(images.shape[1]))
