"""SimCLR baselines and the two-latent VAE: objectives, shapes and what they leave out."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dcbench.api import RunContext, Split
from dcbench_plugins.dualcontrast.method import TwoLatentVAE
from dcbench_plugins.simclr.method import SimCLRDiscriminative, SimCLRGenerative, nt_xent


def make(cls, shape=(1, 28, 28), **overrides):
    config = cls.default_config("quick", shape)
    config.update(overrides)
    return cls(config, shape, "cpu", seed=0)


def test_nt_xent_matches_its_definition_on_a_small_case() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    t = 0.5
    # code a0: candidates a1 (cos 0), b0 (cos 1, its partner), b1 (cos 0)
    # code a1: candidates a0 (0), b0 (0), b1 (-1, its partner)
    loss_a0 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
    loss_a1 = -math.log(math.exp(-1 / t) / (math.exp(-1 / t) + 2))
    expected = (2 * loss_a0 + 2 * loss_a1) / 4  # b0 and b1 mirror a0 and a1
    assert nt_xent(a, b, t).item() == pytest.approx(expected, rel=1e-6)
    # aligned pairs that are far from the others cost less than mismatched ones
    codes = torch.eye(4)
    assert nt_xent(codes, codes, 0.1).item() < nt_xent(codes, codes.roll(1, 0), 0.1).item()


def test_vae2_has_no_contrastive_terms() -> None:
    terms = make(TwoLatentVAE).training_losses(torch.rand(8, 1, 28, 28))
    assert terms["con_c"].item() == 0.0 and terms["con_z"].item() == 0.0
    assert terms["total"].item() == pytest.approx((terms["recon"] + terms["kl"]).item(), rel=1e-6)


def test_simclr_gen_is_vae2_plus_nt_xent_on_content() -> None:
    method = make(SimCLRGenerative)
    terms = method.training_losses(torch.rand(8, 1, 28, 28))
    assert terms["con_c"].item() == 0.0 and terms["con_z"].item() == 0.0 and terms["nt_xent"].item() > 0
    total = terms["recon"] + terms["kl"] + terms["nt_xent"]
    assert terms["total"].item() == pytest.approx(total.item(), rel=1e-6)
    assert method.generative


def test_simclr_disc_trains_an_encoder_only_and_cannot_decode() -> None:
    method = make(SimCLRDiscriminative, epochs=1, batch_size=8)
    assert not hasattr(method.model, "decoder") and not method.generative
    rng = np.random.default_rng(0)
    train = Split(rng.random((20, 1, 28, 28)).astype(np.float32), rng.integers(0, 3, 20))
    before = [p.detach().clone() for p in method.model.parameters()]
    history = []
    method.fit(train, RunContext(on_epoch=lambda epoch, terms: history.append(terms)))
    assert len(history) == 1 and set(history[0]) == {"nt_xent", "total"}
    assert any(not torch.equal(a, b) for a, b in zip(before, method.model.parameters()))
    codes = method.encode(train.x[:5])
    assert codes.content.shape == (5, 10) and codes.transformation.shape == (5, 10)
    with pytest.raises(TypeError, match="not generative"):
        method.decode(codes.content, codes.transformation)


def test_simclr_refuses_shapes_without_an_architecture() -> None:
    assert SimCLRDiscriminative.supports((1, 28, 28)) is None
    assert "28x28" in SimCLRDiscriminative.supports((2, 10, 10))
