"""The 3D methods' shared quick budget for volumes, and VolumeInput (low-pass, binning)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dcbench.api import RunContext, Split
from dcbench.errors import DcbenchError
from dcbench.volume_input import VolumeInput, gaussian_lowpass
from dcbench_plugins.harmony.method import Harmony
from dcbench_plugins.simclr.method import SimCLRDiscriminative
from dcbench_plugins.spatialvae.method import SpatialVAE

VOLUME = (1, 32, 32, 32)
METHODS = [SpatialVAE, Harmony, SimCLRDiscriminative]


@pytest.mark.parametrize("cls", METHODS, ids=lambda cls: cls.name)
def test_quick_preset_shares_the_volume_budget_and_paper_sees_raw_volumes(cls) -> None:
    quick, paper = cls.default_config("quick", VOLUME), cls.default_config("paper", VOLUME)
    assert (quick["bin"], quick["lowpass_sigma"], quick["batch_size"], quick["epochs"], quick["lr"]) == (
        2, 1.5, 32, 70, 1e-3)
    assert quick.get("lr_step_epochs", 50) == 50
    assert (paper["bin"], paper["lowpass_sigma"]) == (1, 0.0)
    image = cls.default_config("quick", (1, 28, 28))
    assert "bin" not in image and "lowpass_sigma" not in image


@pytest.mark.parametrize("cls", METHODS, ids=lambda cls: cls.name)
def test_quick_volume_fit_encode_decode_on_32_cubed(cls) -> None:
    config = cls.default_config("quick", VOLUME)
    config.update(epochs=1, batch_size=4)
    method = cls(config, VOLUME, "cpu", seed=0)
    rng = np.random.default_rng(0)
    train = Split(rng.standard_normal((6, *VOLUME)).astype(np.float32), rng.integers(0, 2, 6))
    steps: list[tuple[int, int]] = []

    class Progress:
        def epoch_started(self, epoch: int) -> None:
            pass

        def step_done(self, step: int, steps_per_epoch: int) -> None:
            steps.append((step, steps_per_epoch))

    epochs: list[dict[str, float]] = []
    method.fit(train, RunContext(on_epoch=lambda epoch, terms: epochs.append(terms), step_progress=Progress()))
    assert len(epochs) == 1 and all(math.isfinite(v) for v in epochs[0].values())
    assert steps == [(0, 2), (1, 2)]  # every optimizer step is reported
    codes = method.encode(train.x[:3])
    assert len(codes.content) == 3 and len(codes.transformation) == 3
    assert np.isfinite(codes.content).all() and np.isfinite(codes.transformation).all()
    if cls.generative:
        volumes = method.decode(codes.content, codes.transformation)
        assert volumes.shape == (3, *VOLUME) and np.isfinite(volumes).all()


def test_volume_input_refuses_bad_settings() -> None:
    with pytest.raises(DcbenchError, match="bin 3"):
        VolumeInput.from_config({"bin": 3}, VOLUME)
    with pytest.raises(DcbenchError, match="lowpass_sigma"):
        VolumeInput.from_config({"lowpass_sigma": -1.0}, VOLUME)


def test_volume_input_prepares_16_cubed_and_restores_32_cubed() -> None:
    volume_input = VolumeInput.from_config({"lowpass_sigma": 1.5, "bin": 2}, VOLUME)
    prepared = volume_input.prepare(torch.randn(2, *VOLUME))
    assert prepared.shape == (2, 1, 16, 16, 16)
    assert volume_input.network_shape(VOLUME) == (1, 16, 16, 16)
    assert volume_input.restore(prepared).shape == (2, *VOLUME)


def test_gaussian_lowpass_keeps_a_constant_volume_constant() -> None:
    x = torch.full((1, *VOLUME), 2.5)
    assert torch.allclose(gaussian_lowpass(x, 1.5), x, atol=1e-5)  # replicate padding: no dark edges


def test_harmony_shifts_are_in_input_voxels_and_binned_sides_are_checked() -> None:
    method = Harmony(Harmony.default_config("quick", VOLUME), VOLUME, "cpu", seed=0)
    x = np.random.default_rng(0).standard_normal((3, *VOLUME)).astype(np.float32)
    with torch.no_grad():
        phi, _, _ = method.model.encode(method.volume_input.prepare(torch.from_numpy(x)))
    codes = method.encode(x)
    assert np.allclose(codes.transformation[:, :3], phi[:, :3].numpy(), atol=1e-5)
    assert np.allclose(codes.transformation[:, 3:], 2 * phi[:, 3:].numpy(), atol=1e-5)  # binned voxels are 2 wide
    with pytest.raises(DcbenchError, match="after bin 2"):
        Harmony(Harmony.default_config("quick", (1, 8, 8, 8)), (1, 8, 8, 8), "cpu", seed=0)
