"""DualContrast's losses, pair construction, transforms and the method's life cycle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dcbench.api import RunContext, Split
from dcbench.errors import DcbenchError
from dcbench_plugins.common import geometry
from dcbench_plugins.dualcontrast import losses, networks, transforms
from dcbench_plugins.dualcontrast.method import DualContrast, DualContrastNoConC, DualContrastNoConZ


def make(cls=DualContrast, shape=(1, 28, 28), **overrides):
    config = cls.default_config("quick", shape)
    config.update(overrides)
    return cls(config, shape, "cpu", seed=0)


def test_kl_of_standard_normal_is_zero_and_matches_closed_form() -> None:
    zero = torch.zeros(4, 3)
    assert losses.kl_standard_normal(zero, zero).item() == pytest.approx(0.0)
    # mu = 1, sigma^2 = e: 0.5 * (1 + e - 1 - 1) per dimension
    value = losses.kl_standard_normal(torch.ones(2, 5), torch.ones(2, 5)).item()
    assert value == pytest.approx(10 * 0.5 * (math.e - 1))


def test_pair_losses_use_absolute_cosine() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[2.0, 0.0], [-3.0, 0.0], [0.0, 5.0]])  # parallel, antiparallel, orthogonal
    assert losses.abs_cosine(a, b).tolist() == pytest.approx([1.0, 1.0, 0.0])
    assert losses.negative_pair_loss(a, b).item() == pytest.approx(2 / 3)
    assert losses.positive_pair_loss(a, b).item() == pytest.approx(1 / 3)


def test_training_losses_sum_to_total_and_ablations_drop_their_terms() -> None:
    x = torch.rand(16, 1, 28, 28)
    terms = make().training_losses(x)
    assert set(terms) >= {"recon", "kl", "con_c", "con_z", "total"}
    parts = terms["recon"] + terms["kl"] + terms["con_c"] + terms["con_z"]
    assert terms["total"].item() == pytest.approx(parts.item(), rel=1e-6)
    assert terms["con_c"].item() > 0 and terms["con_z"].item() > 0
    assert make(DualContrastNoConC).training_losses(x)["con_c"].item() == 0.0
    assert make(DualContrastNoConZ).training_losses(x)["con_z"].item() == 0.0


@pytest.mark.parametrize("pairs, expect_pos, expect_neg", [("positive", 2, 0), ("negative", 0, 2), ("both", 2, 2)])
def test_positive_and_negative_only_switches(monkeypatch, pairs, expect_pos, expect_neg) -> None:
    calls = {"pos": 0, "neg": 0}
    real_pos, real_neg = losses.positive_pair_loss, losses.negative_pair_loss

    def pos(a, b):
        calls["pos"] += 1
        return real_pos(a, b)

    def neg(a, b):
        calls["neg"] += 1
        return real_neg(a, b)

    monkeypatch.setattr(losses, "positive_pair_loss", pos)
    monkeypatch.setattr(losses, "negative_pair_loss", neg)
    make(pairs=pairs).training_losses(torch.rand(8, 1, 28, 28))
    assert (calls["pos"], calls["neg"]) == (expect_pos, expect_neg)


def test_latent_positive_pair_decodes_one_eps_with_two_content_permutations() -> None:
    method = make()
    seen = []
    method.model.decoder.register_forward_hook(lambda mod, args, out: seen.append((args, torch.is_grad_enabled())))
    x = torch.rand(6, 1, 28, 28)
    method.training_losses(x)
    generated = [args for args, grad in seen if not grad]
    assert len(generated) == 1
    content, transformation = generated[0]
    assert torch.equal(transformation[:6], transformation[6:])  # the same eps for both images
    with torch.no_grad():
        _, _, mu_c, _ = method.model.encoder(x)
    # each half is a permutation of the batch's content codes
    for half in (content[:6], content[6:]):
        assert sorted(half[:, 0].tolist()) == pytest.approx(sorted(mu_c[:, 0].tolist()), abs=1e-5)


def test_rotation_by_90_degrees_matches_rot90() -> None:
    image = torch.zeros(1, 1, 9, 9)
    image[0, 0, 1:4, 2:7] = 1.0
    quarter = torch.tensor([math.pi / 2])
    rotated = geometry.warp(image, geometry.rotation_matrices_2d(quarter))
    expected = torch.rot90(image, k=1, dims=(2, 3))
    assert torch.allclose(rotated, expected, atol=1e-5) or torch.allclose(rotated, torch.rot90(image, -1, (2, 3)),
                                                                            atol=1e-5)


def test_rotations_are_per_sample_unless_asked_per_batch() -> None:
    x = torch.zeros(4, 1, 15, 15)
    x[:, :, 2:5, 3:12] = 1.0
    gen = torch.Generator().manual_seed(0)
    per_sample = transforms.rotate(x, gen, per_sample=True)
    per_batch = transforms.rotate(x, gen, per_sample=False)
    assert not torch.allclose(per_sample[0], per_sample[1])
    assert all(torch.allclose(per_batch[0], per_batch[i]) for i in range(4))


def test_3d_rotation_matrices_are_orthonormal() -> None:
    r = geometry.rotation_matrices_3d(torch.rand(5, 3) * 3)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(5), atol=1e-5)


@pytest.mark.parametrize("name", transforms.TRANSFORMS)
def test_every_transform_keeps_shape_and_range_on_colour_images(name) -> None:
    x = torch.rand(3, 3, 16, 16)
    out = transforms.get_transform(name)(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, x)


def test_colour_transforms_are_refused_on_grey_and_volume_inputs() -> None:
    assert "3-channel" in transforms.unsupported_reason("hue", (1, 28, 28))
    assert "2D images only" in transforms.unsupported_reason("blur", (1, 32, 32, 32))
    assert transforms.unsupported_reason("rotation", (1, 32, 32, 32)) is None
    with pytest.raises(DcbenchError, match="3-channel"):
        make(transform="saturation")


@pytest.mark.parametrize("shape, d", [((1, 28, 28), 10), ((3, 64, 64), 16)])
def test_networks_map_shapes(shape, d) -> None:
    encoder, decoder = networks.build_networks(shape, d)
    heads = encoder(torch.rand(2, *shape))
    assert len(heads) == 4 and all(h.shape == (2, d) for h in heads)
    out = decoder(torch.rand(2, d), torch.rand(2, d))
    assert out.shape == (2, *shape) and 0 <= out.min() and out.max() <= 1


def test_volume_network_maps_shapes() -> None:
    encoder, decoder = networks.build_networks((1, 32, 32, 32), 50)
    assert all(h.shape == (2, 50) for h in encoder(torch.rand(2, 1, 32, 32, 32)))
    assert decoder(torch.rand(2, 50), torch.rand(2, 50)).shape == (2, 1, 32, 32, 32)


def test_unsupported_shape_is_reported() -> None:
    assert "1x20x20" in DualContrast.supports((1, 20, 20))
    assert DualContrast.supports((3, 64, 64)) is None


def test_fit_encode_decode_save_load_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    train = Split(rng.random((37, 1, 28, 28), dtype=np.float32), rng.integers(0, 3, 37))
    method = make(epochs=2, batch_size=16)
    epochs = []
    method.fit(train, RunContext(on_epoch=lambda epoch, terms: epochs.append((epoch, terms))))
    assert [e for e, _ in epochs] == [0, 1]
    assert all(math.isfinite(v) for _, terms in epochs for v in terms.values())
    codes = method.encode(train.x[:5])
    assert codes.content.shape == (5, 10) and codes.transformation.shape == (5, 10)
    images = method.decode(codes.content, codes.transformation)
    assert images.shape == (5, 1, 28, 28)
    method.save(tmp_path / "state.pt")
    other = make(epochs=2, batch_size=16)
    other.load_state(tmp_path / "state.pt")
    assert np.allclose(other.encode(train.x[:5]).content, codes.content, atol=1e-6)


def test_paper_preset_uses_the_papers_hyperparameters() -> None:
    cfg = DualContrast.default_config("paper", (1, 28, 28))
    assert (cfg["latent_dim"], cfg["batch_size"], cfg["epochs"], cfg["lr"]) == (10, 100, 200, 1e-4)
    assert (cfg["lr_step_epochs"], cfg["lr_gamma"], cfg["transform"]) == (50, 0.1, "rotation")
    assert DualContrast.default_config("paper", (3, 64, 64))["latent_dim"] == 16
    assert DualContrast.default_config("paper", (1, 32, 32, 32))["latent_dim"] == 50
