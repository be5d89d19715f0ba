"""SpatialVAE (Bepler, Zhong, Kelley, Brignole, Berger; NeurIPS 2019): "Explicitly disentangling
image content from translation and rotation with spatial-VAE".

The transformation is explicit. An inference MLP on the flattened input gives a Gaussian
posterior over a rotation (theta in 2D), a translation (dx, dy) and a content code z. The
generator is a coordinate MLP: every pixel coordinate of a [-1, 1] grid is rotated by theta and
shifted by (dx, dy), and g(R p + t, z) gives that pixel's value (Bernoulli logits). Because the
transformation acts on the coordinates only, z can only explain what is left once pose is taken
out. Loss: negative ELBO = reconstruction log-likelihood summed over pixels + KL terms,
averaged over the batch, one reparameterised sample per input.

As in the reference (tbepler/spatial-VAE, train_mnist.py):
- inference network and generator: 2 hidden layers of 500, tanh; the content code enters the
  generator through its own linear layer added to the coordinate layer's output;
- priors: theta ~ N(0, theta_prior^2) with theta_prior = pi/4 and the full Gaussian KL
  (rotation_kl='full'); the translation latents are N(0, 1) and scaled by dx_scale = 0.1 before
  shifting the grid (so the translation prior has std 0.1 grid units); z ~ N(0, I);
- Adam, lr 1e-4, batch 100; the grid is x: -1 -> 1 along the columns, y: 1 -> -1 down the rows.

Departures, and why:
- Content size: the reference's MNIST script uses z_dim 2; dcbench compares methods at
  DualContrast's latent size d (10 for 28x28 grey, 16 for 64x64 colour, 50 for volumes), so
  `latent_dim` defaults to those. 200 epochs in the paper preset (the DualContrast paper's
  protocol; the reference script's default is 100).
- The 'quick' preset uses a narrower generator (`generator_hidden` 64) and lr 1e-3: with 500
  units the per-pixel MLP costs ~118 GFLOP per MNIST batch of 100 (forward and backward), over
  half an hour per epoch on a 2-core CPU. The paper preset keeps 500.
- Codes: content = posterior mean of z; transformation = posterior means of (theta, dx, dy),
  with the translation in grid units (latent mean x dx_scale), i.e. what the generator applies.
  A switched-off part (`rotate`/`translate` = false) reads as zeros so codes keep their width.
- Colour images: 3 Bernoulli logits per pixel. Non-square grids keep square pixels (the longest
  axis spans [-1, 1]); on square grids this is the reference's grid.
- Volumes (1, D, H, W): 3D grid, a rotation from a 3-number head (axis-angle by default,
  `rotation_3d='euler'` for Rz Ry Rx Euler angles), a 3D shift; transformation code = (3
  rotation numbers, 3 shifts). Gaussian likelihood with unit variance (0.5 * squared error),
  since volumes are z-scored, not in [0, 1]. For volumes the reference's particle script
  (train_particles.py, cryo-EM) is the closer model, so they default to theta_prior = pi and its
  "no penalty on the mean" rotation KL (rotation_kl='no_mean'): orientations are uniform.
- Volumes in the 'quick' preset: the networks see low-passed, 2x binned particles
  (dcbench.volume_input; the grid is the binned one, still spanning [-1, 1], so rotations and
  shifts in grid units mean the same), decode upsamples back to the input grid, and the budget
  is DualContrast's quick one (batch 32, 70 epochs, lr 1e-3). The paper preset sees raw volumes.
- Speed and memory, same function: the generator's per-pixel MLP and the reconstruction loss
  run as one hand-written forward-and-backward over blocks of pixels (networks.py), so the
  (pixels x inputs x hidden) activations are held for one block at a time, whatever the batch
  (32^3 voxels x 500 units would be 16M floats per volume and layer). tanh is computed as
  2 sigmoid(2x) - 1 (torch's CPU tanh is ~3x slower than its sigmoid). With the layout in
  networks._PixelMLP, an MNIST step is about 1.8x faster than autograd over nn.Linear + tanh.
  Batches of any size work (the last is not dropped).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from dcbench.api import RunContext, Split
from dcbench.errors import DcbenchError
from dcbench.settings_checks import require_number, require_whole
from dcbench.torchkit import LossMeter, TorchMethod, make_adam, minibatches, retain_freed_memory
from dcbench.volume_input import QUICK_VOLUME_BUDGET, RAW_VOLUMES, VolumeInput
from dcbench_plugins.common.latent import paper_latent_dim
from dcbench_plugins.spatialvae import networks

LIKELIHOODS = ("bernoulli", "gaussian")
ROTATION_KLS = ("full", "no_mean")
# Hidden activations (pixels x inputs x hidden units) one decoding pass may hold per layer.
ACTIVATION_BUDGET = 1 << 26
# (pixel, input) rows per block of the fused reconstruction loss. Blocks bound the memory of a
# step (volumes); they do not make CPU steps faster (cache-sized blocks measured no faster, and
# many small ops are slower when the cores are shared), so an MNIST batch (78,400 rows) is one
# block.
BLOCK_ROWS = {"cpu": 1 << 17, "cuda": 1 << 19}


class SpatialVAEModel(nn.Module):
    """Inference network, coordinate generator, and the fixed pixel grid.

    Latent layout: [rotation (1 or 3, if rotate) | translation (2 or 3, if translate) | content].
    """

    def __init__(self, input_shape: tuple[int, ...], cfg: dict[str, Any]) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.spatial = networks.spatial_dims(input_shape)
        self.rot_full = networks.rotation_params(input_shape)
        self.n_rot = self.rot_full if cfg["rotate"] else 0
        self.n_shift = self.spatial if cfg["translate"] else 0
        self.latent_dim = int(cfg["latent_dim"])
        self.n_latent = self.n_rot + self.n_shift + self.latent_dim
        self.dx_scale = float(cfg["dx_scale"])
        self.rotation_3d = str(cfg["rotation_3d"])
        self.encoder = networks.InferenceNetwork(
            math.prod(input_shape), self.n_latent, int(cfg["encoder_hidden"]), int(cfg["encoder_layers"]),
            str(cfg["activation"]))
        self.generator = networks.SpatialGenerator(
            self.spatial, self.latent_dim, int(cfg["generator_hidden"]), int(cfg["generator_layers"]),
            input_shape[0], str(cfg["activation"]))
        # Not in the state dict: it is a function of the input shape.
        grid = networks.coordinate_grid(input_shape[1:])
        self.register_buffer("grid_aug", torch.cat([grid, torch.ones(len(grid), 1)], 1), persistent=False)

    def pose(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split latent vectors into (rotation params, shift in grid units, content), with a
        switched-off rotation or translation as zeros of its full width."""
        b = latent.shape[0]
        rot, shift, content = latent.split([self.n_rot, self.n_shift, self.latent_dim], dim=1)
        if not self.n_rot:
            rot = latent.new_zeros(b, self.rot_full)
        shift = shift * self.dx_scale if self.n_shift else latent.new_zeros(b, self.spatial)
        return rot, shift, content

    def render(self, rotation: torch.Tensor, shift: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """Generator output (logits or means) of shape (B, *input_shape) for the given
        rotation parameters, shifts (grid units) and content codes."""
        matrices = networks.rotation_matrices(rotation, self.rotation_3d)
        out = self.generator(self.grid_aug, matrices, shift, content)  # (N, B, C)
        return out.permute(1, 2, 0).reshape(-1, *self.input_shape)

    def recon_loss(self, rotation: torch.Tensor, shift: torch.Tensor, content: torch.Tensor, x: torch.Tensor,
                   likelihood: str, block_rows: int) -> torch.Tensor:
        """-log p(x | rotation, shift, content) summed over the batch, as render() then the
        likelihood would give, without storing the per-pixel activations."""
        matrices = networks.rotation_matrices(rotation, self.rotation_3d)
        target = x.flatten(2).permute(2, 0, 1).contiguous()  # (N, B, C), the generator's layout
        return self.generator.recon_loss(self.grid_aug, matrices, shift, content, target, likelihood, block_rows)


def gaussian_kl(mu: torch.Tensor, logstd: torch.Tensor, sigma: float = 1.0, penalise_mean: bool = True) -> torch.Tensor:
    """KL(N(mu, exp(logstd)^2) || N(0, sigma^2)) per element. Without the mean penalty it is the
    reference particle script's rotation KL (the posterior mean is free)."""
    ratio = torch.exp(2 * logstd) / sigma**2
    if penalise_mean:
        ratio = ratio + mu * mu / sigma**2
    return -logstd + math.log(sigma) + 0.5 * ratio - 0.5


class SpatialVAE(TorchMethod):
    name = "spatialvae"
    generative = True

    @classmethod
    def supports(cls, input_shape: tuple[int, ...]) -> str | None:
        return networks.unsupported_reason(input_shape)

    @classmethod
    def default_config(cls, preset: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
        volume = len(input_shape) == 4
        config: dict[str, Any] = {
            # DualContrast's d, so that methods are compared at equal latent size.
            "latent_dim": paper_latent_dim(input_shape),
            "epochs": 150 if volume else 200,
            "batch_size": 50 if volume else 100,
            "lr": 1e-4,
            "theta_prior": math.pi if volume else math.pi / 4,  # std of the rotation prior (radians)
            "rotation_kl": "no_mean" if volume else "full",
            "dx_scale": 0.1,  # std of the translation prior, in grid units ([-1, 1] spans the image)
            "rotate": True,
            "translate": True,
            "rotation_3d": "axis_angle",
            "encoder_hidden": 500,
            "encoder_layers": 2,
            "generator_hidden": 500,
            "generator_layers": 2,
            "activation": "tanh",
            "likelihood": "gaussian" if volume else "bernoulli",
            # On CPU, let glibc keep freed memory for reuse (dcbench.torchkit.retain_freed_memory).
            "retain_freed_memory": True,
        }
        if volume:
            # How the networks see the particles (dcbench.volume_input): raw unless a preset
            # or --set says otherwise.
            config.update(RAW_VOLUMES)
        if preset == "quick":
            # The per-pixel MLP's cost grows with the square of its width: 64 units make an
            # MNIST epoch tens of seconds on a 2-core CPU instead of tens of minutes.
            config.update(epochs=20, lr=1e-3, generator_hidden=64)
            if volume:
                # The 3D methods' shared quick budget (DualContrast's): low-passed, 2x binned
                # particles, 70 epochs of 32 = 3,150 steps on subtomo-sim.
                config.update(QUICK_VOLUME_BUDGET)
        return config

    @classmethod
    def check_config(cls, config: dict[str, Any], input_shape: tuple[int, ...]) -> None:
        super().check_config(config, input_shape)  # lowpass_sigma / bin
        choices = {"likelihood": LIKELIHOODS, "rotation_kl": ROTATION_KLS, "activation": networks.ACTIVATIONS,
                   "rotation_3d": networks.ROTATIONS_3D}
        for key, allowed in choices.items():
            if config[key] not in allowed:
                raise DcbenchError(f"unknown {key} '{config[key]}': use {', '.join(allowed)}")
        for key in ("latent_dim", "encoder_hidden", "encoder_layers", "generator_hidden", "generator_layers",
                    "batch_size"):
            require_whole(config, key, cls.name)
        # the two priors' standard deviations (rotation in radians, translation in grid units)
        require_number(config, "theta_prior", cls.name, above=0, meaning="std of the rotation prior")
        require_number(config, "dx_scale", cls.name, above=0, meaning="std of the translation prior")

    def build_model(self) -> nn.Module:
        cfg = self.config
        reason = networks.unsupported_reason(self.input_shape)
        if reason:
            raise DcbenchError(reason)
        self.check_config(cfg, self.input_shape)  # planning did; kept for direct constructions
        self.volume_input = VolumeInput.from_config(cfg, self.input_shape)
        return SpatialVAEModel(self.volume_input.network_shape(self.input_shape), cfg)

    # ----------------------------------------------------------------------------- training
    def training_losses(self, x: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """Negative ELBO terms of a batch x with reparameterisation noise (len(x), n_latent),
        each averaged over the batch; 'total' = recon + kl is what is minimised."""
        cfg, model = self.config, self.model
        mu, logstd = model.encoder(x)
        latent = mu + noise * torch.exp(logstd)
        rotation, shift, content = model.pose(latent)
        block_rows = BLOCK_ROWS["cuda" if x.is_cuda else "cpu"]
        recon = model.recon_loss(rotation, shift, content, x, cfg["likelihood"], block_rows)
        r = model.n_rot
        kl = gaussian_kl(mu[:, r:], logstd[:, r:]).sum()  # translation and content: N(0, 1)
        if r:
            kl = kl + gaussian_kl(mu[:, :r], logstd[:, :r], float(cfg["theta_prior"]),
                                  penalise_mean=cfg["rotation_kl"] == "full").sum()
        recon, kl = recon / len(x), kl / len(x)
        return {"recon": recon, "kl": kl, "total": recon + kl}

    def train_step(self, x: torch.Tensor, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """One Adam step on batch x; the noise comes from the method's seeded generator."""
        noise = torch.randn(len(x), self.model.n_latent, generator=self.generator).to(self.device)
        terms = self.training_losses(x, noise)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        return {key: value.detach() for key, value in terms.items()}

    def fit(self, train: Split, context: RunContext) -> None:
        cfg = self.config
        if self.device == "cpu" and cfg.get("retain_freed_memory", True):
            retain_freed_memory()
        data = self.training_tensor(train.x)
        optimizer = make_adam(self.model.parameters(), lr=float(cfg["lr"]))
        batch_size = int(cfg["batch_size"])
        steps_per_epoch = math.ceil(len(data) / batch_size)

        def train_one_epoch(epoch: int) -> dict[str, float]:
            self.model.train()
            meter = LossMeter()
            for step, index in enumerate(minibatches(len(data), batch_size, self.generator)):
                meter.add(self.train_step(data[index.to(self.device)], optimizer))
                if context.step_progress is not None:  # the runner's early estimate of the run's duration
                    context.step_progress.step_done(step, steps_per_epoch)
            return meter.means()

        self.run_epochs(train_one_epoch, context, optimizer)

    # ----------------------------------------------------------------------------- readout
    def transformation_code(self, mu: torch.Tensor) -> torch.Tensor:
        rotation, shift, _ = self.model.pose(mu)
        return torch.cat([rotation, shift], dim=1)

    def encode_tensor(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, _ = self.model.encoder(x)
        return mu[:, self.model.n_rot + self.model.n_shift:], self.transformation_code(mu)

    @torch.no_grad()
    def decode(self, content: np.ndarray, transformation: np.ndarray) -> np.ndarray:
        """Inputs generated from content codes and (rotation params, shifts in grid units);
        images as probabilities in [0, 1] (Bernoulli), volumes as the Gaussian means (rendered
        on the networks' grid, then restored to the input grid)."""
        self.model.eval()
        model = self.model
        content_t, transformation_t = self.to_tensor(content), self.to_tensor(transformation)
        expected = model.rot_full + model.spatial
        if transformation_t.shape[1] != expected or content_t.shape[1] != model.latent_dim:
            raise DcbenchError(f"decode expects content codes of width {model.latent_dim} and transformation "
                               f"codes of width {expected}, got {content_t.shape[1]} and {transformation_t.shape[1]}")
        parts = []
        step = max(1, ACTIVATION_BUDGET // (model.grid_aug.shape[0] * int(self.config["generator_hidden"])))
        for i in range(0, len(content_t), step):
            rotation, shift = transformation_t[i:i + step].split([model.rot_full, model.spatial], dim=1)
            out = model.render(rotation, shift, content_t[i:i + step])
            out = torch.sigmoid(out) if self.config["likelihood"] == "bernoulli" else out
            parts.append(self.volume_input.restore(out))
        if not parts:
            return np.zeros((0, *self.input_shape), dtype=np.float32)
        return torch.cat(parts).float().cpu().numpy()
