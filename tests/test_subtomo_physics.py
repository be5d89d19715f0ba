"""The simulator's physics: densities land where atoms are, the CTF and SNR match their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dcbench_plugins.subtomo.physics import add_noise, apply_ctf, ctf, density_map, electron_wavelength


def test_density_of_a_tiny_model_lands_where_its_atoms_are() -> None:
    # two atoms 110 Å apart along x; the box centre (voxel 15.5 of 32) is their centre of mass,
    # so they sit 5.5 voxels either side of it: exactly on voxels 10 and 21, y = z = 15.5
    coords = np.array([[-55.0, 5.0, -5.0], [55.0, 5.0, -5.0]])
    volume = density_map(coords, box=32, voxel=10.0, resolution=20.0)
    assert volume.shape == (32, 32, 32)
    peaks = np.argwhere(volume > 0.999 * volume.max())
    assert sorted(p[2] for p in peaks) == [10] * 4 + [21] * 4  # x is the last index; y and z tie at 15/16
    assert {p[1] for p in peaks} == {15, 16} and {p[0] for p in peaks} == {15, 16}
    # normalised Gaussians: where they are sampled finely enough (sigma >= voxel), the map
    # integrates to the number of atoms
    assert density_map(coords, resolution=60.0).sum() * 10.0**3 == pytest.approx(2.0, rel=1e-3)


def test_density_is_centred_on_the_weighted_centre_of_mass() -> None:
    coords = np.array([[0.0, 0.0, 0.0], [90.0, 0.0, 0.0]])
    heavy_first = density_map(coords, weights=np.array([8.0, 1.0]), resolution=15.0)
    (z, y, x) = np.unravel_index(heavy_first.argmax(), heavy_first.shape)
    assert x < 15.5 < 16 and abs(y - 15.5) < 1 and abs(z - 15.5) < 1  # the heavy atom sits left of centre


def test_ctf_matches_its_definition() -> None:
    assert electron_wavelength(300) == pytest.approx(0.01969, abs=1e-5)
    assert ctf(np.array(0.0), amplitude_contrast=0.1) == pytest.approx(-0.1)  # only amplitude contrast at k = 0
    # without Cs and amplitude contrast, the first zero after k = 0 is at k = 1 / sqrt(lambda dz)
    first_zero = 1 / math.sqrt(electron_wavelength(300) * 5e4)
    assert ctf(np.array(first_zero), cs_mm=0.0, amplitude_contrast=0.0) == pytest.approx(0.0, abs=1e-9)
    k = np.linspace(0, 0.05, 200)
    assert np.all(np.abs(ctf(k)) <= 1.0 + 1e-12)


def test_apply_ctf_filters_the_volume_and_keeps_its_shape() -> None:
    volume = density_map(np.array([[0.0, 0.0, 0.0]]), resolution=20.0)
    filtered = apply_ctf(volume, voxel=10.0, defocus_um=-5.0, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1)
    assert filtered.shape == volume.shape and np.isrealobj(filtered)
    # the k = 0 term (the mean) is multiplied by CTF(0) = -0.1
    assert filtered.mean() == pytest.approx(-0.1 * volume.mean(), rel=1e-6)


def test_noise_meets_the_target_snr() -> None:
    rng = np.random.default_rng(0)
    volume = density_map(np.random.default_rng(1).normal(scale=60, size=(50, 3)))
    noisy = add_noise(volume, snr=0.1, rng=rng)
    measured = volume.var() / (noisy - volume).var()
    assert measured == pytest.approx(0.1, rel=0.05)
    with pytest.raises(ValueError, match="SNR must be positive"):
        add_noise(volume, snr=0.0, rng=rng)


def test_volume_montage_lays_out_one_row_per_volume_and_one_column_per_slice(tmp_path) -> None:
    from PIL import Image

    from dcbench.figures import volume_montage

    volumes = np.stack([density_map(np.array([[0.0, 0.0, 0.0]]), box=16), np.zeros((16, 16, 16))])
    target = volume_montage(volumes[:, None], tmp_path / "montage.png", step=2)
    image = np.asarray(Image.open(target))
    pad, scale = 2, 2
    assert image.shape[:2] == ((2 * (16 + pad) + pad) * scale, (8 * (16 + pad) + pad) * scale)
    with pytest.raises(ValueError, match="need"):
        volume_montage(np.zeros((2, 16, 16)), tmp_path / "bad.png")
