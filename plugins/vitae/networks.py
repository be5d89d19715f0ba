"""C-VITAE's encoders and decoders: the reference's MLPs (SkafteNicki/unsuper, mlp_encoder /
mlp_decoder, the default `--ed_type mlp`).

Encoder: flatten -> 512 -> 256 (leaky ReLU) -> mean and variance heads, variance through a
softplus as in the reference. Decoder: z -> 256 -> 512 (leaky ReLU) -> output.

Differences from the reference:
- No BatchNorm1d on the flattened input. A fixed per-pixel affine map of the input is absorbed
  by the first Linear layer, and batch norm makes codes depend on running statistics and fails
  on a training batch of one (dcbench keeps the last, possibly tiny, batch).
- The two heads of an encoder are one Linear layer with 2d outputs (the same parameterisation).
- The theta decoder's output layer starts at zero, so training starts from identity warps
  (as is usual for spatial transformers); the reference initialises it at random.
- The decoders output only a mean: the reference's variance decoders are unused with its
  Bernoulli likelihood (the default) and, for theta, unused in its forward pass.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

HIDDEN = (512, 256)  # encoder widths; the decoders use them in reverse


class Encoder(nn.Module):
    """q(z|x) = N(mu, diag var) from a flattened input."""

    def __init__(self, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        flat = math.prod(input_shape)
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(flat, HIDDEN[0]), nn.LeakyReLU(),
                                   nn.Linear(HIDDEN[0], HIDDEN[1]), nn.LeakyReLU())
        self.heads = nn.Linear(HIDDEN[1], 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw = self.heads(self.trunk(x)).chunk(2, dim=1)
        return mu, F.softplus(raw) + 1e-6  # variance, floored so that log(var) stays finite


class Decoder(nn.Module):
    """z -> 256 -> 512 -> out_shape; `sigmoid` for images in [0, 1]."""

    def __init__(self, latent_dim: int, out_shape: tuple[int, ...], sigmoid: bool, zero_init: bool = False) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(latent_dim, HIDDEN[1]), nn.LeakyReLU(),
                                   nn.Linear(HIDDEN[1], HIDDEN[0]), nn.LeakyReLU())
        self.out = nn.Linear(HIDDEN[0], math.prod(out_shape))
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        self.out_shape = tuple(out_shape)
        self.sigmoid = sigmoid

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.out(self.trunk(z)).view(-1, *self.out_shape)
        return torch.sigmoid(y) if self.sigmoid else y
