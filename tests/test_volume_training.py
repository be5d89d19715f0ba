"""3D training that trains: at the quick preset DualContrast's content codes do not collapse to
one direction and its decoder does not collapse to the mean volume (issue 12).

A small set of simulated subtomograms (3 compositions, SNR 1 so that a few dozen steps suffice);
the checks are on the prepared (low-passed, binned) volumes the networks see.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from dcbench_plugins.datasets.subtomo_sim import SubtomoSim
from dcbench_plugins.dualcontrast.method import DualContrast

EPOCHS = 15  # 4 steps of 32 each on the 115 training particles: 60 steps


@pytest.fixture(scope="module")
def trained() -> tuple[DualContrast, torch.Tensor, np.ndarray]:
    bundle = SubtomoSim(per_structure=8, snr=1.0).load(seed=0)
    x, composition = bundle.train.x, bundle.train.content
    shape = tuple(x.shape[1:])
    config = DualContrast.default_config("quick", shape)
    method = DualContrast(config, shape, "cpu", seed=0)
    data = method.training_tensor(x)
    optimizer = method.make_optimizer()
    for _ in range(EPOCHS):
        method.train_epoch(data, optimizer)
    return method, data, composition


def _mean_abs_cos_between_compositions(codes: torch.Tensor, composition: np.ndarray) -> float:
    unit = F.normalize(codes, dim=1)
    cos = (unit @ unit.T).abs()
    different = torch.as_tensor(composition[:, None] != composition[None, :])
    return float(cos[different].mean())


def test_quick_preset_prepares_binned_low_passed_volumes_for_small_networks(trained) -> None:
    method, data, _ = trained
    assert tuple(data.shape[1:]) == (1, 16, 16, 16)
    assert method.config["networks"] == "small" and method.config["bin"] == 2
    paper = DualContrast.default_config("paper", (1, 32, 32, 32))
    assert paper["networks"] == "paper" and paper["bin"] == 1 and paper["lowpass_sigma"] == 0


def test_content_codes_of_different_compositions_do_not_collapse_to_one_direction(trained) -> None:
    method, data, composition = trained
    method.model.eval()
    with torch.no_grad():
        content = method.model.encoder(data)[2]
    # A collapsed code is one shared vector plus a little: |cos| ~ 1 between any two particles.
    assert _mean_abs_cos_between_compositions(content, composition) < 0.55


def test_reconstructions_differ_between_compositions_and_beat_the_mean_volume(trained) -> None:
    method, data, composition = trained
    method.model.eval()
    with torch.no_grad():
        mu_z, _, mu_c, _ = method.model.encoder(data)
        recon = method.model.decoder(mu_c, mu_z)
    mean_volume = data.mean(0, keepdim=True)
    recon_mse = float(((recon - data) ** 2).mean())
    mean_mse = float(((mean_volume - data) ** 2).mean())
    assert recon_mse < 0.95 * mean_mse
    # The decoder's outputs differ with the composition: per-composition mean reconstructions
    # are further apart than a collapsed decoder's (which are all one volume).
    means = torch.stack([recon[torch.as_tensor(composition == k)].mean(0) for k in np.unique(composition)])
    spread = float(((means[:, None] - means[None]) ** 2).mean())
    assert spread > 0.05 * float(((data - mean_volume) ** 2).mean())
    # and the public decode returns volumes on the input grid
    decoded = method.decode(mu_c[:2].numpy(), mu_z[:2].numpy())
    assert decoded.shape == (2, 1, 32, 32, 32)
