"""SimCLR baselines for content-transformation disentanglement, after von Kuegelgen et al. (2021),
"Self-supervised learning with data augmentations provably isolates content from style".

Both use DualContrast's networks and its content-preserving transformation T (a random rotation
by default), so that the comparison isolates the objective:

- `simclr-disc` (discriminative): DualContrast's encoder only, its code split into c and z; the
  NT-Xent (InfoNCE) loss pulls c(x) and c(T(x)) together against the other 2B - 2 codes of the
  batch. z gets no loss of its own: it is whatever the shared trunk carries into its head. There
  is no decoder, so no transfer grid and no reconstruction error.
- `simclr-gen` (generative): the two-latent VAE (`vae2`) plus the NT-Xent loss on c.

The two views are x and T(x), the same pairs DualContrast uses (SimCLR's two independently
augmented views would differ only in also transforming the anchor). Codes are the posterior
means (the discriminative encoder's outputs) of the untransformed input. On volumes both follow
DualContrast's settings for how the networks see the particles (`networks`, `lowpass_sigma`,
`bin`: in the quick preset the small encoder on low-passed, 2x binned particles).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dcbench.api import RunContext, Split
from dcbench.settings_checks import require_number
from dcbench.torchkit import TorchMethod, make_adam
from dcbench.volume_input import VolumeInput
from dcbench_plugins.dualcontrast import networks, transforms
from dcbench_plugins.dualcontrast.method import DualContrast, DualContrastModel, check_views


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over a batch of positive pairs (a_i, b_i): each of the 2B codes must pick its
    partner out of the other 2B - 1 by cosine similarity / temperature (mean cross-entropy)."""
    codes = F.normalize(torch.cat([a, b]), dim=1)
    logits = codes @ codes.T / temperature
    n = a.shape[0]
    logits.fill_diagonal_(float("-inf"))  # a code is not its own candidate
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(a.device)
    return F.cross_entropy(logits, partner)


class SimCLRGenerative(DualContrast):
    name = "simclr-gen"
    ablation = {"con_c": False, "con_z": False}

    @classmethod
    def default_config(cls, preset: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
        config = super().default_config(preset, input_shape)
        config.update(temperature=0.5, nt_xent_weight=1.0)
        return config

    @classmethod
    def check_config(cls, config: dict[str, Any], input_shape: tuple[int, ...]) -> None:
        super().check_config(config, input_shape)
        require_number(config, "temperature", cls.name, above=0)  # NT-Xent divides by it

    def extra_terms(self, c_x: torch.Tensor, c_xt: torch.Tensor, z_x: torch.Tensor,
                    z_xt: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = nt_xent(c_x, c_xt, float(self.config["temperature"]))
        return {"nt_xent": float(self.config["nt_xent_weight"]) * loss}


class EncoderOnly(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], latent_dim: int, size: str = "paper") -> None:
        super().__init__()
        # DualContrast's encoder; its decoder is built and dropped, so seeded weights match DualContrast's.
        self.encoder = DualContrastModel(input_shape, latent_dim, size).encoder


class SimCLRDiscriminative(TorchMethod):
    name = "simclr-disc"
    generative = False

    @classmethod
    def supports(cls, input_shape: tuple[int, ...]) -> str | None:
        return networks.unsupported_reason(input_shape)

    @classmethod
    def default_config(cls, preset: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
        # The same budget and transformation settings as DualContrast in this preset.
        base = DualContrast.default_config(preset, input_shape)
        keep = ("latent_dim", "epochs", "batch_size", "lr", "lr_step_epochs", "lr_gamma", "transform",
                "max_rotation_degrees", "per_sample_transform", "retain_freed_memory",
                "networks", "lowpass_sigma", "bin")  # the last three for volumes only
        config = {k: base[k] for k in keep if k in base}
        config["temperature"] = 0.5
        return config

    @classmethod
    def check_config(cls, config: dict[str, Any], input_shape: tuple[int, ...]) -> None:
        super().check_config(config, input_shape)  # lowpass_sigma / bin
        check_views(config, input_shape, cls.name)
        require_number(config, "temperature", cls.name, above=0)  # NT-Xent divides by it

    def build_model(self) -> nn.Module:
        self.check_config(self.config, self.input_shape)  # planning did; kept for direct constructions
        self.transform = transforms.from_config(self.config, self.input_shape)
        self.volume_input = VolumeInput.from_config(self.config, self.input_shape)
        shape = self.volume_input.network_shape(self.input_shape)
        return EncoderOnly(shape, int(self.config["latent_dim"]), str(self.config.get("networks", "paper")))

    def training_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            x_t = self.transform(x, self.generator)
        mu_c = self.model.encoder(torch.cat([x, x_t]))[2]
        b = x.shape[0]
        loss = nt_xent(mu_c[:b], mu_c[b:], float(self.config["temperature"]))
        return {"nt_xent": loss, "total": loss}

    def fit(self, train: Split, context: RunContext) -> None:
        cfg = self.config
        data = self.training_tensor(train.x)
        optimizer = make_adam(self.model.parameters(), lr=float(cfg["lr"]))
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(cfg["lr_step_epochs"]),
                                                    gamma=float(cfg["lr_gamma"]))
        self.run_epochs(lambda epoch: self.optimise_epoch(data, optimizer, self.training_losses,
                                                          progress=context.step_progress), context,
                        optimizer, scheduler)

    def encode_tensor(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu_z, _, mu_c, _ = self.model.encoder(x)
        return mu_c, mu_z
