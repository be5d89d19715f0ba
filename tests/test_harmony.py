"""Harmony: warps, loss terms, codes, decoding, state files and determinism."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dcbench.api import RunContext, Split
from dcbench.errors import DcbenchError
from dcbench_plugins.common import geometry
from dcbench_plugins.harmony import poses
from dcbench_plugins.harmony.method import Harmony, default_gamma, gaussian_kl

IMAGE = (1, 28, 28)
VOLUME = (1, 16, 16, 16)


def make(shape: tuple[int, ...] = IMAGE, seed: int = 0, **overrides) -> Harmony:
    config = Harmony.default_config("quick", shape)
    config.update(overrides)
    return Harmony(config, shape, "cpu", seed=seed)


def random_split(shape: tuple[int, ...], n: int = 24, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(x=rng.random((n, *shape), dtype=np.float32), content=rng.integers(0, 3, n))


def blob(shape: tuple[int, ...], n: int = 3) -> torch.Tensor:
    """Smooth, off-centre Gaussian blobs that vanish well inside the border."""
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape[1:]], indexing="ij")
    centre = [s / 2 - 0.5 for s in shape[1:]]
    out = []
    for k in range(n):
        offset = [(k + 1) * 0.8, -(k + 1) * 0.6, 0.5][:len(centre)]
        r2 = sum((a - c - o) ** 2 for a, c, o in zip(axes, centre, offset))
        out.append(torch.exp(-r2 / (2 * (shape[1] / 6) ** 2)))
    return torch.stack(out).unsqueeze(1).expand(n, *shape).contiguous()


def fit(method: Harmony, split: Split) -> list[dict[str, float]]:
    logs: list[dict[str, float]] = []
    method.fit(split, RunContext(on_epoch=lambda epoch, terms: logs.append(terms)))
    return logs


@pytest.mark.parametrize("shape, phi", [
    (IMAGE, [[0.7, 2.0, -1.5], [-1.2, -2.5, 0.5], [0.0, 0.0, 0.0]]),
    ((1, 24, 24, 24), [[0.5, -0.3, 0.8, 2.0, -1.0, 1.5], [-0.9, 0.4, 0.1, -2.0, 0.5, 0.0],
                       [0.0] * 6]),
])
def test_canonicalise_undoes_pose(shape, phi) -> None:
    x = blob(shape)
    phi_t = torch.tensor(phi)
    posed = poses.pose(x, phi_t)
    assert (posed - x).abs().max() > 0.05 or phi_t.abs().sum() == 0
    back = poses.canonicalise(posed, phi_t)
    # Points within side/2 - 5 of the centre: their samples (|shift| < 3 px, plus the bilinear
    # neighbours) stay inside the frame in both warps, so only interpolation error remains
    # (two trilinear resamplings of a unit peak with sigma = side/6 blur it by about 0.03).
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) - (s - 1) / 2 for s in shape[1:]], indexing="ij")
    inside = sum(a ** 2 for a in axes).sqrt() < shape[1] / 2 - 5
    assert (back - x)[..., inside].abs().max() < 0.05  # a wrong inverse is off by ~0.5


@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (3, 2, 12, 10), (4, 1, 8, 10, 12)])
def test_broadcast_warp_equals_affine_grid_warp(shape) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(*shape, generator=g)
    s = len(shape) - 2
    linear, shift = torch.randn(shape[0], s, s, generator=g), 0.3 * torch.randn(shape[0], s, generator=g)
    assert torch.allclose(poses.warp(x, linear, shift), geometry.warp(x, linear, shift), atol=1e-5)


def test_predicted_shifts_are_bounded() -> None:
    method = make(shift_bound_pixels=2.0)
    with torch.no_grad():
        for p in method.model.encoder.parameters():
            p.mul_(20)  # huge raw outputs
        phi, _, _ = method.model.encode(torch.rand(8, *IMAGE))
    assert phi[:, 1:].abs().max() <= 2.0 and phi[:, 1:].abs().max() > 1.5


def test_pose_shift_is_in_pixels_and_rotation_is_about_the_centre() -> None:
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10, 12] = 1.0
    shifted = poses.pose(x, torch.tensor([[0.0, 3.0, 0.0]]))  # output(p) = x(p + t): moves by -3 px in x
    assert shifted[0, 0, 10, 9].item() == pytest.approx(1.0, abs=1e-5)
    rotated = poses.pose(x, torch.tensor([[math.pi, 0.0, 0.0]]))  # half a turn about the centre
    assert rotated[0, 0, 17, 15].item() == pytest.approx(1.0, abs=1e-4)


def test_random_phi_ranges() -> None:
    gen = torch.Generator().manual_seed(0)
    phi2 = poses.random_phi(500, 2, 90.0, 3.0, gen)
    assert phi2.shape == (500, 3)
    assert phi2[:, 0].abs().max() <= math.pi / 2 and phi2[:, 1:].abs().max() <= 3.0
    assert phi2[:, 1:].abs().max() > 2.5  # actually spread out
    phi3 = poses.random_phi(500, 3, 90.0, 4.0, gen)
    assert phi3.shape == (500, 6) and phi3[:, 3:].abs().max() <= 4.0


def test_gaussian_kl_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(1)
    mu1, lv1, mu2, lv2 = (torch.randn(5, 4, generator=g) for _ in range(4))
    p = torch.distributions.Normal(mu1, torch.exp(0.5 * lv1))
    q = torch.distributions.Normal(mu2, torch.exp(0.5 * lv2))
    expected = torch.distributions.kl_divergence(p, q).sum(1)
    assert torch.allclose(gaussian_kl(mu1, lv1, mu2, lv2), expected, atol=1e-5)
    assert gaussian_kl(mu1, lv1, mu1, lv1).abs().max() < 1e-6


def test_training_losses_sum_to_total_and_follow_the_reference_formula() -> None:
    method = make(prior_kl_weight=0.5)
    x = blob(IMAGE, 4)
    phi_t = torch.tensor([[0.3, 1.0, -1.0], [0.0, 0.0, 0.0], [-0.8, 2.0, 2.0], [1.2, -3.0, 0.0]])
    noise = torch.zeros(8, 10)
    terms = method.training_losses(x, phi_t=phi_t, noise=noise)
    assert set(terms) == {"recon", "branch", "kl", "prior_kl", "total"}
    parts = terms["recon"] + terms["branch"] + terms["kl"] + terms["prior_kl"]
    assert terms["total"].item() == pytest.approx(parts.item(), rel=1e-6)
    # Recompute recon and branch by hand from the model's outputs.
    views = torch.cat([x, poses.pose(x, phi_t)])
    with torch.no_grad():
        phi, mu, _ = method.model.encode(views)
        canon = poses.canonicalise(views, phi)
        recon = method.model.decoder(mu)
    assert terms["recon"].item() == pytest.approx(((recon - canon) ** 2).sum().item() / 4, rel=1e-4)
    assert terms["branch"].item() == pytest.approx(((canon[:4] - canon[4:]) ** 2).sum().item() / 4, rel=1e-4)


def test_gamma_default_rule_and_override() -> None:
    assert default_gamma(60000, 100) == 1
    assert default_gamma(250000, 100) == 3
    method = make(epochs=1, batch_size=4)
    assert method.gamma is None
    fit(method, random_split(IMAGE, n=8))
    assert method.gamma == 1.0  # ceil(8 / 4000)
    assert make(gamma=2.5).gamma == 2.5
    with pytest.raises(DcbenchError):
        make(gamma=-1.0)


def test_config_presets() -> None:
    quick, paper = Harmony.default_config("quick", IMAGE), Harmony.default_config("paper", IMAGE)
    for key in ("latent_dim", "epochs", "batch_size", "lr", "gamma", "max_rotation_degrees", "max_shift_pixels"):
        assert key in quick and key in paper
    assert (paper["latent_dim"], paper["epochs"], paper["batch_size"]) == (10, 200, 100)
    assert quick["epochs"] == 20
    vol = Harmony.default_config("paper", (1, 32, 32, 32))
    assert (vol["latent_dim"], vol["epochs"], vol["batch_size"], vol["max_shift_pixels"]) == (50, 150, 50, 4.0)
    assert Harmony.default_config("paper", (3, 64, 64))["latent_dim"] == 16


def test_supports() -> None:
    for shape in (IMAGE, (3, 64, 64), (1, 32, 32, 32), VOLUME):
        assert Harmony.supports(shape) is None
    for shape in ((2, 28, 28), (1, 28, 30), (1, 20, 20, 20), (3, 32, 32, 32), (1, 16, 16, 8), (28, 28)):
        reason = Harmony.supports(shape)
        assert isinstance(reason, str) and reason and "\n" not in reason
    with pytest.raises(DcbenchError):
        Harmony(Harmony.default_config("quick", IMAGE), (1, 28, 30), "cpu", seed=0)


@pytest.mark.parametrize("shape, n_phi", [(IMAGE, 3), (VOLUME, 6)])
def test_fit_encode_decode_shapes(shape, n_phi) -> None:
    method = make(shape, epochs=2, batch_size=6, latent_dim=6)
    split = random_split(shape, n=10)
    logs = fit(method, split)
    assert len(logs) == 2
    assert all(math.isfinite(v) for log in logs for v in log.values())
    assert {"recon", "branch", "kl", "total"} <= set(logs[0])
    codes = method.encode(split.x[:5])
    assert codes.content.shape == (5, 6) and codes.transformation.shape == (5, n_phi)
    out = method.decode(codes.content, codes.transformation)
    assert out.shape == (5, *shape) and out.dtype == np.float32 and np.isfinite(out).all()
    if len(shape) == 3:
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_training_reduces_the_loss() -> None:
    method = make(epochs=6, batch_size=16)
    x = blob(IMAGE, 4).repeat(8, 1, 1, 1).numpy()
    logs = fit(method, Split(x=x, content=np.zeros(len(x), dtype=int)))
    assert logs[-1]["total"] < logs[0]["total"]


def test_decode_with_zero_phi_is_the_canonical_output() -> None:
    method = make()
    content = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    decoded = method.decode(content, np.zeros((4, 3), dtype=np.float32))
    with torch.no_grad():
        canonical = method.canonical(torch.from_numpy(content)).numpy()
    np.testing.assert_allclose(decoded, canonical, atol=1e-5)
    # A non-zero phi moves the canonical image by that pose.
    phi = np.tile(np.array([[0.6, 2.0, -1.0]], dtype=np.float32), (4, 1))
    expected = poses.pose(torch.from_numpy(canonical), torch.from_numpy(phi)).numpy()
    np.testing.assert_allclose(method.decode(content, phi), expected, atol=1e-5)


def test_save_load_round_trip(tmp_path: Path) -> None:
    split = random_split(IMAGE, n=16)
    method = make(epochs=1, batch_size=8)
    fit(method, split)
    path = tmp_path / "state.pt"
    method.save(path)
    fresh = make(seed=5)
    fresh.load_state(path)
    a, b = method.encode(split.x), fresh.encode(split.x)
    np.testing.assert_array_equal(a.content, b.content)
    np.testing.assert_array_equal(a.transformation, b.transformation)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DcbenchError):
        fresh.load_state(bad)


def test_same_seed_same_codes_other_seed_other_codes() -> None:
    split = random_split(IMAGE, n=16)

    def codes(seed: int) -> np.ndarray:
        method = make(seed=seed, epochs=1, batch_size=8)
        fit(method, split)
        return method.encode(split.x).content

    first = codes(3)
    np.testing.assert_array_equal(first, codes(3))
    assert not np.array_equal(first, codes(4))
