"""FSC and AUC-FSC on volumes where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from dcbench_plugins.metrics.fourier_shell import auc_fsc, fsc_curve


def smooth_volume(size: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    volume = np.zeros((size, size, size))
    for _ in range(5):  # a few Gaussian blobs
        centre = rng.uniform(4, size - 4, 3)
        grid = np.indices(volume.shape).T - centre
        volume += np.exp(-(grid**2).sum(-1).T / 4.0)
    return volume


def test_fsc_of_a_map_with_itself_is_one_at_every_shell() -> None:
    volume = smooth_volume()
    frequencies, fsc = fsc_curve(volume, volume)
    assert frequencies[0] == 0 and frequencies[-1] == pytest.approx(0.5) and len(fsc) == 9
    assert np.allclose(fsc, 1.0)
    assert auc_fsc(volume, volume) == pytest.approx(0.5)


def test_fsc_falls_with_noise_and_more_noise_lowers_auc() -> None:
    volume = smooth_volume()
    rng = np.random.default_rng(1)
    noisy = [volume + level * volume.std() * rng.normal(size=volume.shape) for level in (0.5, 2.0)]
    _, fsc = fsc_curve(volume, noisy[0])
    assert fsc[1] > 0.9 and fsc[-1] < 0.5  # low frequencies survive, high ones drown
    assert 0.5 > auc_fsc(volume, noisy[0]) > auc_fsc(volume, noisy[1]) > 0


def test_fsc_is_unchanged_by_scaling_and_refuses_mismatched_shapes() -> None:
    volume = smooth_volume()
    assert np.allclose(fsc_curve(volume, 3.0 * volume)[1], 1.0)
    with pytest.raises(ValueError, match="cubic volumes of one shape"):
        fsc_curve(volume, volume[:8])
