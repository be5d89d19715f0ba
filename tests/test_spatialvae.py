"""SpatialVAE: codes and decoding on images and volumes, the rotation equivariance of its
coordinate generator, the fused generator against its plain form, the ELBO terms, state files,
shapes it refuses and determinism per seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dcbench.api import RunContext, Split
from dcbench.config import RunSpec
from dcbench.errors import DcbenchError
from dcbench.registry import build_registry
from dcbench.runner import plan
from dcbench_plugins.spatialvae import networks
from dcbench_plugins.spatialvae.method import SpatialVAE, gaussian_kl


def make(shape=(1, 28, 28), seed=0, **overrides) -> SpatialVAE:
    config = SpatialVAE.default_config("quick", shape)
    config.update(overrides)
    return SpatialVAE(config, shape, "cpu", seed=seed)


def blobs(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def train(method: SpatialVAE, x: np.ndarray, epochs: int = 1, batch_size: int = 8) -> list[dict[str, float]]:
    method.config.update(epochs=epochs, batch_size=batch_size)
    seen: list[dict[str, float]] = []
    method.fit(Split(x=x, content=np.zeros(len(x), dtype=int)),
               RunContext(on_epoch=lambda epoch, terms: seen.append(terms)))
    return seen


@pytest.mark.parametrize("shape, n_transform", [((1, 28, 28), 3), ((3, 64, 64), 3), ((1, 16, 16, 16), 6)])
def test_trains_and_gives_codes_and_decodings_of_the_right_shape(shape, n_transform) -> None:
    method = make(shape)
    x = blobs(16, shape)
    seen = train(method, x)
    assert len(seen) == 1 and set(seen[0]) == {"recon", "kl", "total"}
    assert all(math.isfinite(v) for v in seen[0].values())
    assert seen[0]["total"] == pytest.approx(seen[0]["recon"] + seen[0]["kl"], rel=1e-5)
    codes = method.encode(x)
    latent_dim = method.config["latent_dim"]
    assert codes.content.shape == (16, latent_dim) and codes.transformation.shape == (16, n_transform)
    out = method.decode(codes.content[:5], codes.transformation[:5])
    assert out.shape == (5, *shape) and out.dtype == np.float32 and np.isfinite(out).all()
    if len(shape) == 3:  # Bernoulli probabilities
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_latent_sizes_follow_dualcontrast_and_presets_differ() -> None:
    assert SpatialVAE.default_config("paper", (1, 28, 28))["latent_dim"] == 10
    assert SpatialVAE.default_config("paper", (3, 64, 64))["latent_dim"] == 16
    volume = SpatialVAE.default_config("paper", (1, 32, 32, 32))
    assert volume["latent_dim"] == 50 and volume["likelihood"] == "gaussian" and volume["epochs"] == 150
    paper, quick = SpatialVAE.default_config("paper", (1, 28, 28)), SpatialVAE.default_config("quick", (1, 28, 28))
    assert paper["generator_hidden"] == 500 and paper["lr"] == 1e-4 and paper["epochs"] == 200
    assert paper["theta_prior"] == pytest.approx(math.pi / 4)
    assert quick["epochs"] == 20 and set(quick) == set(paper)
    with pytest.raises(DcbenchError, match="unknown preset 'huge'"):  # refused by the runner, for every method
        plan(RunSpec(method="spatialvae", dataset="digits", preset="huge"), build_registry(entry_points=False))


def test_unsupported_shapes_give_a_reason() -> None:
    for shape in [(1, 28, 28), (3, 64, 64), (1, 20, 30), (1, 32, 32, 32)]:
        assert SpatialVAE.supports(shape) is None
    for shape in [(2, 28, 28), (4, 8, 8), (3, 8, 8, 8), (784,), (1, 2, 3, 4, 5)]:
        reason = SpatialVAE.supports(shape)
        assert isinstance(reason, str) and str(shape) in reason and "\n" not in reason


def test_bad_settings_are_refused() -> None:
    with pytest.raises(DcbenchError, match="likelihood"):
        make(likelihood="poisson")
    with pytest.raises(DcbenchError, match="theta_prior"):
        make(theta_prior=0.0)


def test_decoding_with_theta_plus_90_degrees_is_the_image_turned_90_degrees() -> None:
    """g(R(theta + 90) p + t) = g(R(theta) (R(90) p) + t): the decoded image sampled at the grid
    turned by 90 degrees, which on a square grid is a permutation of its pixels. With y up and
    rows top-down, that is np.rot90 clockwise (k=-1)."""
    method = make()
    rng = np.random.default_rng(1)
    content = rng.normal(size=(4, 10)).astype(np.float32)
    pose = np.concatenate([rng.uniform(-2, 2, (4, 1)), rng.normal(0, 0.2, (4, 2))], 1).astype(np.float32)
    base = method.decode(content, pose)
    turned = pose.copy()
    turned[:, 0] += math.pi / 2
    np.testing.assert_allclose(method.decode(content, turned), np.rot90(base, k=-1, axes=(2, 3)), atol=2e-5)
    turned[:, 0] += math.pi / 2
    np.testing.assert_allclose(method.decode(content, turned), np.rot90(base, k=2, axes=(2, 3)), atol=2e-5)
    assert np.abs(np.rot90(base, k=1, axes=(2, 3)) - base).max() > 1e-3  # the check can fail


@pytest.mark.parametrize("rotation_3d", ["axis_angle", "euler"])
def test_3d_rotation_by_90_degrees_about_z_turns_every_slice(rotation_3d) -> None:
    shape = (1, 8, 8, 8)
    method = make(shape, rotation_3d=rotation_3d, generator_hidden=16)
    content = np.random.default_rng(2).normal(size=(2, 50)).astype(np.float32)
    pose = np.zeros((2, 6), dtype=np.float32)
    pose[:, 3:] = [[0.1, -0.2, 0.05], [0.0, 0.15, -0.1]]
    base = method.decode(content, pose)
    pose[:, 2] = math.pi / 2  # about z, in (x, y, z) order for both parameterisations
    np.testing.assert_allclose(method.decode(content, pose), np.rot90(base, k=-1, axes=(3, 4)), atol=2e-5)


def test_axis_angle_matrices_are_rotations_with_finite_gradients_at_zero() -> None:
    v = torch.tensor([[0.0, 0.0, 0.0], [0.3, -1.2, 2.0], [0.0, 0.0, math.pi / 2], [1e-5, 0.0, 0.0]],
                     dtype=torch.float64, requires_grad=True)
    r = networks.axis_angle_matrices(v)
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(r @ r.transpose(1, 2), eye.expand(4, 3, 3))
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(r[2], torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64))
    torch.testing.assert_close(r[1] @ v[1].detach(), v[1].detach())  # the axis is fixed
    r.sum().backward()
    assert torch.isfinite(v.grad).all()


def test_square_grid_is_the_reference_grid() -> None:
    grid = networks.coordinate_grid((5, 5)).numpy()
    x0, x1 = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(1, -1, 5))
    np.testing.assert_allclose(grid, np.stack([x0.ravel(), x1.ravel()], 1), atol=1e-7)
    wide = networks.coordinate_grid((3, 5)).numpy()  # equal spacing on both axes
    assert wide[:, 0].max() == pytest.approx(1.0) and wide[:, 1].max() == pytest.approx(0.5)


@pytest.mark.parametrize("activation", ["tanh", "leaky_relu"])
@pytest.mark.parametrize("size, layers, n_out", [((5, 6), 2, 1), ((4, 4), 3, 3), ((3, 4, 5), 2, 1), ((3, 3, 3), 1, 1)])
def test_fused_generator_matches_the_plain_autograd_form(activation, size, layers, n_out) -> None:
    torch.manual_seed(0)
    s = len(size)
    gen = networks.SpatialGenerator(s, 4, 7, layers, n_out, activation).double()
    grid = networks.coordinate_grid(size).double()
    grid_aug = torch.cat([grid, torch.ones(len(grid), 1, dtype=torch.float64)], 1)
    params = torch.randn(3, 1 if s == 2 else 3, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(3, s, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    rotation = networks.rotation_matrices(params)
    fused = gen(grid_aug, rotation, shift, z)
    plain = gen.reference_forward(grid_aug, rotation, shift, z)
    torch.testing.assert_close(fused, plain)
    weight = torch.randn_like(plain)
    inputs = [params, shift, z, *gen.parameters()]
    for got, want in zip(torch.autograd.grad((fused * weight).sum(), inputs, retain_graph=True),
                         torch.autograd.grad((plain * weight).sum(), inputs)):
        torch.testing.assert_close(got, want)


def test_kl_terms_are_the_closed_form_gaussian_kls() -> None:
    zero = torch.zeros(3)
    assert gaussian_kl(zero, zero).abs().max().item() == pytest.approx(0.0)
    mu, logstd = torch.tensor([0.5]), torch.tensor([0.2])
    sigma = math.pi / 4
    expected = math.log(sigma / math.exp(0.2)) + (math.exp(0.4) + 0.25) / (2 * sigma**2) - 0.5
    assert gaussian_kl(mu, logstd, sigma).item() == pytest.approx(expected, rel=1e-6)
    no_mean = gaussian_kl(mu, logstd, sigma, penalise_mean=False).item()
    assert no_mean == pytest.approx(expected - 0.25 / (2 * sigma**2), rel=1e-6)


def test_elbo_is_bernoulli_recon_plus_kl_averaged_over_the_batch() -> None:
    method = make()
    x = torch.as_tensor(blobs(6, (1, 28, 28)))
    noise = torch.zeros(6, method.model.n_latent)  # the latents are then the posterior means
    terms = method.training_losses(x, noise)
    with torch.no_grad():
        mu, logstd = method.model.encoder(x)
        logits = method.model.render(*method.model.pose(mu))
        recon = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
        kl = (gaussian_kl(mu[:, :1], logstd[:, :1], math.pi / 4).sum(1) + gaussian_kl(mu[:, 1:], logstd[:, 1:]).sum(1))
    assert terms["recon"].item() == pytest.approx(recon.mean().item(), rel=1e-5)
    assert terms["kl"].item() == pytest.approx(kl.mean().item(), rel=1e-5)


@pytest.mark.parametrize("likelihood, shape, block_rows", [
    ("bernoulli", (1, 6, 7), 9), ("bernoulli", (3, 5, 5), 1 << 20), ("gaussian", (1, 3, 4, 5), 14)])
def test_fused_loss_matches_plain_likelihood_of_the_rendered_output(likelihood, shape, block_rows) -> None:
    """Blocks of 9 or 14 rows on 3 inputs: blocks of 3 or 4 pixels, the last one shorter."""
    torch.manual_seed(0)
    # bin=1: the model on this grid itself (the quick preset bins volumes, and 2 does not divide 3)
    method = make(shape, generator_hidden=7, generator_layers=3 if len(shape) == 3 else 2, bin=1)
    model = method.model.double()
    x = torch.rand(3, *shape, dtype=torch.float64)
    latent = torch.randn(3, model.n_latent, dtype=torch.float64, requires_grad=True)
    pose = model.pose(latent)
    fused = model.recon_loss(*pose, x, likelihood, block_rows)
    out = model.render(*pose)
    if likelihood == "bernoulli":
        plain = torch.nn.functional.binary_cross_entropy_with_logits(out, x, reduction="sum")
    else:
        plain = 0.5 * ((out - x) ** 2).sum()
    torch.testing.assert_close(fused, plain)
    inputs = [latent, *model.generator.parameters()]
    got = torch.autograd.grad(3 * fused, inputs, retain_graph=True)  # the pose graph is shared
    for mine, want in zip(got, torch.autograd.grad(3 * plain, inputs)):
        torch.testing.assert_close(mine, want)


def test_switching_off_rotation_and_translation_zeroes_those_codes() -> None:
    method = make(rotate=False, translate=False)
    assert method.model.n_latent == 10
    codes = method.encode(blobs(4, (1, 28, 28)))
    assert codes.transformation.shape == (4, 3) and not codes.transformation.any()


def test_save_and_load_state_give_identical_codes(tmp_path) -> None:
    x = blobs(16, (1, 28, 28))
    method = make()
    train(method, x)
    method.save(tmp_path / "state.pt")
    fresh = make(seed=5)
    fresh.load_state(tmp_path / "state.pt")
    a, b = method.encode(x), fresh.encode(x)
    np.testing.assert_array_equal(a.content, b.content)
    np.testing.assert_array_equal(a.transformation, b.transformation)
    np.testing.assert_array_equal(method.decode(a.content, a.transformation), fresh.decode(b.content, b.transformation))


def test_training_is_deterministic_per_seed() -> None:
    x = blobs(16, (1, 28, 28))
    codes = []
    for seed in (3, 3, 4):
        method = make(seed=seed)
        train(method, x, epochs=2)
        codes.append(method.encode(x).content)
    np.testing.assert_array_equal(codes[0], codes[1])
    assert not np.array_equal(codes[0], codes[2])
