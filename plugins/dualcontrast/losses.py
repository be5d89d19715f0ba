"""DualContrast's loss terms.

Pair losses use the absolute cosine similarity between code vectors:
a negative pair costs |cos| (push towards orthogonal), a positive pair 1 - |cos|.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over the batch and dimensions.

    The head is log sigma^2 both here and in sampling (the reference code mixed the two)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum()


def abs_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|cos(a_i, b_i)| per row."""
    return F.cosine_similarity(a, b, dim=1, eps=1e-6).abs()


def negative_pair_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return abs_cosine(a, b).mean()


def positive_pair_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (1.0 - abs_cosine(a, b)).mean()


def vae_loss(recon: torch.Tensor, target: torch.Tensor, mu_z: torch.Tensor, logvar_z: torch.Tensor,
             mu_c: torch.Tensor, logvar_c: torch.Tensor, recon_weight: float, kl_weight: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction, KL): mean squared error per element, and both KL terms divided by
    the number of input elements (the paper's "very small" KL weight is per element)."""
    recon_term = recon_weight * F.mse_loss(recon, target, reduction="mean")
    kl = kl_standard_normal(mu_z, logvar_z) + kl_standard_normal(mu_c, logvar_c)
    return recon_term, kl_weight * kl / target.numel()
