"""DualContrast (Uddin, Armouti, Xu): implicit content-transformation disentanglement.

Objective per batch x, with x' = T(x) a content-preserving transformation:
  VAE(x) + VAE(x')                                  reconstruction + KL on c and z
  L_con(c) = |cos(c(x), c(x_perm))| + (1 - |cos(c(x), c(x'))|)
  L_con(z) = |cos(z(x), z(x'))| + (1 - |cos(z(Dec(c1, eps)), z(Dec(c2, eps)))|)
where c1, c2 are the (detached) content codes of two permutations of the batch and eps one
transformation code drawn from the prior: two generated images that share a transformation.

Differences from the reference training loop, none of which changes the objective:
- x and x' are encoded and decoded in one batched pass; the negative content pair reuses the
  codes of x (permuted) instead of re-encoding the permuted images.
- The latent-space positive pair only trains the encoder (as in the reference's second,
  encoder-only step), so its images are generated without gradient instead of back-propagating
  through a decoder that is not stepped. All terms are summed and taken in one Adam step.
- Rotation angles are drawn per sample by default (`per_sample_transform`); the reference drew
  one angle per batch. Batches of any size work (the last batch is not dropped).

Speed (docs/performance.md, bench/bench_dualcontrast_throughput.py): besides the passes above,
the step draws its random numbers in a few batched calls, uses fused Adam, and the networks
run channels-last with InstanceNorm + ReLU as one autograd node; fp32 unless the CPU has native
bf16 (`precision`). tests/test_dualcontrast_objective.py checks that the loss terms and
gradients equal the reference loop's on the same draws.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from dcbench.api import RunContext, Split, StepProgress
from dcbench.errors import DcbenchError
from dcbench.settings_checks import require_number
from dcbench.torchkit import (
    TorchMethod,
    autocast,
    autocast_dtype,
    make_adam,
)
from dcbench.volume_input import QUICK_VOLUME_BUDGET, RAW_VOLUMES, VolumeInput
from dcbench_plugins.common.latent import paper_latent_dim
from dcbench_plugins.dualcontrast import losses, networks, transforms
from dcbench_plugins.dualcontrast.small_volume_networks import small_volume_networks, small_volume_unsupported

PAIRS = ("both", "positive", "negative")


class StepDraws(NamedTuple):
    """The random draws of one training step (B = batch size, d = latent size)."""

    noise: torch.Tensor  # (2B, 2d): reparameterisation noise, [z | c], for x then x'
    content_perm: torch.Tensor  # (B,): the negative content pair is (c(x), c(x)[perm])
    latent_perms: torch.Tensor  # (2, B): the content codes decoded with the shared eps
    eps: torch.Tensor  # (B, d): the transformation code shared by the latent positive pair


NETWORKS = ("paper", "small")


def check_networks(size: str, shape: tuple[int, ...], input_shape: tuple[int, ...]) -> None:
    """Refuse a `networks` setting that cannot take the network-grid shape `shape` (the input
    shape after VolumeInput's binning)."""
    if size not in NETWORKS:
        raise DcbenchError(f"unknown networks '{size}': use {' or '.join(NETWORKS)}")
    if size == "small" and (reason := small_volume_unsupported(shape)):
        raise DcbenchError(reason)
    if size == "paper" and tuple(shape) != tuple(input_shape):
        raise DcbenchError(f"the paper's networks take {'x'.join(map(str, input_shape))} inputs, not binned "
                           f"{'x'.join(map(str, shape))} ones: set networks=small or bin=1")


def check_views(config: dict[str, Any], input_shape: tuple[int, ...], method: str) -> None:
    """While planning: the settings DualContrast shares with the SimCLR baselines, i.e. T(x)
    (`transform`, `max_rotation_degrees`) and the networks for the binned input shape."""
    transforms.from_config(config, input_shape)  # an unknown transform, or one this shape cannot take
    if "max_rotation_degrees" in config:  # angles are drawn in [-max, max]: 180 is every orientation
        require_number(config, "max_rotation_degrees", method, least=0, most=180)
    shape = VolumeInput.from_config(config, input_shape).network_shape(input_shape)
    check_networks(str(config.get("networks", "paper")), shape, input_shape)


class DualContrastModel(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], latent_dim: int, size: str = "paper") -> None:
        super().__init__()
        if size == "small":
            self.encoder, self.decoder = small_volume_networks(input_shape, latent_dim)
        else:
            self.encoder, self.decoder = networks.build_networks(input_shape, latent_dim)


class DualContrast(TorchMethod):
    name = "dualcontrast"
    generative = True
    # Overridden by the named ablations.
    ablation: dict[str, Any] = {}

    @classmethod
    def supports(cls, input_shape: tuple[int, ...]) -> str | None:
        return networks.unsupported_reason(input_shape)

    @classmethod
    def check_config(cls, config: dict[str, Any], input_shape: tuple[int, ...]) -> None:
        super().check_config(config, input_shape)  # precision, lowpass_sigma / bin
        if config["pairs"] not in PAIRS:
            raise DcbenchError(f"unknown pairs '{config['pairs']}': use {', '.join(PAIRS)}")
        check_views(config, input_shape, cls.name)

    @classmethod
    def default_config(cls, preset: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
        volume = len(input_shape) == 4
        latent_dim = paper_latent_dim(input_shape)
        config: dict[str, Any] = {
            "latent_dim": latent_dim,
            "epochs": 200 if not volume else 150,
            "batch_size": 50 if volume else 100,
            "lr": 1e-4,
            "lr_step_epochs": 50,  # step decay x lr_gamma every this many epochs
            "lr_gamma": 0.1,
            "kl_weight": 0.01,  # per input element, as in the reference code
            "recon_weight": 3.0 if volume else 1.0,
            # The reference divides each pair loss by the number of code elements (batch x d),
            # i.e. weighs the batch-mean pair losses by 1/d (3/d for volumes); kept as a weight.
            "contrastive_weight": (3.0 if volume else 1.0) / latent_dim,
            "con_c": True,
            "con_z": True,
            "pairs": "both",
            "transform": "rotation",
            "max_rotation_degrees": 90.0,
            "per_sample_transform": True,
            "precision": "auto",
            # On CPU, let glibc keep freed memory for reuse (process-wide; see
            # dcbench.torchkit.retain_freed_memory): ~10% faster training steps.
            "retain_freed_memory": True,
        }
        if volume:
            # How the networks see the particles (dcbench.volume_input): the paper's networks on
            # the raw 32^3 particles unless a preset or --set says otherwise.
            config.update(RAW_VOLUMES, networks="paper")
        if preset == "quick" and volume:
            # Learns on a laptop CPU (docs/subtomograms.md, "Why volumes did not train"): low-pass
            # (sigma 1.5 voxels) and 2x binning against the noise, the small networks (BatchNorm
            # before the heads against collapsed codes), full-range Euler angles for T(x) since
            # particles come in every orientation; 70 epochs of 32 = 3,150 steps on subtomo-sim.
            config.update(QUICK_VOLUME_BUDGET, networks="small",
                          lr_step_epochs=50, max_rotation_degrees=180.0)
        elif preset == "quick":
            # Fits a laptop CPU: a higher learning rate so that a few epochs get somewhere.
            config.update(epochs=20, lr=1e-3, lr_step_epochs=10)
        config.update(cls.ablation)
        return config

    def build_model(self) -> nn.Module:
        cfg = self.config
        self.check_config(cfg, self.input_shape)  # planning did; kept for direct constructions (tests, bench)
        self.transform = transforms.from_config(cfg, self.input_shape)
        self.amp_dtype = autocast_dtype(cfg["precision"], self.device)
        self.volume_input = VolumeInput.from_config(cfg, self.input_shape)
        shape = self.volume_input.network_shape(self.input_shape)
        return DualContrastModel(shape, int(cfg["latent_dim"]), str(cfg.get("networks", "paper")))

    # ----------------------------------------------------------------------------- training
    def draw(self, b: int) -> StepDraws:
        """The step's random draws for a batch of b: one normal draw split four ways, and the
        three permutations."""
        d = int(self.config["latent_dim"])
        normal = torch.randn(b, 5 * d, generator=self.generator).to(self.device)
        perms = torch.stack([torch.randperm(b, generator=self.generator) for _ in range(3)]).to(self.device)
        noise = torch.cat([normal[:, :2 * d], normal[:, 2 * d:4 * d]])
        return StepDraws(noise=noise, content_perm=perms[0], latent_perms=perms[1:], eps=normal[:, 4 * d:])

    def training_losses(self, x: torch.Tensor, x_t: torch.Tensor | None = None,
                        draws: StepDraws | None = None) -> dict[str, torch.Tensor]:
        """All loss terms for one batch; 'total' is what is minimised. x_t (= T(x)) and the
        random draws are made here unless given (tests give them to compare objectives)."""
        cfg = self.config
        use_pos, use_neg = cfg["pairs"] in ("both", "positive"), cfg["pairs"] in ("both", "negative")
        w = float(cfg["contrastive_weight"])
        encoder, decoder = self.model.encoder, self.model.decoder
        b = x.shape[0]
        draws = self.draw(b) if draws is None else draws
        if x_t is None:
            with torch.no_grad():
                x_t = self.transform(x, self.generator)
        views = torch.cat([x, x_t])
        latent_pair = bool(cfg["con_z"]) and use_pos
        generated = None
        with autocast(self.device, self.amp_dtype):
            mu_z, logvar_z, mu_c, logvar_c = encoder(views)
            d = mu_z.shape[1]
            z = mu_z + draws.noise[:, :d] * torch.exp(0.5 * logvar_z)
            c = mu_c + draws.noise[:, d:] * torch.exp(0.5 * logvar_c)
            if latent_pair and hasattr(decoder, "decode_pair"):
                # The volume decoder's output layer runs once for the views and the generated pair.
                recon, generated = decoder.decode_pair(c, z, *self._latent_pair_codes(mu_c[:b].float().detach(), draws))
            else:
                recon = decoder(c, z)
        recon_term, kl_term = losses.vae_loss(recon.float(), views, mu_z.float(), logvar_z.float(),
                                              mu_c.float(), logvar_c.float(),
                                              cfg["recon_weight"], cfg["kl_weight"])
        # The reference sums the VAE loss of x and of x', each a per-batch mean: twice the mean.
        terms = {"recon": 2 * recon_term, "kl": 2 * kl_term}
        mu_c, mu_z = mu_c.float(), mu_z.float()
        c_x, c_xt, z_x, z_xt = mu_c[:b], mu_c[b:], mu_z[:b], mu_z[b:]
        zero = views.new_zeros(())
        con_c = zero
        if cfg["con_c"]:
            if use_neg:  # the permuted codes of x are c(x[perm]): no need to encode x[perm] again
                con_c = con_c + losses.negative_pair_loss(c_x, c_x[draws.content_perm])
            if use_pos:
                con_c = con_c + losses.positive_pair_loss(c_x, c_xt)
        con_z = zero
        if cfg["con_z"]:
            if use_neg:
                con_z = con_z + losses.negative_pair_loss(z_x, z_xt)
            if use_pos:
                con_z = con_z + self._latent_positive_pair(c_x.detach(), draws, generated)
        terms["con_c"], terms["con_z"] = w * con_c, w * con_z
        terms.update(self.extra_terms(c_x, c_xt, z_x, z_xt))
        terms["total"] = sum(terms.values(), zero)
        return terms

    def extra_terms(self, c_x: torch.Tensor, c_xt: torch.Tensor, z_x: torch.Tensor,
                    z_xt: torch.Tensor) -> dict[str, torch.Tensor]:
        """Further loss terms on the posterior means of x and x' = T(x), added to the total.
        None here; variants built on this network and VAE term (simclr-gen) add theirs."""
        return {}

    def _latent_pair_codes(self, content: torch.Tensor, draws: StepDraws) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder inputs (c, z) of the latent positive pair: both permutations of the content
        codes (one gather), each with the shared eps."""
        return content[draws.latent_perms.reshape(-1)], torch.cat([draws.eps, draws.eps])

    def _latent_positive_pair(self, content: torch.Tensor, draws: StepDraws,
                              generated: torch.Tensor | None = None) -> torch.Tensor:
        """Decode one prior draw eps with two permutations of the batch's content codes; the two
        images share their transformation, so their z codes form a positive pair. Only the
        encoder learns from this term, so the images are generated without gradient (or given:
        the decoder's output for _latent_pair_codes, made without gradient)."""
        b = content.shape[0]
        if generated is None:
            with torch.no_grad(), autocast(self.device, self.amp_dtype):
                generated = self.model.decoder(*self._latent_pair_codes(content, draws))
        with autocast(self.device, self.amp_dtype):
            z_generated = self.model.encoder(generated.float())[0].float()
        return losses.positive_pair_loss(z_generated[:b], z_generated[b:])

    def make_optimizer(self) -> torch.optim.Optimizer:
        """One Adam over all parameters (the reference's two steps, taken as one)."""
        return make_adam(self.model.parameters(), lr=float(self.config["lr"]))

    def train_epoch(self, data: torch.Tensor, optimizer: torch.optim.Optimizer,
                    max_steps: int | None = None, progress: StepProgress | None = None) -> dict[str, float]:
        """One pass over `data` in shuffled minibatches (only the first max_steps batches if
        given): exactly what fit runs each epoch. Returns the mean of each loss term."""
        return self.optimise_epoch(data, optimizer, self.training_losses, max_steps, progress)

    def fit(self, train: Split, context: RunContext) -> None:
        cfg = self.config
        data = self.training_tensor(train.x)
        optimizer = self.make_optimizer()
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(cfg["lr_step_epochs"]),
                                                    gamma=float(cfg["lr_gamma"]))
        self.run_epochs(lambda epoch: self.train_epoch(data, optimizer, progress=context.step_progress), context,
                        optimizer, scheduler)

    # ----------------------------------------------------------------------------- readout
    def encode_tensor(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu_z, _, mu_c, _ = self.model.encoder(x)
        return mu_c, mu_z

    @torch.no_grad()
    def decode(self, content: np.ndarray, transformation: np.ndarray) -> np.ndarray:
        self.model.eval()
        out = self.model.decoder(self.to_tensor(content), self.to_tensor(transformation))
        return self.volume_input.restore(out.float()).cpu().numpy()


class DualContrastNoConC(DualContrast):
    name = "dualcontrast-no-con-c"
    ablation = {"con_c": False}


class DualContrastNoConZ(DualContrast):
    name = "dualcontrast-no-con-z"
    ablation = {"con_z": False}


class TwoLatentVAE(DualContrast):
    """The paper's "VAE with 2 latent spaces": DualContrast's networks and VAE term on x and
    x' = T(x), no contrastive terms. Nothing tells c from z apart but their decoder inputs."""

    name = "vae2"
    ablation = {"con_c": False, "con_z": False}
