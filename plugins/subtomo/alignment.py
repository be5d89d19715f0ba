"""Rotational and translational alignment of volumes, and reference-free subtomogram averaging.

Conventions follow `rotations`: volumes [z, y, x], rotations act on (x, y, z) about the box centre,
shifts in voxels along x, y, z. A pose (R, t) of a particle relative to a reference means
particle ~ rotate_volumes(reference, R, t). Scores are normalised cross-correlations computed in
Fourier space (`fourier_sampling`), over the frequencies 1 <= |k| <= kmax (cycles per box).

The search, per particle:
1. centre: an FFT cross-correlation over all shifts (up to max_shift) with the reference's
   spherical average, which does not depend on the rotation;
2. exhaustive: every rotation of rotation_grid(step) (552 at 30 degrees) at low resolution
   (COARSE_KMAX) with shifts 0 and +-CENTRING_WINDOW around the centre; the best CANDIDATES
   orientations at least 1.5 steps apart go on, because the pseudo-symmetric mates of a
   structure (a 180 degree turn of a two-lobed complex) score almost alike at low resolution;
3. local: REFINE_ROUNDS rounds of local_grid (27 rotations, rotation vectors in {0, -s, s}^3)
   times a 3x3x3 window of shifts around the best pose so far, s shrinking 3x a round so that each
   grid tiles the previous one's cell (15, 5, 1.7 degrees after a 30 degree grid), and the
   resolution rising to FINE_KMAX. The first CANDIDATE_ROUNDS rounds refine
   every candidate; the best one goes on, so the choice between mates is made at higher resolution.

Nothing here compensates a missing wedge: particles with one are aligned and averaged as if fully
sampled, so a wedge biases the poses and leaves an anisotropic average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dcbench_plugins.subtomo import rotations
from dcbench_plugins.subtomo.fourier_sampling import Frequencies, RotatableSpectrum, ncc

COARSE_KMAX = 5  # Fourier radius (cycles per box) of the exhaustive search: 32^3 -> 64 Å at 1 nm voxels
FINE_KMAX = 9  # Fourier radius of the last local round and of the references: 32^3 -> 36 Å
REFINE_ROUNDS = 3  # local rounds; the angular step goes step/2, step/6, step/18 (30 degrees -> 1.7)
CANDIDATES = 4  # distinct orientations kept from the exhaustive search
CANDIDATE_ROUNDS = 2  # local rounds that refine every candidate before the best one goes on
CENTRING_WINDOW = 1.5  # voxels: the exhaustive search tries shifts of 0 and +-this around the centre
BOOTSTRAP_PARTICLES = 10  # reference_free_average's first reference comes from this many particles
BOOTSTRAP_ROUNDS = 2
_CHUNK = 32  # particles per batch, bounding memory at chunk x 27 x grid size floats


@dataclass
class Poses:
    """Poses of N particles relative to a reference: particle ~ rotate_volumes(reference, R, t)."""

    rotations: np.ndarray  # (N, 3, 3)
    shifts: np.ndarray  # (N, 3) voxels along x, y, z
    scores: np.ndarray  # (N,) normalised cross-correlation at the last stage's resolution


def rotation_grid(step_degrees: float = 30.0) -> np.ndarray:
    """A deterministic, near-uniform grid of rotations covering SO(3), neighbours about
    `step_degrees` apart (a Hopf fibration: directions on a Fibonacci sphere about step apart,
    times in-plane turns every step). 30 degrees gives 552 rotations and 20 degrees 1,854; every
    rotation lies within 0.8 step of one of them."""
    step = math.radians(step_degrees)
    n_directions = max(2, round(4 * math.pi / step**2))
    n_inplane = max(1, math.ceil(2 * math.pi / step))
    i = np.arange(n_directions) + 0.5
    theta = np.arccos(1 - 2 * i / n_directions)  # polar angles of a Fibonacci sphere
    phi = math.pi * (1 + math.sqrt(5)) * i
    psi = 2 * math.pi * np.arange(n_inplane) / n_inplane
    # R = Rz(phi) Ry(theta) Rz(psi): the z axis goes to the direction (theta, phi), then psi about it
    return np.einsum("aij,ajk,bkl->abil", _rz(phi), _ry(theta), _rz(psi)).reshape(-1, 3, 3)


def local_grid(step_degrees: float) -> np.ndarray:
    """The 27 rotations with rotation vector in {0, -step, step}^3 (degrees), the identity first."""
    values = np.radians([0.0, -step_degrees, step_degrees])
    vectors = np.stack(np.meshgrid(values, values, values, indexing="ij"), -1).reshape(-1, 3)
    angles = np.linalg.norm(vectors, axis=1)
    axes = vectors / np.where(angles > 0, angles, 1.0)[:, None]
    quaternions = np.concatenate([np.cos(angles / 2)[:, None], np.sin(angles / 2)[:, None] * axes], 1)
    return rotations.quaternions_to_matrices(quaternions)


def find_poses(particles: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor,
               step_degrees: float = 30.0, max_shift: float = 6.0, candidates: int = CANDIDATES,
               refine_rounds: int = REFINE_ROUNDS, fine_kmax: float = FINE_KMAX) -> Poses:
    """The pose of each of (N, D, H, W) particles relative to one (D, H, W) reference (see the
    module's docstring for the search). Shifts are searched up to about max_shift voxels along
    each axis."""
    parts = torch.as_tensor(np.asarray(particles, dtype=np.float32))
    ref = torch.as_tensor(np.asarray(reference, dtype=np.float32))
    if parts.dim() != 4 or ref.shape != parts.shape[1:] or len(set(ref.shape)) != 1:
        raise ValueError(f"need (N, D, H, W) particles and one cubic reference of their shape, got "
                         f"{tuple(parts.shape)} and {tuple(ref.shape)}")
    coarse_kmax = min(COARSE_KMAX, fine_kmax)
    with torch.no_grad():
        transforms = torch.fft.rfftn(parts, dim=(1, 2, 3))
        centres = _centre(transforms, ref, max_shift)
        spectrum = RotatableSpectrum(ref, fine_kmax)
        rots, shifts, scores = _exhaustive(transforms, spectrum, centres, step_degrees, coarse_kmax, max_shift,
                                           candidates)
        for r in range(refine_rounds):
            kmax = coarse_kmax + (fine_kmax - coarse_kmax) * (r + 1) / refine_rounds
            rots, shifts, scores = _refine(transforms, spectrum, rots, shifts, step_degrees / 2 / 3**r,
                                           CENTRING_WINDOW / 2 / 3**r, kmax, keep_candidates=r + 1 < CANDIDATE_ROUNDS)
        best = scores.argmax(1)
        rows = torch.arange(len(best))
        return Poses(rots[rows, best].numpy(), shifts[rows, best].numpy(), scores[rows, best].numpy())


def align(volume: np.ndarray, reference: np.ndarray, **search: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """(R, t, score) with reference ~ rotate_volumes(volume, R, t): the rotation and shift that
    best map `volume` onto `reference` (keyword arguments as find_poses)."""
    poses = find_poses(np.asarray(reference)[None], volume, **search)
    return poses.rotations[0], poses.shifts[0], float(poses.scores[0])


def to_reference_frame(particles: np.ndarray | torch.Tensor, poses: Poses) -> torch.Tensor:
    """Undo each particle's pose: rotate_volumes with the inverse (R^T, -R^T t)."""
    inverse = np.transpose(poses.rotations, (0, 2, 1))
    shifts = -np.einsum("nij,nj->ni", inverse, poses.shifts)
    return rotations.rotate_volumes(torch.as_tensor(np.asarray(particles, dtype=np.float32)), inverse, shifts)


def low_pass(volume: np.ndarray | torch.Tensor, kmax: float, width: float = 2.0) -> torch.Tensor:
    """Volumes (..., D, H, W) with frequencies above kmax (cycles per box) removed, through a
    raised-cosine edge `width` wide."""
    v = torch.as_tensor(np.asarray(volume, dtype=np.float32))
    side = v.shape[-1]
    full, half = np.fft.fftfreq(side) * side, np.arange(side // 2 + 1)
    radius = np.sqrt(full[:, None, None] ** 2 + full[None, :, None] ** 2 + half**2)
    radius = torch.as_tensor(radius, dtype=torch.float32)
    weights = 0.5 * (1 + torch.cos(math.pi * ((radius - (kmax - width / 2)) / width).clamp(0, 1)))
    dims = (-3, -2, -1)
    return torch.fft.irfftn(torch.fft.rfftn(v, dim=dims) * weights, s=v.shape[-3:], dim=dims)


def reference_free_average(particles: np.ndarray, iterations: int = 3, seed: int = 0, step_degrees: float = 30.0,
                           max_shift: float = 6.0) -> tuple[np.ndarray, Poses]:
    """Average (N, D, H, W) particles of one structure in unknown poses, using no reference.

    The first reference comes from the particles alone: BOOTSTRAP_PARTICLES drawn with `seed`, the
    first of them the reference for BOOTSTRAP_ROUNDS rounds of aligning and averaging the drawn
    ones, all low-passed to FINE_KMAX (not lower: a CTF leaves little at the lowest frequencies).
    The unaligned mean of all particles would be a spherical blur that gives the rotational search
    nothing to hold on to; one noisy particle alone would bias the first full round more. Then
    `iterations` times: find every particle's pose relative to the current reference, average the
    particles brought into the reference's frame, centre the average (so it cannot drift off the
    box) and low-pass it to FINE_KMAX as the next reference. Returns the last average (centred,
    not low-passed) and the poses behind it. No missing-wedge compensation."""
    parts = np.asarray(particles, dtype=np.float32)
    if parts.ndim != 4 or len(parts) == 0:
        raise ValueError(f"need (N, D, H, W) particles, got shape {parts.shape}")
    if iterations < 1:
        raise ValueError(f"reference_free_average needs at least one iteration, got {iterations}")
    rng = np.random.default_rng(seed)
    subset = parts[rng.choice(len(parts), min(BOOTSTRAP_PARTICLES, len(parts)), replace=False)]
    reference = _centred(low_pass(subset[0], FINE_KMAX))
    for _ in range(BOOTSTRAP_ROUNDS if len(subset) > 1 else 0):
        poses = find_poses(subset, reference, step_degrees, max_shift)
        reference = _centred(low_pass(to_reference_frame(subset, poses).mean(0), FINE_KMAX))
    for _ in range(iterations):
        poses = find_poses(parts, reference, step_degrees, max_shift)
        average = _centred(to_reference_frame(parts, poses).mean(0))
        reference = low_pass(average, FINE_KMAX)
    return average.numpy(), poses


# --- the stages of find_poses ------------------------------------------------------------------


def _centre(transforms: torch.Tensor, reference: torch.Tensor, max_shift: float) -> torch.Tensor:
    """(N, 3) shifts (x, y, z) that best match each particle (given by its rfftn) to the
    reference's spherical average, both low-passed to COARSE_KMAX: the peak of their FFT
    cross-correlation within max_shift, to sub-voxel by a parabola through it and its neighbours."""
    side = reference.shape[0]
    template = torch.fft.rfftn(low_pass(_spherical_average(reference), COARSE_KMAX)).conj()
    shifts = []
    for start in range(0, len(transforms), _CHUNK):
        cc = torch.fft.irfftn(transforms[start:start + _CHUNK] * template, s=(side,) * 3, dim=(1, 2, 3))
        shifts.append(_peak(cc, max_shift))
    return torch.cat(shifts)


def _exhaustive(transforms: torch.Tensor, spectrum: RotatableSpectrum, centres: torch.Tensor, step_degrees: float,
                kmax: float, max_shift: float, candidates: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every grid rotation with a 3x3x3 window of shifts around each particle's centre; the best
    `candidates` orientations at least 1.5 grid steps apart: rotations (N, C, 3, 3), shifts (N, C, 3),
    scores (N, C)."""
    freqs = Frequencies(transforms.shape[1], kmax)
    grid = rotation_grid(step_degrees)
    grid_t = torch.as_tensor(grid, dtype=torch.float32)
    quaternions = torch.as_tensor(rotations.matrices_to_quaternions(grid), dtype=torch.float32)
    near = (quaternions @ quaternions.T).abs() > math.cos(math.radians(1.5 * step_degrees) / 2)  # angle < 1.5 step
    rotated = spectrum.sample(grid_t, freqs.k)
    window = _window(CENTRING_WINDOW)
    out_r, out_t, out_s = [], [], []
    for start in range(0, len(transforms), _CHUNK):
        part = slice(start, start + _CHUNK)
        shifts = (centres[part, None, :] + window).clamp(-max_shift, max_shift)  # (B, 27, 3)
        moved = freqs.spectra(transforms[part])[:, None, :] * freqs.shift_ramps(shifts)
        scores, shift_index = ncc(moved, rotated).max(1)  # the best shift for each rotation: (B, G)
        rows = torch.arange(len(scores))
        picked = []
        for _ in range(min(candidates, len(grid))):
            g = scores.argmax(1)
            picked.append((grid_t[g], shifts[rows, shift_index[rows, g]], scores[rows, g]))
            scores = scores.masked_fill(near[g], -torch.inf)
        for out, values in zip((out_r, out_t, out_s), zip(*picked)):
            out.append(torch.stack(values, 1))
    return torch.cat(out_r), torch.cat(out_t), torch.cat(out_s)


def _refine(transforms: torch.Tensor, spectrum: RotatableSpectrum, rots: torch.Tensor, shifts: torch.Tensor,
            step_degrees: float, shift_step: float, kmax: float, keep_candidates: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One local round around each particle's C candidate poses (N, C, 3, 3), (N, C, 3):
    local_grid(step) x a 3x3x3 window of shifts, 729 poses each. Returns the best pose of each
    candidate, or (keep_candidates False) the best one only: rotations (N, C or 1, 3, 3), shifts
    (N, C or 1, 3), scores (N, C or 1)."""
    freqs = Frequencies(transforms.shape[1], kmax)
    local = torch.as_tensor(local_grid(step_degrees), dtype=torch.float32)
    window = _window(shift_step)
    window_ramps = freqs.shift_ramps(window)
    out_r, out_t, out_s = [], [], []
    for start in range(0, len(transforms), _CHUNK):
        part = slice(start, start + _CHUNK)
        r, t = rots[part], shifts[part]
        posed = local @ r[:, :, None]  # (B, C, 27, 3, 3): turned a little in the particle's frame
        rotated = spectrum.sample(posed.flatten(0, 2), freqs.k).reshape(*posed.shape[:3], -1)
        moved = (freqs.spectra(transforms[part])[:, None, :] * freqs.shift_ramps(t))[:, :, None, :] * window_ramps
        best, flat = ncc(moved, rotated).flatten(2).max(2)  # over 27 shifts x 27 rotations: (B, C)
        rows, cols = torch.arange(len(r))[:, None], torch.arange(r.shape[1])[None, :]
        r, t = posed[rows, cols, flat % 27], t + window[flat // 27]
        if not keep_candidates:
            c = best.argmax(1, keepdim=True)
            r, t, best = r[rows, c], t[rows, c], best[rows, c]
        out_r.append(r)
        out_t.append(t)
        out_s.append(best)
    return torch.cat(out_r), torch.cat(out_t), torch.cat(out_s)


def _window(step: float) -> torch.Tensor:
    """The 27 shifts {0, -step, step}^3, zero first."""
    values = torch.tensor([0.0, -step, step])
    return torch.stack(torch.meshgrid(values, values, values, indexing="ij"), -1).reshape(-1, 3)


def _peak(cc: torch.Tensor, max_shift: float) -> torch.Tensor:
    """Sub-voxel (x, y, z) positions of the maxima of circular cross-correlations (B, D, H, W)
    over shifts up to max_shift along each axis."""
    side = cc.shape[-1]
    offsets = torch.as_tensor(np.fft.fftfreq(side) * side, dtype=torch.float32)  # index -> signed shift
    allowed = torch.nonzero(offsets.abs() <= max_shift).flatten()
    inside = cc[:, allowed][:, :, allowed][:, :, :, allowed]
    index = allowed[torch.stack(torch.unravel_index(inside.flatten(1).argmax(1), inside.shape[1:]), 1)]
    rows = torch.arange(len(cc))
    peak = cc[rows, index[:, 0], index[:, 1], index[:, 2]]
    position = []
    for axis in range(3):  # index order z, y, x
        step = torch.zeros(3, dtype=torch.long)
        step[axis] = 1
        before, after = (index - step) % side, (index + step) % side
        lo = cc[rows, before[:, 0], before[:, 1], before[:, 2]]
        hi = cc[rows, after[:, 0], after[:, 1], after[:, 2]]
        curvature = lo - 2 * peak + hi
        delta = torch.where(curvature < 0, 0.5 * (lo - hi) / curvature.clamp_max(-1e-12), 0.0)
        position.append(offsets[index[:, axis]] + delta.clamp(-0.5, 0.5))
    return torch.stack(position[::-1], 1).clamp(-max_shift, max_shift)


# --- references ---------------------------------------------------------------------------------


def _spherical_average(volume: torch.Tensor) -> torch.Tensor:
    """The volume averaged over rotations about the box centre (shells one voxel thick)."""
    side = volume.shape[-1]
    axis = torch.arange(side, dtype=torch.float32) - (side - 1) / 2
    radius = (axis.view(-1, 1, 1) ** 2 + axis.view(1, -1, 1) ** 2 + axis.view(1, 1, -1) ** 2).sqrt()
    shell = radius.round().long().flatten()
    sums = torch.zeros(int(shell.max()) + 1).index_add_(0, shell, volume.flatten().float())
    counts = torch.zeros_like(sums).index_add_(0, shell, torch.ones(len(shell)))
    return (sums / counts.clamp_min(1))[shell].reshape(volume.shape)


def _centred(volume: torch.Tensor) -> torch.Tensor:
    """The volume shifted so that the centre of mass of its local signal energy (the squared
    low-passed volume, blurred, background removed) sits at the box centre. Energy rather than
    density, because CTF-filtered or z-scored volumes have no sign to weigh by."""
    side = volume.shape[-1]
    energy = low_pass(low_pass(volume, COARSE_KMAX).square(), COARSE_KMAX / 2)
    energy = (energy - energy.median()).clamp_min(0)
    total = energy.sum()
    if float(total) <= 0:
        return volume
    axis = torch.arange(side, dtype=torch.float32) - (side - 1) / 2
    centre = [(energy.sum(dims) * axis).sum() / total for dims in ((0, 1), (0, 2), (1, 2))]  # x, y, z
    return rotations.rotate_volumes(volume[None], torch.eye(3), -torch.stack(centre)[None])[0]


def _rz(angles: np.ndarray) -> np.ndarray:
    c, s = np.cos(angles), np.sin(angles)
    zero, one = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, -s, zero], -1), np.stack([s, c, zero], -1), np.stack([zero, zero, one], -1)], -2)


def _ry(angles: np.ndarray) -> np.ndarray:
    c, s = np.cos(angles), np.sin(angles)
    zero, one = np.zeros_like(c), np.ones_like(c)
    return np.stack([np.stack([c, zero, s], -1), np.stack([zero, one, zero], -1), np.stack([-s, zero, c], -1)], -2)
