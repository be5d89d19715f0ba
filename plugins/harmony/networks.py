"""Harmony's encoder and decoder, after the reference code (xulabs/aitom, harmony/model2D and
model3D).

The encoder outputs one vector per input, split as [phi | mu | logvar]: phi are the
transformation parameters (2D: angle, shift x, shift y; 3D: three Euler angles, three shifts),
(mu, logvar) the content posterior. The decoder maps a content code to the canonical image.

2D (grey or colour square images): MLPs with tanh, the reference's sizes
  encoder  C*S*S -> 512 -> 512 -> 512 -> 512 -> 128 -> P + 2d
  decoder  d -> 128 -> 512 -> 512 -> 512 -> 512 -> C*S*S
The reference ends the decoder with tanh; images here lie in [0, 1], so it ends with a sigmoid.
3D (cubic single-channel volumes, side divisible by 8): the reference's Conv3d encoder
(k4 s2 p1: 1 -> 32 -> 64 -> 128, then a conv over the remaining S/8 cube -> 512, then 1x1x1 ->
P + 2d, tanh between) and ConvTranspose3d decoder (1x1x1 d -> 512, S/8 -> 128, then k4 s2 p1:
64 -> 32 -> 1), linear output. The reference fixes the S/8 kernels at 4 (S = 32 only).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dcbench_plugins.common.volume_layers import FlatConv3d, FlatConvTranspose3d

HIDDEN_2D = (512, 512, 512, 512, 128)


def transform_dims(input_shape: tuple[int, ...]) -> int:
    """Number of transformation parameters phi: 3 for images, 6 for volumes."""
    return 6 if len(input_shape) == 4 else 3


def unsupported_reason(input_shape: tuple[int, ...]) -> str | None:
    """Why Harmony's networks cannot take inputs of this shape, or None."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        c, h, w = shape
        if c not in (1, 3):
            return f"takes grey (1, S, S) or colour (3, S, S) images, not {c} channels"
        if h != w:
            return f"needs square images, got {h}x{w}"
        if h < 8:
            return f"needs images of at least 8x8 pixels, got {h}x{w}"
        return None
    if len(shape) == 4:
        c, d, h, w = shape
        if c != 1:
            return f"takes single-channel volumes, not {c} channels"
        if not d == h == w:
            return f"needs cubic volumes, got {d}x{h}x{w}"
        if d % 8 or d < 8:
            return f"needs a volume side divisible by 8 for its 3D conv net (e.g. 16, 32), got {d}"
        return None
    return f"takes (C, S, S) images or (1, S, S, S) volumes, not inputs of shape {shape}"


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with tanh between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        pixels = math.prod(input_shape)
        self.net = _mlp([pixels, *HIDDEN_2D, transform_dims(input_shape) + 2 * latent_dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class MLPDecoder(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        pixels = math.prod(input_shape)
        self.net = _mlp([latent_dim, *reversed(HIDDEN_2D), pixels])

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(c)).view(-1, *self.input_shape)


def _channels_last(net: nn.Sequential) -> None:
    """Strided 3D (transposed) convolutions channels-last: oneDNN runs them and their backward
    faster so (docs/performance.md, "Volumes"). After init, so that seeded weights are unchanged."""
    for m in net:
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) and m.stride != (1, 1, 1):
            m.to(memory_format=torch.channels_last_3d)


class ConvEncoder3d(nn.Module):
    """The layers on a single-voxel output (the S/8 cube, the 1x1x1 head) run as matmuls
    (FlatConv3d: same parameters, same function)."""

    def __init__(self, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        side = int(input_shape[1])
        self.net = nn.Sequential(
            nn.Conv3d(1, 32, 4, stride=2, padding=1), nn.Tanh(),
            nn.Conv3d(32, 64, 4, stride=2, padding=1), nn.Tanh(),
            nn.Conv3d(64, 128, 4, stride=2, padding=1), nn.Tanh(),
            FlatConv3d(128, 512, side // 8), nn.Tanh(),  # the remaining S/8 cube -> 1x1x1
            FlatConv3d(512, transform_dims(input_shape) + 2 * latent_dim, 1),
        )

    def channels_last(self) -> None:
        _channels_last(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class ConvDecoder3d(nn.Module):
    """The two layers on a 1^3 input run as matmuls (FlatConvTranspose3d: same parameters)."""

    def __init__(self, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        side = int(input_shape[1])
        self.net = nn.Sequential(
            FlatConvTranspose3d(latent_dim, 512, 1), nn.Tanh(),
            FlatConvTranspose3d(512, 128, side // 8), nn.Tanh(),
            nn.ConvTranspose3d(128, 64, 4, stride=2, padding=1), nn.Tanh(),
            nn.ConvTranspose3d(64, 32, 4, stride=2, padding=1), nn.Tanh(),
            nn.ConvTranspose3d(32, 1, 4, stride=2, padding=1),  # linear: volumes are z-scored
        )

    def channels_last(self) -> None:
        _channels_last(self.net)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.net(c.view(*c.shape, 1, 1, 1))


def glorot_init(module: nn.Module) -> None:
    """Xavier-uniform weights with tanh's gain (5/3) and zero biases for every Linear / conv.

    PyTorch's default (kaiming_uniform with a = sqrt(5)) has weight variance 1 / (3 fan_in): each
    tanh layer shrinks the signal by about 1/sqrt(3), so through the reference's five hidden
    layers the content mean barely depends on the input (std ~0.002 across MNIST images after a
    1e-3 epoch) and the posterior noise drowns it. Glorot init keeps the scale through tanh."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain("tanh"))
            nn.init.zeros_(m.bias)


def build_networks(input_shape: tuple[int, ...], latent_dim: int) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) for this input shape (checked with unsupported_reason first)."""
    if len(input_shape) == 4:
        encoder, decoder = ConvEncoder3d(input_shape, latent_dim), ConvDecoder3d(input_shape, latent_dim)
    else:
        encoder, decoder = MLPEncoder(input_shape, latent_dim), MLPDecoder(input_shape, latent_dim)
    glorot_init(encoder)
    glorot_init(decoder)
    if len(input_shape) == 4:
        encoder.channels_last()
        decoder.channels_last()
    return encoder, decoder
