"""dcbench's DualContrast minimises the reference training loop's objective: the same loss
terms and the same gradients, on the same weights, batch and random draws. The reference is
re-implemented in bench/bench_dualcontrast_throughput.py (bench/ is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from dcbench_plugins.dualcontrast import transforms
from dcbench_plugins.dualcontrast.method import DualContrast

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_dualcontrast_throughput.py"
SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_dualcontrast_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def make_method(seed: int = 0) -> DualContrast:
    config = DualContrast.default_config("paper", SHAPE)
    config["precision"] = "fp32"  # the comparison is in fp32, whatever the CPU has
    return DualContrast(config, SHAPE, "cpu", seed)


def test_loss_terms_equal_the_reference_terms(bench) -> None:
    method = make_method()
    x = torch.rand(24, *SHAPE, generator=torch.Generator().manual_seed(1))
    terms = bench.compare_objectives(method, x, seed=2)
    assert set(terms) == {"vae", "con_c", "con_z", "total"}
    for name, (ours, reference) in terms.items():
        assert ours == pytest.approx(reference, abs=1e-5), name
    assert terms["con_c"][0] > 0 and terms["con_z"][0] > 0


def test_gradients_equal_the_reference_gradients(bench) -> None:
    """Encoder: gradients of both reference steps; decoder: of step 1 only, since the
    reference's second step computes decoder gradients that its encoder optimizer never uses."""
    method = make_method(seed=3)
    ref = bench.reference_model_from(method)
    b, d = 16, int(method.config["latent_dim"])
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(b, *SHAPE, generator=gen)
    x_t = transforms.rotate(x, gen, per_sample=True)
    draws = method.draw(b)

    names, params = zip(*method.model.named_parameters())
    ours = dict(zip(names, torch.autograd.grad(method.training_losses(x, x_t, draws)["total"], params)))
    ours = bench.to_reference_names(ours)

    noise = torch.cat([draws.noise, torch.randn(b, 2 * d, generator=gen)])
    step1 = bench.reference_step1_losses(ref, x, x_t, draws.content_perm, noise)["total"]
    step2 = bench.reference_step2_loss(ref, x, draws.latent_perms[0], draws.latent_perms[1], draws.eps)
    ref_names, ref_params = zip(*ref.named_parameters())
    grads1 = dict(zip(ref_names, torch.autograd.grad(step1, ref_params)))
    encoder_names = [n for n in ref_names if n.startswith("encoder.")]
    encoder_params = [dict(ref.named_parameters())[n] for n in encoder_names]
    # step 2 uses only the z_mu head: the other heads get no gradient from it
    grads2 = dict(zip(encoder_names, torch.autograd.grad(step2, encoder_params, materialize_grads=True)))
    for name in ref_names:
        expected = grads1[name] + grads2.get(name, 0)
        # relative to the largest entry; conv biases feed an InstanceNorm, so their true
        # gradient is 0 and only rounding noise is compared (the absolute term)
        scale = expected.abs().max().item() + 1e-6
        assert (ours[name] - expected).abs().max().item() <= 1e-4 * scale + 1e-7, name


def test_flop_counts_follow_the_pass_structure(bench) -> None:
    d = 10
    model = bench.ReferenceModel(d)
    encoder = bench.layer_macs(model.encoder, torch.zeros(1, *SHAPE))
    decoder = bench.layer_macs(model.decoder, torch.zeros(1, d), torch.zeros(1, d))
    # conv 13x13x16x25 + 6x6x32x400 + 2x2x64x800, heads 4 x 256 x 10
    assert sum(m for m, _ in encoder) == 67600 + 460800 + 204800 + 10240
    assert sum(m for m, _ in decoder) == 2 * 2560 + 3 * 512 * 512 + 512 * 784
    assert [first for _, first in encoder] == [True] + [False] * 6
    flops = bench.flops_per_image(d)
    # the reference's redundant passes are about a third of its FLOPs
    assert 0.6 < flops["dcbench"] / flops["reference"] < 0.7


def test_reference_loop_and_dcbench_epoch_run(bench) -> None:
    method = make_method()
    data = torch.rand(20, *SHAPE)
    method.config["batch_size"] = 10
    means = method.train_epoch(data, method.make_optimizer(), max_steps=1)
    assert set(means) >= {"recon", "kl", "con_c", "con_z", "total"}
    ref = bench.reference_model_from(method)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=10, shuffle=True,
                                         drop_last=True)
    seen = bench.reference_loop(ref, loader, torch.optim.Adam(ref.parameters()),
                                torch.optim.Adam(ref.encoder.parameters()), steps=3)
    assert seen == 30
