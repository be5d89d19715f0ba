"""Training throughput of dcbench's DualContrast against the reference training loop, on CPU.

Both loops train the same networks (dcbench's 1x28x28 encoder and decoder architecture and
initial weights; the reference as plain PyTorch layers) on MNIST-shaped random images at
batch 100, with the same thread count, in one process. Rounds alternate dcbench / reference / dcbench / ... so that
noise from other work on the machine hits both alike; the medians and their ratio are
reported, with the analytic FLOPs per training image of each loop and the fraction of the
machine's measured fp32 matmul throughput that each achieves.

    python bench/bench_dualcontrast_throughput.py [--steps 40] [--rounds 9] [--json out.json]

The reference loop is re-implemented here (`reference_loop`): a straightforward copy of the
reference code's training loop, redundant passes included, not dcbench code. dcbench is timed
through `DualContrast.train_epoch`, the code `fit` runs each epoch. Results and their
discussion: docs/performance.md. The functions
`reference_step1_losses` and `reference_step2_loss` are also used by
tests/test_dualcontrast_objective.py to check that dcbench minimises the same objective.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from dcbench.records import cpu_model
from dcbench_plugins.dualcontrast.method import DualContrast

SHAPE = (1, 28, 28)
KL_WEIGHT = 0.01


# ------------------------------------------------------------------------- reference loop
class ReferenceEncoder(nn.Module):
    """The reference's MNIST encoder, as plain PyTorch layers: 3 x [Conv k5 s2 p1,
    InstanceNorm2d, ReLU] 1->16->32->64, flatten 256, four Linear(256, d) heads."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in ((1, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(a, b, kernel_size=5, stride=2, padding=1), nn.InstanceNorm2d(b), nn.ReLU()]
        self.conv = nn.Sequential(*layers)
        self.z_mu, self.z_logvar, self.c_mu, self.c_logvar = (nn.Linear(256, latent_dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.conv(x).view(x.shape[0], -1)
        return self.z_mu(h), self.z_logvar(h), self.c_mu(h), self.c_logvar(h)


class ReferenceDecoder(nn.Module):
    """The reference's MNIST decoder, called decoder(z, c); z and c get their own input layer
    (the reference shares one, a bug dcbench fixes) so that both loops train the same network."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.fc_z, self.fc_c = nn.Linear(latent_dim, 256), nn.Linear(latent_dim, 256)
        self.mlp = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                                 nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 784))

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = torch.cat([F.relu(self.fc_z(z)), F.relu(self.fc_c(c))], dim=1)
        return torch.sigmoid(self.mlp(h)).view(-1, *SHAPE)


class ReferenceModel(nn.Module):
    """The reference's model interface: forward -> (out, z_mu, z_logvar, c_mu, c_logvar)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder, self.decoder = ReferenceEncoder(latent_dim), ReferenceDecoder(latent_dim)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        z_mu, z_logvar, c_mu, c_logvar = self.encoder(x)
        # `noise` ([z noise | c noise]) lets the objective check make the draws equal.
        d = self.latent_dim
        noise = torch.randn(x.shape[0], 2 * d) if noise is None else noise
        z = z_mu + noise[:, :d] * torch.exp(0.5 * z_logvar)
        c = c_mu + noise[:, d:] * torch.exp(0.5 * c_logvar)
        return self.decoder(z, c), z_mu, z_logvar, c_mu, c_logvar


def to_reference_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """dcbench's MNIST parameters (or their gradients), keyed as in DualContrastModel, renamed
    and split as the ReferenceModel's: four heads instead of one Linear with 4*d outputs."""
    out = {f"encoder.conv.{3 * i}.{k}": tensors[f"encoder.trunk.{i}.0.{k}"] for i in range(3)
           for k in ("weight", "bias")}
    for k in ("weight", "bias"):
        heads = tensors[f"encoder.posterior.heads.{k}"].chunk(4)
        for name, part in zip(("z_mu", "z_logvar", "c_mu", "c_logvar"), heads):
            out[f"encoder.{name}.{k}"] = part
    layers = {"fc_z": "z_in", "fc_c": "c_in", "mlp.0": "hidden.0", "mlp.2": "hidden.2", "mlp.4": "hidden.4",
              "mlp.6": "out"}
    for ref_name, name in layers.items():
        for k in ("weight", "bias"):
            out[f"decoder.{ref_name}.{k}"] = tensors[f"decoder.{name}.{k}"]
    return out


def reference_model_from(method: DualContrast) -> ReferenceModel:
    """A ReferenceModel holding a copy of dcbench's current weights (the same function)."""
    ref = ReferenceModel(int(method.config["latent_dim"]))
    state = to_reference_names(dict(method.model.named_parameters()))
    # contiguous(): the reference keeps PyTorch's usual channels-first layout
    ref.load_state_dict({k: v.detach().contiguous().clone() for k, v in state.items()})
    return ref


def reference_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    # Written for a log-variance head, as dcbench does: the reference mixed log sigma and
    # log sigma^2; the fixed form costs the same and keeps the two objectives comparable.
    return 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1 - logvar)


def reference_vae_loss(recon: torch.Tensor, x: torch.Tensor, z_mu: torch.Tensor, z_logvar: torch.Tensor,
                       c_mu: torch.Tensor, c_logvar: torch.Tensor) -> torch.Tensor:
    n = x.numel()  # n * C * H * W
    return (F.mse_loss(recon, x, reduction="mean") + KL_WEIGHT * reference_kl(z_mu, z_logvar) / n
            + KL_WEIGHT * reference_kl(c_mu, c_logvar) / n)


def cos_sim_loss(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    return torch.sum(torch.abs(F.cosine_similarity(f1, f2))) / f1.nelement()


def cos_dis_loss(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    return torch.sum(1 - torch.abs(F.cosine_similarity(f1, f2))) / f1.nelement()


def reference_step1_losses(model: ReferenceModel, im: torch.Tensor, im_t: torch.Tensor, perm: torch.Tensor,
                           noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The reference's first step: VAE on im and im_t, the content pairs and the negative
    transformation pair. The negative content pair re-encodes AND re-decodes the permuted
    batch (a full redundant forward pass, kept on purpose). `noise` is (3B, 2d) or None."""
    b = im.shape[0]
    chunks = [None] * 3 if noise is None else noise.split(b)
    out, z_mu, z_logvar, c_mu, c_logvar = model(im, chunks[0])
    vae1 = reference_vae_loss(out, im, z_mu, z_logvar, c_mu, c_logvar)
    out_t, z_neg_mu, z_neg_logvar, c_pos_mu, c_pos_logvar = model(im_t, chunks[1])
    vae2 = reference_vae_loss(out_t, im_t, z_neg_mu, z_neg_logvar, c_pos_mu, c_pos_logvar)
    _, _, _, c_neg_mu, _ = model(im[perm], chunks[2])
    con_c = cos_sim_loss(c_mu, c_neg_mu) + cos_dis_loss(c_mu, c_pos_mu)
    con_z_neg = cos_sim_loss(z_mu, z_neg_mu)
    vae = vae1 + vae2
    return {"vae": vae, "con_c": con_c, "con_z_neg": con_z_neg, "total": vae + con_z_neg + con_c}


def reference_step2_loss(model: ReferenceModel, im: torch.Tensor, perm1: torch.Tensor, perm2: torch.Tensor,
                         eps: torch.Tensor) -> torch.Tensor:
    """The reference's second step: the latent-space positive transformation pair. It encodes
    both permutations again (with autograd graphs), and generates with gradient through the
    decoder, which its encoder-only optimizer never steps (kept on purpose)."""
    _, _, c1_mu, _ = model.encoder(im[perm1])
    _, _, c2_mu, _ = model.encoder(im[perm2])
    g1 = model.decoder(eps, c1_mu.detach())
    g2 = model.decoder(eps, c2_mu.detach())
    z1, _, _, _ = model.encoder(g1)
    z2, _, _, _ = model.encoder(g2)
    return cos_dis_loss(z1, z2)


def reference_loop(model: ReferenceModel, loader: DataLoader, optimizer: torch.optim.Optimizer,
                   encoder_optimizer: torch.optim.Optimizer, steps: int) -> int:
    """Re-implements the reference code's training loop (train_mnist.py) for comparison: per
    batch, RandomAffine(90) on the batch tensor (one angle per batch), step 1 with the
    redundant re-encoding of the permuted batch, an Adam step over all parameters with
    retain_graph=True, then step 2 with its two extra encoder passes and the backward through
    the decoder, and a second Adam step over the encoder. Its redundant passes are reproduced
    on purpose: this is the baseline, not dcbench code. Returns the number of images seen."""
    from torchvision.transforms import RandomAffine

    affine = RandomAffine(90)
    seen, batches = 0, iter(loader)
    for _ in range(steps):
        try:
            (im,) = next(batches)
        except StopIteration:
            batches = iter(loader)
            (im,) = next(batches)
        b = im.shape[0]
        im_t = affine(im)
        terms = reference_step1_losses(model, im, im_t, torch.randperm(b))
        optimizer.zero_grad()
        terms["total"].backward(retain_graph=True)
        optimizer.step()
        eps = torch.randn(b, model.latent_dim)
        con_z_pos = reference_step2_loss(model, im, torch.randperm(b), torch.randperm(b), eps)
        encoder_optimizer.zero_grad()
        con_z_pos.backward()
        encoder_optimizer.step()
        seen += b
    return seen


# ------------------------------------------------------------------------- objective check
def compare_objectives(method: DualContrast, x: torch.Tensor, seed: int = 0) -> dict[str, tuple[float, float]]:
    """dcbench's loss terms and the reference's, on the same weights and batch with the same
    random draws (per-sample rotation angles, permutations, reparameterisation noise, eps):
    {term: (dcbench, reference)}. The reference's pair losses are divided by d (dcbench's
    contrastive_weight is 1/d) and it sums the VAE losses of x and x' (dcbench: recon + kl)."""
    from dcbench_plugins.dualcontrast import transforms

    ref = reference_model_from(method)
    b, d = x.shape[0], int(method.config["latent_dim"])
    gen = torch.Generator().manual_seed(seed)
    x_t = transforms.rotate(x, gen, per_sample=True, max_degrees=float(method.config["max_rotation_degrees"]))
    draws = method.draw(b)
    ours = method.training_losses(x, x_t, draws)
    # The third chunk of noise feeds the reference's redundant decoding of x[perm]: unused.
    noise = torch.cat([draws.noise, torch.randn(b, 2 * d, generator=gen)])
    step1 = reference_step1_losses(ref, x, x_t, draws.content_perm, noise)
    step2 = reference_step2_loss(ref, x, draws.latent_perms[0], draws.latent_perms[1], draws.eps)
    pairs = {
        "vae": (ours["recon"] + ours["kl"], step1["vae"]),
        "con_c": (ours["con_c"], step1["con_c"]),
        "con_z": (ours["con_z"], step1["con_z_neg"] + step2),
        "total": (ours["total"], step1["total"] + step2),
    }
    return {k: (a.item(), b.item()) for k, (a, b) in pairs.items()}


# ------------------------------------------------------------------------- FLOPs
def layer_macs(net: nn.Module, *inputs: torch.Tensor) -> list[tuple[int, bool]]:
    """(multiply-accumulates per sample, takes a network input) for each Conv or ConvTranspose (any
    dimension) and Linear layer of one forward pass of `net` on `inputs` (a batch of one), from
    the layers' shapes."""
    found: list[tuple[int, bool]] = []
    ids = {id(t) for t in inputs}

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(module, nn.modules.conv._ConvTransposeNd):  # each input value paints a kernel
            macs = args[0][0].numel() * math.prod(module.kernel_size) * module.out_channels // module.groups
        elif isinstance(module, nn.modules.conv._ConvNd):
            macs = out[0].numel() * math.prod(module.kernel_size) * module.in_channels // module.groups
        else:
            macs = module.in_features * module.out_features
        found.append((macs, id(args[0]) in ids))

    layers = (nn.modules.conv._ConvNd, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, layers)]
    try:
        with torch.no_grad():
            net(*inputs)
    finally:
        for h in handles:
            h.remove()
    return found


def pass_flops(macs: list[tuple[int, bool]], backward: bool = False, input_grad: bool = True) -> int:
    """FLOPs of one pass per sample: 2 per MAC forward; backward adds 2 per MAC for the weight
    gradient and 2 per MAC for the input gradient, except into the network's inputs when
    they need no gradient."""
    total = 2 * sum(m for m, _ in macs)
    if backward:
        total += 2 * sum(m for m, _ in macs)
        total += 2 * sum(m for m, first in macs if input_grad or not first)
    return total


def flops_per_image(latent_dim: int) -> dict[str, int]:
    """Analytic conv/linear FLOPs per training image of each loop, from its pass structure."""
    model = ReferenceModel(latent_dim)
    code = torch.zeros(1, latent_dim)
    enc = layer_macs(model.encoder, torch.zeros(1, *SHAPE))
    dec = layer_macs(model.decoder, code, code.clone())
    f = pass_flops
    # dcbench: encode x, x' (2 views); decode them; backward through both (the decoder's inputs
    # are reparameterised codes, so gradients reach them). Generate 2 images per image without
    # gradient; encode them with weight gradients only.
    dcbench = (2 * f(enc, backward=True, input_grad=False) + 2 * f(dec, backward=True)
               + 2 * f(dec) + 2 * f(enc, backward=True, input_grad=False))
    # reference step 1: encode+decode x, x', x[perm]; backward through the encoders of all
    # three and the decoders of x, x'. Step 2: encode x[perm1], x[perm2] (graphs, no backward);
    # decode with gradient; encode the generated images with gradient into them.
    reference = (3 * f(enc, backward=True, input_grad=False) + 3 * f(dec) + 2 * (f(dec, backward=True) - f(dec))
                 + 2 * f(enc) + 2 * f(dec, backward=True, input_grad=False) + 2 * f(enc, backward=True))
    return {"dcbench": dcbench, "reference": reference}


# ------------------------------------------------------------------------- timing
def matmul_gflops(threads: int, n: int = 1024, repeats: int = 20) -> float:
    """The machine's fp32 matmul throughput: median time of an n x n x n matmul."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def timed(run: Any, steps: int) -> float:
    """Images per second of run(steps), which returns the number of images it trained on."""
    start = time.perf_counter()
    images = run(steps)
    return images / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=9, help="rounds of each loop, alternating")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps of each loop first")
    parser.add_argument("--images", type=int, default=6000, help="MNIST-shaped random images in memory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--no-retain-freed-memory", action="store_true",
                        help="leave glibc malloc's defaults alone (dcbench's retain_freed_memory=False)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    method = DualContrast(DualContrast.default_config("paper", SHAPE), SHAPE, "cpu", args.seed)
    method.config["batch_size"] = args.batch_size
    method.config["retain_freed_memory"] = not args.no_retain_freed_memory
    d, lr = int(method.config["latent_dim"]), float(method.config["lr"])
    data = torch.rand(args.images, *SHAPE, generator=torch.Generator().manual_seed(args.seed))

    check = DualContrast({**method.config, "precision": "fp32"}, SHAPE, "cpu", args.seed)
    objective = compare_objectives(check, data[:args.batch_size], args.seed)
    worst = max(abs(a - b) for a, b in objective.values())
    print("objective check (dcbench vs reference, same draws): "
          + ", ".join(f"{k} {a:.6f}/{b:.6f}" for k, (a, b) in objective.items()) + f"; max |diff| {worst:.2e}")

    # dcbench: the code fit() runs each epoch, on as many epochs as the steps need.
    optimizer = method.make_optimizer()
    per_epoch = args.images // args.batch_size

    def run_dcbench(steps: int) -> int:
        done = 0
        while done < steps:
            n = min(steps - done, per_epoch)
            method.train_epoch(data, optimizer, max_steps=n)
            done += n
        return done * args.batch_size

    torch.manual_seed(args.seed)
    ref = reference_model_from(method)
    ref_optimizer = torch.optim.Adam(ref.parameters(), lr=lr)
    ref_encoder_optimizer = torch.optim.Adam(ref.encoder.parameters(), lr=lr)
    loader = DataLoader(TensorDataset(data), batch_size=args.batch_size, shuffle=True, drop_last=True)

    def run_reference(steps: int) -> int:
        return reference_loop(ref, loader, ref_optimizer, ref_encoder_optimizer, steps)

    run_dcbench(args.warmup)
    run_reference(args.warmup)
    per_round: dict[str, list[float]] = {"dcbench": [], "reference": []}
    for r in range(args.rounds):
        per_round["dcbench"].append(timed(run_dcbench, args.steps))
        per_round["reference"].append(timed(run_reference, args.steps))
        print(f"round {r + 1}/{args.rounds}: dcbench {per_round['dcbench'][-1]:7.0f} img/s, "
              f"reference {per_round['reference'][-1]:7.0f} img/s", flush=True)

    medians = {k: statistics.median(v) for k, v in per_round.items()}
    paired = [a / b for a, b in zip(per_round["dcbench"], per_round["reference"])]
    flops = flops_per_image(d)
    peak = matmul_gflops(args.threads)
    results: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "logical_cpus": _cpu_count(), "threads": args.threads,
                    "torch": torch.__version__, "python": platform.python_version()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "precision": str(method.amp_dtype or "fp32"),
        "images_per_s": per_round,
        "median_images_per_s": medians,
        "ratio": medians["dcbench"] / medians["reference"],
        "round_ratios": paired,
        "allocator": "glibc keeps freed memory (both loops: process-wide)" if method.config["retain_freed_memory"]
        else "glibc defaults",
        "flops_per_image": flops,
        "matmul_gflops": peak,
        "achieved_gflops": {k: medians[k] * flops[k] / 1e9 for k in medians},
        "fraction_of_matmul": {k: medians[k] * flops[k] / 1e9 / peak for k in medians},
        "objective_check": objective,
    }
    print(f"median images/s: dcbench {medians['dcbench']:.0f}, reference {medians['reference']:.0f}, "
          f"ratio {results['ratio']:.2f} (per round: min {min(paired):.2f}, median {statistics.median(paired):.2f}); "
          f"precision {results['precision']}; allocator: {results['allocator']}")
    for k in medians:
        print(f"{k:9s}: {flops[k] / 1e6:6.1f} MFLOP/image, {results['achieved_gflops'][k]:6.1f} GFLOP/s "
              f"= {100 * results['fraction_of_matmul'][k]:4.1f}% of the measured fp32 matmul {peak:.0f} GFLOP/s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    main()
