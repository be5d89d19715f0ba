"""C-VITAE (vitae, vitae-affine): warps, the CPAB integrator against libcpab, libcpab's cache,
codes, decoding, state files, determinism and refusals."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dcbench.api import RunContext, Split
from dcbench.errors import DcbenchError
from dcbench_plugins.vitae import cpab as cpab_lib
from dcbench_plugins.vitae import warps
from dcbench_plugins.vitae.method import VITAE, VITAEAffine, bernoulli_nll, gaussian_kl, kl_weight

GREY = (1, 28, 28)
COLOUR = (3, 64, 64)
VARIANTS = [VITAE, VITAEAffine]


def make(cls: type[VITAE] = VITAE, shape: tuple[int, ...] = GREY, seed: int = 0, **overrides) -> VITAE:
    config = cls.default_config("quick", shape)
    config.update({"epochs": 1, "batch_size": 8, **overrides})
    return cls(config, shape, "cpu", seed=seed)


def random_split(shape: tuple[int, ...], n: int = 20, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(x=rng.random((n, *shape), dtype=np.float32), content=rng.integers(0, 3, n))


def fit(method: VITAE, split: Split) -> list[dict[str, float]]:
    logs: list[dict[str, float]] = []
    method.fit(split, RunContext(on_epoch=lambda epoch, terms: logs.append(terms)))
    return logs


def blobs(shape: tuple[int, ...], n: int = 3) -> torch.Tensor:
    """Smooth off-centre Gaussian blobs that vanish well inside the border."""
    c, h, w = shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    out = [torch.exp(-((yy - h / 2 + k) ** 2 + (xx - w / 2 - 1.5 * k) ** 2) / (2 * (h / 7) ** 2)) for k in range(n)]
    return torch.stack(out).unsqueeze(1).expand(n, c, h, w).contiguous()


def libcpab_site_parent() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("libcpab")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).resolve().parent.parent


# ----------------------------------------------------------------------------- libcpab wrapper
def test_libcpab_cache_goes_under_dcbench_cache_and_no_pickle_is_read(monkeypatch, tmp_path) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("pickle.load was called")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setenv("DCBENCH_CACHE", str(tmp_path / "cache"))
    site = libcpab_site_parent()
    before = sorted(os.listdir(site))
    first = cpab_lib.make_cpab([4, 2], nstepsolver=7)
    second = cpab_lib.make_cpab([4, 2])  # a basis file exists now: libcpab alone would unpickle it
    assert sorted(os.listdir(site)) == before  # nothing new next to site-packages/libcpab
    assert not (site / "basis_files").exists()
    basis_files = list((tmp_path / "cache" / "libcpab" / "basis_files").iterdir())
    assert [f.name for f in basis_files] == ["cpab_basis_dim2_tess4_2_vo0_zb1_vp0.cpab_basis"]
    assert first.get_theta_dim() == second.get_theta_dim() == first.get_basis().shape[1] > 0
    assert first.get_params().nstepsolver == 7
    assert np.allclose(first.get_basis(), second.get_basis())


def test_no_cuda_log_line_is_filtered() -> None:
    import logging

    drop = cpab_lib._DropNoCudaLog()
    record = logging.LogRecord("torch.utils.cpp_extension", logging.WARNING, __file__, 1,
                               "No CUDA runtime is found, using CUDA_HOME='%s'", ("/usr/local",), None)
    other = logging.LogRecord("torch.utils.cpp_extension", logging.WARNING, __file__, 1, "other", (), None)
    assert not drop.filter(record) and drop.filter(other)


def test_cell_index_matches_libcpab() -> None:
    from libcpab.findcellidx import findcellidx

    g = torch.Generator().manual_seed(0)
    points = torch.rand(2, 4000, generator=g)
    for nc in ([4, 2], [3, 3], [1, 1]):
        ours = warps.cell_index(points[0].clone(), points[1].clone(), *nc)
        assert torch.equal(ours, findcellidx(2, points.clone(), nc))
    # Exactly representable points on a square's centre, diagonals and borders: the tie rules.
    # (libcpab's rules for points outside, which also catch the corner (0, 0), are not copied.)
    ties = torch.tensor([[0.125, 0.0625, 0.0625, 0.25, 0.5, 0.75, 0.25, 1.0],
                         [0.25, 0.125, 0.375, 0.3, 0.5, 0.25, 0.75, 1.0]])
    assert torch.equal(warps.cell_index(ties[0].clone(), ties[1].clone(), 4, 2), findcellidx(2, ties.clone(), [4, 2]))


def test_integrator_matches_libcpab_values_and_gradients() -> None:
    cpab = cpab_lib.make_cpab([4, 2], nstepsolver=10)
    basis = torch.as_tensor(cpab.get_basis(), dtype=torch.float32)
    grid = cpab_lib.unit_grid(12, 12)
    theta = (0.8 * torch.randn(3, cpab.get_theta_dim(), generator=torch.Generator().manual_seed(1))).requires_grad_()
    weights = torch.randn(3, 2, grid.shape[1], generator=torch.Generator().manual_seed(2))
    ours = warps.integrate(grid, theta, basis, [4, 2], 10)
    (ours * weights).sum().backward()
    ours_grad, theta.grad = theta.grad.clone(), None
    reference = cpab.transform_grid(grid, theta)
    (reference * weights).sum().backward()
    assert (ours - reference).abs().max() < 1e-4
    assert (ours - grid).abs().max() > 0.02  # a real deformation
    assert torch.allclose(ours_grad, theta.grad, rtol=1e-3, atol=1e-4)


def test_integrator_gradients_against_finite_differences() -> None:
    cpab = cpab_lib.make_cpab([2, 2])
    basis = torch.as_tensor(cpab.get_basis(), dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    points = (0.05 + 0.9 * torch.rand(2, 2, 15, generator=g, dtype=torch.float64)).requires_grad_()
    theta = (0.5 * torch.randn(2, cpab.get_theta_dim(), generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, t: warps.integrate(p, t, basis, [2, 2], 3), (points, theta),
                                    eps=1e-6, atol=1e-5)


def test_affine_exp_matches_matrix_exp() -> None:
    g = torch.Generator().manual_seed(0)
    for scale in (0.0, 1e-3, 0.3, 4.0):
        m = scale * torch.randn(50, 6, generator=g, dtype=torch.float64)
        square = torch.cat([m.view(-1, 2, 3), torch.zeros(50, 1, 3, dtype=torch.float64)], dim=1)
        expected = torch.linalg.matrix_exp(square)[:, :2].reshape(-1, 6)
        assert torch.allclose(warps.affine_exp(m), expected, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- warps
@pytest.mark.parametrize("transformation", warps.TRANSFORMATIONS)
def test_zero_theta_leaves_images_unchanged(transformation: str) -> None:
    warper = warps.Warper((28, 28), transformation)
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    zero = torch.zeros(2, warper.theta_dim)
    assert torch.allclose(warper(x, zero), x, atol=1e-5)
    assert torch.allclose(warper(x, zero, inverse=True), x, atol=1e-5)


@pytest.mark.parametrize("transformation", warps.TRANSFORMATIONS)
def test_warp_then_inverse_warp_returns_the_image(transformation: str) -> None:
    warper = warps.Warper((28, 28), transformation)
    x = blobs(GREY)
    g = torch.Generator().manual_seed(4)
    theta = torch.randn(3, warper.theta_dim, generator=g)
    theta[:, :warper.affine_dim] *= 0.15  # a moderate affine part: rotation, shear, a few pixels of shift
    theta[:, warper.affine_dim:] *= 0.8
    moved = warper(x, theta)
    assert (moved - x).abs().max() > 0.1  # it did move
    back = warper(moved, theta, inverse=True)
    inner = (..., slice(6, 22), slice(6, 22))
    assert (back - x)[inner].abs().max() < 0.06


@pytest.mark.parametrize("transformation", warps.TRANSFORMATIONS)
def test_both_ways_equals_the_two_single_warps(transformation: str) -> None:
    warper = warps.Warper((12, 10), transformation, tess_size=(2, 2))
    theta = 0.3 * torch.randn(4, warper.theta_dim, generator=torch.Generator().manual_seed(5))
    forward, inverse = warper.both_ways(theta)
    assert forward.shape == inverse.shape == (4, 2, 120)
    assert torch.allclose(forward, warper.sampling_points(theta), atol=1e-6)
    assert torch.allclose(inverse, warper.sampling_points(theta, inverse=True), atol=1e-6)


def test_affine_warp_is_the_matrix_exponential_about_the_centre() -> None:
    warper = warps.Warper((28, 28), "affine")
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10, 12] = 1.0
    shift = torch.tensor([[0.0, 0.0, 6 / 28, 0.0, 0.0, 0.0]])  # x-shift of 3 px in [-1, 1] units
    moved = warper(x, shift)  # output(p) = x(p + 3 px): the dot moves 3 px left
    assert moved[0, 0, 10, 9].item() == pytest.approx(1.0, abs=1e-4)


# ----------------------------------------------------------------------------- the method
def test_supports_2d_images_only() -> None:
    for cls in VARIANTS:
        assert cls.supports(GREY) is None and cls.supports(COLOUR) is None
        reason = cls.supports((1, 32, 32, 32))
        assert reason is not None and "3D" in reason
        assert cls.supports((2, 28, 28)) is not None
        assert cls.supports((1, 4, 4)) is not None


def test_default_config_presets() -> None:
    quick, paper = VITAE.default_config("quick", GREY), VITAE.default_config("paper", COLOUR)
    for key in ("latent_dim", "transform_latent_dim", "epochs", "batch_size", "lr", "warmup_epochs",
                "tess_size", "transformation", "cpab_steps", "beta"):
        assert key in quick and key in paper
    assert (quick["epochs"], quick["lr"], quick["latent_dim"]) == (20, 1e-3, 10)
    assert (paper["epochs"], paper["batch_size"], paper["lr"], paper["latent_dim"]) == (200, 100, 1e-4, 16)
    assert VITAE.default_config("quick", GREY)["transformation"] == "cpab"
    assert VITAEAffine.default_config("quick", GREY)["transformation"] == "affine"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(DcbenchError, match="tess_size"):
        make(tess_size="four")
    with pytest.raises(DcbenchError, match="transformation"):
        make(transformation="projective")
    with pytest.raises(DcbenchError, match="3D"):
        VITAE(VITAE.default_config("quick", (1, 16, 16, 16)), (1, 16, 16, 16), "cpu", 0)


def test_loss_terms_and_warmup() -> None:
    assert [kl_weight(e, 5) for e in range(6)] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    assert kl_weight(0, 0) == 1.0
    method = make()
    x = blobs(GREY, 4)
    noise = torch.zeros(4, 12)
    terms = method.training_losses(x, weight=0.5, noise=noise)
    assert set(terms) == {"recon", "kl_t", "kl_a", "total"}
    expected = terms["recon"] + 0.5 * (terms["kl_t"] + terms["kl_a"])
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    p = torch.tensor([[0.2, 0.9]])
    target = torch.tensor([[0.0, 1.0]])
    assert bernoulli_nll(p, target).item() == pytest.approx(-(np.log(0.8) + np.log(0.9)), rel=1e-5)
    mu, var = torch.tensor([[0.5, -1.0]]), torch.tensor([[2.0, 0.5]])
    expected_kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu, var.sqrt()),
                                                    torch.distributions.Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(gaussian_kl(mu, var), expected_kl)


@pytest.mark.parametrize("cls, shape", [(VITAE, GREY), (VITAEAffine, GREY), (VITAE, COLOUR)])
def test_fit_codes_and_decode(cls: type[VITAE], shape: tuple[int, ...]) -> None:
    method = make(cls, shape)
    split = random_split(shape, n=12)
    logs = fit(method, split)
    assert len(logs) == 1 and set(logs[0]) == {"recon", "kl_t", "kl_a", "total"}
    assert all(np.isfinite(v) for v in logs[0].values())
    codes = method.encode(split.x[:5])
    assert codes.content.shape == (5, method.config["latent_dim"])
    assert codes.transformation.shape == (5, method.config["transform_latent_dim"])
    images = method.decode(codes.content, codes.transformation[::-1].copy())
    assert images.shape == (5, *shape) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_training_moves_theta_away_from_identity() -> None:
    method = make(lr=1e-2, batch_size=6)
    fit(method, random_split(GREY, n=12))
    with torch.no_grad():
        theta = method.model.theta_decoder(torch.randn(4, 2))
    assert theta.abs().max() > 0  # the zero-initialised head learned


def test_save_load_round_trip(tmp_path: Path) -> None:
    method = make(VITAE)
    split = random_split(GREY, n=10)
    fit(method, split)
    path = tmp_path / "state.pt"
    method.save(path)
    assert "warper.basis" in method.model.state_dict()  # theta's meaning travels with the weights
    other = make(VITAE, seed=5)
    other.load_state(path)
    a, b = method.encode(split.x), other.encode(split.x)
    assert np.array_equal(a.content, b.content) and np.array_equal(a.transformation, b.transformation)
    assert np.array_equal(method.decode(a.content, a.transformation), other.decode(b.content, b.transformation))


def test_same_seed_same_result_other_seed_differs() -> None:
    split = random_split(GREY, n=10)
    runs = []
    for seed in (3, 3, 4):
        method = make(VITAE, seed=seed)
        fit(method, split)
        runs.append(method.encode(split.x))
    assert np.array_equal(runs[0].content, runs[1].content)
    assert np.array_equal(runs[0].transformation, runs[1].transformation)
    assert not np.array_equal(runs[0].content, runs[2].content)
