"""DualContrast's encoder and decoder, per input shape, as described in the paper.

One encoder trunk with heads for (mu_z, logvar_z, mu_c, logvar_c); a decoder Dec(c, z).
The four heads are one Linear with 4*d outputs: the same parameterisation as four separate
heads, computed in one matmul.
Unlike the reference code, the grey and 3D decoders give z and c their own input layers
(the reference shares one layer between them).

The 2D encoders compute the same function as [Conv2d, InstanceNorm2d, ReLU] blocks, faster on
CPU (measurements in docs/performance.md): channels-last activations, and InstanceNorm + ReLU
as one autograd node.
"""

from __future__ import annotations

import torch
from torch import nn

from dcbench_plugins.common.volume_layers import FlatConv3d, linear_with_free_rows

GREY_28 = (1, 28, 28)
COLOUR_64 = (3, 64, 64)
VOLUME_32 = (1, 32, 32, 32)
SUPPORTED_SHAPES = (GREY_28, COLOUR_64, VOLUME_32)


class Posterior(nn.Module):
    """Four linear heads on a feature vector: (mu_z, logvar_z, mu_c, logvar_c)."""

    def __init__(self, features: int, latent_dim: int) -> None:
        super().__init__()
        self.heads = nn.Linear(features, 4 * latent_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.heads(h).chunk(4, dim=1))


class _InstanceNormReLU(torch.autograd.Function):
    """relu((x - mean) / sqrt(var + eps)) per sample and channel over the spatial dims, with
    the biased variance: nn.InstanceNorm (no affine, no running stats) then ReLU. One node with
    a closed-form backward, instead of native_batch_norm on a (1, N*C, ...) view (which forces
    channels-first copies) and a ReLU node. Few passes over memory: these ops are memory-bound."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        # Two-pass mean/variance: torch.var's Welford kernel is ~40x slower here.
        centred = x - x.mean(dims, keepdim=True)
        rstd = (centred * centred).mean(dims, keepdim=True).add_(eps).rsqrt_()
        normed = centred.mul_(rstd)
        out = normed.relu()
        ctx.save_for_backward(normed, out, rstd)  # `out` is kept by the next layer anyway
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        normed, out, rstd = ctx.saved_tensors
        dims = tuple(range(2, normed.dim()))
        g = torch.ops.aten.threshold_backward(grad, out, 0)  # the ReLU's gradient, a new tensor
        # d/dx of (x - mean) * rstd: rstd * (g - mean(g) - normed * mean(g * normed)), and
        # g * normed = g * out since g is 0 where out is.
        mean_gn = (g * out).mean(dims, keepdim=True)
        return g.sub_(g.mean(dims, keepdim=True)).addcmul_(normed, mean_gn, value=-1).mul_(rstd), None


class InstanceNormReLU(nn.Module):
    """nn.InstanceNorm2d(affine=False) followed by ReLU, as one autograd node (no parameters)."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # normalise in fp32, as autocast does for instance_norm
        return _InstanceNormReLU.apply(x, self.eps)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """[Conv k5 s2 p1, InstanceNorm, ReLU]; the same state_dict keys as separate layers."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=5, stride=2, padding=1), InstanceNormReLU())


class ImageEncoder(nn.Module):
    """[Conv k5 s2 p1, InstanceNorm, ReLU] blocks, flatten, posterior heads."""

    def __init__(self, channels: list[int], flat: int, latent_dim: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(*[_conv_block(a, b) for a, b in zip(channels, channels[1:])])
        self.posterior = Posterior(flat, latent_dim)
        # Channels-last weights make every activation channels-last: faster convolutions
        # (notably their backward on CPU) and no layout copies between layers.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # flatten() of a channels-last tensor copies to (C, H, W) order: the heads see the
        # same features as with channels-first layers.
        return self.posterior(self.trunk(x).flatten(1))


class VolumeEncoder(nn.Module):
    """Conv3d k4 s2 p1 1->32->64->128, Conv3d k4 ->512, 1x1x1 ->1024, leaky ReLU.

    Faster on CPU, same function and state_dict: the strided convolutions run channels-last
    (oneDNN's 3D convolutions and their backward are faster so), the last two as matmuls
    (volume_layers.FlatConv3d), and the leaky ReLUs in place (a convolution's backward needs
    its input, not its output)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in ((1, 32), (32, 64), (64, 128)):
            conv = nn.Conv3d(a, b, kernel_size=4, stride=2, padding=1).to(memory_format=torch.channels_last_3d)
            layers += [conv, nn.LeakyReLU(inplace=True)]
        layers += [FlatConv3d(128, 512, kernel_size=4), nn.LeakyReLU(inplace=True)]
        layers += [FlatConv3d(512, 1024, kernel_size=1), nn.LeakyReLU(inplace=True)]
        self.trunk = nn.Sequential(*layers)
        self.posterior = Posterior(1024, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.posterior(self.trunk(x).flatten(1))


class SplitInputDecoder(nn.Module):
    """z and c each through their own first layer, concatenated, then an MLP."""

    def __init__(self, latent_dim: int, first: int, widths: list[int], out_shape: tuple[int, ...],
                 activation: type[nn.Module], sigmoid: bool) -> None:
        super().__init__()
        self.z_in = nn.Linear(latent_dim, first)
        self.c_in = nn.Linear(latent_dim, first)
        self.act = activation()
        dims = [2 * first, *widths]
        hidden: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            hidden += [nn.Linear(a, b), activation()]
        self.hidden = nn.Sequential(*hidden)
        self.out = nn.Linear(dims[-1], int(torch.tensor(out_shape).prod()))
        self.out_shape = out_shape
        self.sigmoid = sigmoid

    def features(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The output layer's input."""
        return self.hidden(torch.cat([self.act(self.z_in(z)), self.act(self.c_in(c))], dim=1))

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, *self.out_shape)
        return torch.sigmoid(x) if self.sigmoid else x

    def forward(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.finish(self.out(self.features(c, z)))


class VolumeDecoder(SplitInputDecoder):
    """The 3D SplitInputDecoder, whose output layer (5000 -> 32768, 655 MB of weights) is
    bound by reading its weights: decode_pair runs it once for the training views and the
    generated pair together."""

    def decode_pair(self, c: torch.Tensor, z: torch.Tensor, c_free: torch.Tensor, z_free: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(self(c, z), self(c_free, z_free)), the second without gradient."""
        with torch.no_grad():
            free = self.features(c_free, z_free)
        out, out_free = linear_with_free_rows(self.out, self.features(c, z), free)
        return self.finish(out), self.finish(out_free)


class ConcatDecoder(nn.Module):
    """concat(z, c) through an MLP, sigmoid output (the LineMod decoder)."""

    def __init__(self, latent_dim: int, widths: list[int], out_shape: tuple[int, ...]) -> None:
        super().__init__()
        dims = [2 * latent_dim, *widths]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], int(torch.tensor(out_shape).prod())))
        self.mlp = nn.Sequential(*layers)
        self.out_shape = out_shape

    def forward(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(torch.cat([z, c], dim=1))).view(-1, *self.out_shape)


def build_networks(input_shape: tuple[int, ...], latent_dim: int) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) for one of SUPPORTED_SHAPES."""
    shape = tuple(input_shape)
    if shape == GREY_28:
        encoder = ImageEncoder([1, 16, 32, 64], 64 * 2 * 2, latent_dim)
        decoder = SplitInputDecoder(latent_dim, 256, [512, 512, 512], shape, nn.ReLU, sigmoid=True)
    elif shape == COLOUR_64:
        encoder = ImageEncoder([3, 16, 32, 64, 128], 128 * 3 * 3, latent_dim)
        decoder = ConcatDecoder(latent_dim, [512, 512, 1024, 1024], shape)
    elif shape == VOLUME_32:
        encoder = VolumeEncoder(latent_dim)
        decoder = VolumeDecoder(latent_dim, 512, [1024, 1024, 1024, 5000], shape, nn.LeakyReLU, sigmoid=False)
    else:
        raise ValueError(f"no DualContrast architecture for inputs of shape {shape}")
    return encoder, decoder


def unsupported_reason(input_shape: tuple[int, ...]) -> str | None:
    if tuple(input_shape) in SUPPORTED_SHAPES:
        return None
    shapes = ", ".join("x".join(map(str, s)) for s in SUPPORTED_SHAPES)
    return (f"has the paper's architectures for inputs {shapes} only, not "
            f"{'x'.join(map(str, input_shape))}")
