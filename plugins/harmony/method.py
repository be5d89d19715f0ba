"""Harmony (Uddin, Howe, Zeng, Xu, CVPR 2022): explicit, parameterised transformations.

A siamese autoencoder. For a batch x, x2 = T(x) with a random rotation (2D: U(-90, 90) degrees;
3D: three Euler angles each U(-90, 90) degrees) and shift (U(-3, 3) px; 3D U(-4, 4) voxels),
drawn per sample. One encoder maps each input to transformation parameters phi and a content
posterior q(c|x) = N(mu, diag exp(logvar)). Each input is warped to canonical pose by its own
phi (differentiable through grid_sample, so phi learns from the image terms), and the decoder
reconstructs the canonical image from a sample c ~ q(c|x). Per batch of B (sums over pixels,
means over the batch, as in the reference's loss_fn):

  recon  = |Dec(c1) - canon(x, phi1)|^2 + |Dec(c2) - canon(x2, phi2)|^2
  branch = |canon(x, phi1) - canon(x2, phi2)|^2
  kl     = (KL(q1||q2) + KL(q2||q1)) / 2 / d           (symmetric; see below)
  total  = gamma * (recon + branch) + kl + prior_kl_weight * KL(q||N(0,I)) / d

The reconstruction target is the canonicalised input, not detached (as in the reference): the
decoder and the pose estimate meet half way. gamma defaults to ceil(N_train / (1000 B)), the
reference's estimate_optimal_gamma (1 for MNIST at B = 100).

Codes: content = mu, transformation = phi. decode(c, phi) = pose(Dec(c), phi): the canonical
image put back into the pose phi was read from (the transfer grid's Dec(c_j, z_i)).

Differences from the reference code (xulabs/aitom .../harmony, model2D and model3D):
- gamma weighs the image terms and the KL has weight 1, as in the reference's loss_fn
  (`w * (recon1 + recon2 + branch) + kl`); methods.md calls gamma the KL's weight. For MNIST
  the default gamma is 1 and the two readings coincide.
- The KL between the two content posteriors is symmetric by default (`kl_symmetric`), as the
  method is described; the reference code uses KL(q1||q2) only (kl_symmetric=false). Both
  directions are averaged, so its scale matches the reference's one-directional term.
- The reference has no KL to the N(0, I) prior; `prior_kl_weight` (default 0) adds one.
- Predicted shifts are squashed to +-`shift_bound_pixels` (b * tanh(s / b), default twice the
  training shift range: 6 px, volumes 8 voxels). The reference leaves them unbounded, and its
  loss has a trivial minimum: shift both inputs out of the frame, so that both canonical images
  and the decoder output are empty (recon = branch = 0). At lr 1e-3 that is what happened within
  three epochs on MNIST (D(c|c) at chance). shift_bound_pixels=0 restores the reference.
- Weights start Glorot-uniform (tanh gain) with zero biases instead of PyTorch's default, which
  shrinks the signal ~1/sqrt(3) per tanh layer: with it the content mean hardly depended on the
  input after an epoch (networks.glorot_init).
- The 2D decoder ends with a sigmoid (images in [0, 1]) instead of tanh; 3D output is linear.
- Each warp is one bilinear grid_sample (rotation about the centre, then shift; poses.py)
  instead of kornia's rotate + translate (two resamplings); 3D Euler angles in the order
  Rz Ry Rx. The 3D random rotation draws each Euler angle U(-90, 90) degrees, as the reference
  does (not uniform over SO(3)).
- The reference trains at lr 1e-4 with drop_last batches; here every batch is used, and the
  quick preset trains at lr 1e-3. The reference picks its batch size and epochs per run on the
  command line; the paper preset uses DualContrast's paper budgets (200 epochs, batch 100;
  volumes 150 epochs, batch 50) and DualContrast's content size (10 / 16 / 50), so that the
  benchmark compares methods at equal code size.
- The 3D nets take any cubic side divisible by 8 (the reference's kernel sizes assume 32).
- Volumes in the quick preset: the networks see low-passed, 2x binned particles
  (dcbench.volume_input) and the 3D methods' shared quick budget (batch 32, 70 epochs, lr 1e-3).
  The poses act on the binned grid, but shift settings and the shifts in the codes stay in
  voxels of the input grid (converted by the bin factor); decode upsamples back to the input grid.

Observed behaviour (MNIST, 300 steps at lr 1e-3): the poses are learned first (transfer-grid
rows rotate), while the decoder still mostly ignores the content: nothing but reconstruction
opposes the view-KL, which shrinks by widening both posteriors, so the posterior std grows
(to ~2 after 200 steps) and drowns the content mean. The reference objective has the same
property; prior_kl_weight > 0 caps the std near 1 but did not speed up learning in short runs.
"""

from __future__ import annotations

import math
from typing import Any

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
from dcbench_plugins.harmony import networks, poses


def gaussian_kl(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor,
                logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mu1, e^logvar1) || N(mu2, e^logvar2)) per row, summed over the diagonal."""
    ratio = torch.exp(logvar1 - logvar2)
    return 0.5 * (ratio + (mu1 - mu2).pow(2) * torch.exp(-logvar2) - 1 - (logvar1 - logvar2)).sum(1)


def configured_gamma(config: dict[str, Any]) -> float | None:
    """The `gamma` setting: None for the default rule (0, or unset), else the weight (>= 0)."""
    gamma = config.get("gamma")
    if gamma in (None, "", "none", "None"):
        return None
    gamma = float(gamma)
    if not math.isfinite(gamma) or gamma < 0:
        raise DcbenchError(f"gamma must be a finite number >= 0 (0 = the default rule), got {gamma}; set e.g. "
                           "--set gamma=0")
    return gamma or None


def default_gamma(n_train: int, batch_size: int) -> int:
    """The reference's estimate_optimal_gamma: ceil(N_train / (1000 * B))."""
    return max(1, math.ceil(n_train / (1000 * batch_size)))


class HarmonyModel(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], latent_dim: int, shift_bound: float = 0.0) -> None:
        super().__init__()
        self.n_phi = networks.transform_dims(input_shape)
        self.n_rot = 1 if len(input_shape) == 3 else 3
        self.latent_dim = latent_dim
        self.shift_bound = float(shift_bound)
        self.encoder, self.decoder = networks.build_networks(input_shape, latent_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(phi, mu, logvar) of a batch."""
        out = self.encoder(x)
        p, d = self.n_phi, self.latent_dim
        phi = out[:, :p]
        if self.shift_bound > 0:
            # b * tanh(s / b): the identity for small shifts, never more than b pixels, so the
            # warp cannot push the content out of the frame (see the module docstring).
            b, r = self.shift_bound, self.n_rot
            phi = torch.cat([phi[:, :r], b * torch.tanh(phi[:, r:] / b)], dim=1)
        return phi, out[:, p:p + d], out[:, p + d:]


class Harmony(TorchMethod):
    name = "harmony"
    generative = True

    @classmethod
    def supports(cls, input_shape: tuple[int, ...]) -> str | None:
        return networks.unsupported_reason(input_shape)

    @classmethod
    def default_config(cls, preset: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
        volume = len(input_shape) == 4
        config: dict[str, Any] = {
            # DualContrast's content size for the same data, so codes compare at equal size.
            "latent_dim": paper_latent_dim(input_shape),
            "epochs": 150 if volume else 200,
            "batch_size": 50 if volume else 100,
            "lr": 1e-4,  # the reference's default
            "gamma": 0.0,  # weight of the image terms; 0 -> ceil(N_train / (1000 * batch_size))
            "kl_symmetric": True,  # false: the reference code's KL(q1||q2)
            "prior_kl_weight": 0.0,  # the reference has no KL to N(0, I)
            "max_rotation_degrees": 90.0,
            "max_shift_pixels": 4.0 if volume else 3.0,
            # Predicted shifts are squashed into +-this many pixels (0: unbounded, as the reference).
            "shift_bound_pixels": 8.0 if volume else 6.0,
            "precision": "auto",
            # On CPU, let glibc keep freed memory for reuse (dcbench.torchkit.retain_freed_memory).
            "retain_freed_memory": True,
        }
        if volume:
            # How the networks see the particles (dcbench.volume_input): raw unless a preset or
            # --set says otherwise.
            config.update(RAW_VOLUMES)
        if preset == "quick" and volume:
            # The 3D methods' shared quick budget (DualContrast's): low-passed, 2x binned
            # particles (16^3 from subtomo-sim's 32^3), 70 epochs of 32 = 3,150 steps there.
            config.update(QUICK_VOLUME_BUDGET)
        elif preset == "quick":
            config.update(epochs=20, lr=1e-3)
        return config

    @classmethod
    def check_config(cls, config: dict[str, Any], input_shape: tuple[int, ...]) -> None:
        super().check_config(config, input_shape)  # precision, lowpass_sigma / bin
        configured_gamma(config)
        # angles are drawn in [-max, max] (180: every orientation); shifts in pixels, 0: none / unbounded
        require_number(config, "max_rotation_degrees", cls.name, least=0, most=180)
        for key in ("max_shift_pixels", "shift_bound_pixels"):
            require_number(config, key, cls.name, least=0)
        volume_input = VolumeInput.from_config(config, input_shape)
        reason = networks.unsupported_reason(volume_input.network_shape(input_shape))
        if reason:
            raise DcbenchError(f"after bin {volume_input.bin}: {reason}")

    def build_model(self) -> nn.Module:
        reason = networks.unsupported_reason(self.input_shape)
        if reason:
            raise DcbenchError(reason)
        self.check_config(self.config, self.input_shape)  # planning did; kept for direct constructions
        self.amp_dtype = autocast_dtype(str(self.config["precision"]), self.device)
        self.gamma = configured_gamma(self.config)
        self.volume_input = VolumeInput.from_config(self.config, self.input_shape)
        shape = self.volume_input.network_shape(self.input_shape)
        # The networks' poses are in voxels of the binned grid; the settings are in input voxels.
        return HarmonyModel(shape, int(self.config["latent_dim"]),
                            float(self.config["shift_bound_pixels"]) / self.volume_input.bin)

    def scale_shifts(self, phi: torch.Tensor, factor: float) -> torch.Tensor:
        """phi with its shifts multiplied by factor (bin: network -> input voxels; 1 / bin back)."""
        if factor == 1:
            return phi
        r = self.model.n_rot
        return torch.cat([phi[:, :r], phi[:, r:] * factor], dim=1)

    # ----------------------------------------------------------------------------- training
    def training_losses(self, x: torch.Tensor, phi_t: torch.Tensor | None = None,
                        noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """All loss terms for one batch; 'total' is what is minimised. The random pose phi_t of
        x2 = pose(x, phi_t) and the reparameterisation noise (2B, d) are drawn here unless given."""
        cfg, model = self.config, self.model
        b, d = x.shape[0], model.latent_dim
        if phi_t is None:
            phi_t = poses.random_phi(b, x.dim() - 2, float(cfg["max_rotation_degrees"]),
                                     float(cfg["max_shift_pixels"]) / self.volume_input.bin, self.generator)
        if noise is None:
            noise = torch.randn(2 * b, d, generator=self.generator)
        with torch.no_grad():
            x2 = poses.pose(x, phi_t.to(x.device))
        views = torch.cat([x, x2])  # both branches share the weights: one batched pass
        with autocast(self.device, self.amp_dtype):
            phi, mu, logvar = model.encode(views)
        phi, mu, logvar = phi.float(), mu.float(), logvar.float()
        canon = poses.canonicalise(views, phi)
        c = mu + noise.to(x.device) * torch.exp(0.5 * logvar)
        with autocast(self.device, self.amp_dtype):
            recon = model.decoder(c)
        recon = recon.float()
        recon_term = (recon - canon).pow(2).sum() / b  # both branches: recon1 + recon2
        branch = (canon[:b] - canon[b:]).pow(2).sum() / b
        kl12 = gaussian_kl(mu[:b], logvar[:b], mu[b:], logvar[b:])
        if cfg["kl_symmetric"]:
            kl = 0.5 * (kl12 + gaussian_kl(mu[b:], logvar[b:], mu[:b], logvar[:b]))
        else:
            kl = kl12
        gamma = self.gamma if self.gamma is not None else 1.0
        terms = {"recon": gamma * recon_term, "branch": gamma * branch, "kl": kl.mean() / d}
        prior_w = float(cfg["prior_kl_weight"])
        if prior_w:
            zeros = torch.zeros_like(mu)
            terms["prior_kl"] = prior_w * gaussian_kl(mu, logvar, zeros, zeros).mean() / d
        terms["total"] = sum(terms.values(), x.new_zeros(()))
        return terms

    def train_epoch(self, data: torch.Tensor, optimizer: torch.optim.Optimizer,
                    max_steps: int | None = None, progress: StepProgress | None = None) -> dict[str, float]:
        """One pass over `data` in shuffled minibatches (the first max_steps only, if given)."""
        return self.optimise_epoch(data, optimizer, self.training_losses, max_steps, progress)

    def fit(self, train: Split, context: RunContext) -> None:
        cfg = self.config
        if self.gamma is None:
            self.gamma = float(default_gamma(len(train), int(cfg["batch_size"])))
        data = self.training_tensor(train.x)
        optimizer = make_adam(self.model.parameters(), lr=float(cfg["lr"]))
        self.run_epochs(lambda epoch: self.train_epoch(data, optimizer, progress=context.step_progress), context,
                        optimizer)

    # ----------------------------------------------------------------------------- readout
    def encode_tensor(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        phi, mu, _ = self.model.encode(x)
        return mu, self.scale_shifts(phi, self.volume_input.bin)

    def canonical(self, content: torch.Tensor) -> torch.Tensor:
        """The decoder's canonical-pose output for content codes."""
        return self.model.decoder(content).float()

    @torch.no_grad()
    def decode(self, content: np.ndarray, transformation: np.ndarray) -> np.ndarray:
        """Dec(c) put into the pose phi (shifts in input voxels), on the input grid: shape
        (N, *input_shape)."""
        if len(content) != len(transformation):
            raise DcbenchError(f"{len(content)} content codes for {len(transformation)} transformation codes")
        self.model.eval()
        parts = []
        for i in range(0, len(content), self.encode_batch_size):
            c = self.to_tensor(content[i:i + self.encode_batch_size])
            phi = self.scale_shifts(self.to_tensor(transformation[i:i + self.encode_batch_size]),
                                    1 / self.volume_input.bin)
            parts.append(self.volume_input.restore(poses.pose(self.canonical(c), phi)).cpu().numpy())
        if not parts:
            return np.zeros((0, *self.input_shape), dtype=np.float32)
        return np.concatenate(parts)
