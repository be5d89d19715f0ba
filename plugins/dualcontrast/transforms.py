"""Content-preserving transformations T(x), applied to a whole batch at once.

Every transform draws its parameters per sample from a torch.Generator (or one value for the
whole batch when per_sample=False, which is what the reference code's RandomAffine on a batch
tensor did) and runs as a few batched tensor ops: no Python loop over images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.nn import functional as F

from dcbench.errors import DcbenchError
from dcbench_plugins.common.geometry import rotation_matrices_2d, rotation_matrices_3d, warp

TRANSFORMS = ("rotation", "translation", "scale", "contrast", "saturation", "hue", "blur")
COLOUR_ONLY = ("saturation", "hue")
VOLUME_OK = ("rotation", "translation")


def _uniform(n: int, low: float, high: float, ref: torch.Tensor, gen: torch.Generator | None,
             per_sample: bool) -> torch.Tensor:
    draws = n if per_sample else 1
    u = torch.rand(draws, generator=gen, device=gen.device if gen is not None else "cpu")
    return (low + (high - low) * u).to(ref.device, ref.dtype).expand(n)


def rotate(x: torch.Tensor, gen: torch.Generator | None = None, per_sample: bool = True,
           max_degrees: float = 90.0) -> torch.Tensor:
    """Random rotation: 2D angle in [-max, max] degrees; 3D Euler angles each in [-max, max]."""
    n, limit = x.shape[0], math.radians(max_degrees)
    if x.dim() == 4:
        return warp(x, rotation_matrices_2d(_uniform(n, -limit, limit, x, gen, per_sample)))
    angles = torch.stack([_uniform(n, -limit, limit, x, gen, per_sample) for _ in range(3)], 1)
    return warp(x, rotation_matrices_3d(angles))


def translate(x: torch.Tensor, gen: torch.Generator | None = None, per_sample: bool = True,
              max_fraction: float = 0.15) -> torch.Tensor:
    """Random shift of up to max_fraction of the size along each axis."""
    n, spatial = x.shape[0], x.dim() - 2
    eye = torch.eye(spatial, device=x.device, dtype=x.dtype).expand(n, spatial, spatial)
    # normalised coordinates span 2 units, so a fraction f of the size is 2f
    shift = torch.stack([_uniform(n, -2 * max_fraction, 2 * max_fraction, x, gen, per_sample)
                         for _ in range(spatial)], 1)
    return warp(x, eye, shift)


def scale(x: torch.Tensor, gen: torch.Generator | None = None, per_sample: bool = True,
          low: float = 0.75, high: float = 1.25) -> torch.Tensor:
    n, spatial = x.shape[0], x.dim() - 2
    s = _uniform(n, low, high, x, gen, per_sample)
    eye = torch.eye(spatial, device=x.device, dtype=x.dtype).expand(n, spatial, spatial)
    return warp(x, eye / s.view(n, 1, 1))  # sampling at p/s magnifies by s


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
        return (x * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)
    return x


def contrast(x: torch.Tensor, gen: torch.Generator | None = None, per_sample: bool = True,
             low: float = 0.5, high: float = 1.5) -> torch.Tensor:
    f = _uniform(x.shape[0], low, high, x, gen, per_sample).view(-1, 1, 1, 1)
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    return (mean + f * (x - mean)).clamp(0, 1)


def saturation(x: torch.Tensor, gen: torch.Generator | None = None, per_sample: bool = True,
               low: float = 0.0, high: float = 2.0) -> torch.Tensor:
    f = _uniform(x.shape[0], low, high, x, gen, per_sample).view(-1, 1, 1, 1)
    grey = _grey(x)
    return (grey + f * (x - grey)).clamp(0, 1)


def hue(x: torch.Tensor, gen: torch.Generator | None = None, per_sample: bool = True,
        max_turn: float = 0.5) -> torch.Tensor:
    """Rotate hue by up to max_turn of a full turn: a rotation in the YIQ chroma plane."""
    n = x.shape[0]
    angle = 2 * math.pi * _uniform(n, -max_turn, max_turn, x, gen, per_sample)
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=x.device, dtype=x.dtype)
    from_yiq = torch.linalg.inv(to_yiq)
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rot = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], 1).view(n, 3, 3)
    mix = from_yiq @ rot @ to_yiq  # (N, 3, 3) per-sample colour matrix
    return torch.einsum("nij,njhw->nihw", mix, x).clamp(0, 1)


def blur(x: torch.Tensor, gen: torch.Generator | None = None, per_sample: bool = True,
         low: float = 0.1, high: float = 2.0, radius: int = 3) -> torch.Tensor:
    """Gaussian blur with a per-sample sigma, as one grouped separable convolution."""
    n, c, h, w = x.shape
    sigma = _uniform(n, low, high, x, gen, per_sample)
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps.view(1, -1) / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C, taps)
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(n * c, 1, 1, -1),
                    groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(n * c, 1, -1, 1),
                    groups=n * c)
    return flat.view(n, c, h, w)


_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "rotation": rotate, "translation": translate, "scale": scale, "contrast": contrast,
    "saturation": saturation, "hue": hue, "blur": blur,
}


def unsupported_reason(name: str, input_shape: tuple[int, ...]) -> str | None:
    """Why transform `name` cannot be used on inputs of this shape, or None."""
    if name not in _FUNCTIONS:
        return f"unknown transform '{name}'; choose one of {', '.join(TRANSFORMS)}"
    if len(input_shape) == 4 and name not in VOLUME_OK:
        return f"transform '{name}' is defined for 2D images only; on volumes use {' or '.join(VOLUME_OK)}"
    if name in COLOUR_ONLY and input_shape[0] != 3:
        return f"transform '{name}' changes colour and needs 3-channel images, not {input_shape[0]} channel(s)"
    return None


def get_transform(name: str) -> Callable[..., torch.Tensor]:
    return _FUNCTIONS[name]


def from_config(config: Mapping[str, Any], input_shape: tuple[int, ...]
                ) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """T(x) as a method's settings name it (`transform`, `max_rotation_degrees`,
    `per_sample_transform`), checked against the input shape: a function of (batch, generator).
    Shared by DualContrast and the SimCLR baselines, which use the same T(x)."""
    name = config["transform"]
    reason = unsupported_reason(name, input_shape)
    if reason:
        raise DcbenchError(reason)
    function = get_transform(name)
    kwargs = {"max_degrees": config["max_rotation_degrees"]} if name == "rotation" else {}
    per_sample = bool(config["per_sample_transform"])
    return lambda x, gen: function(x, gen, per_sample=per_sample, **kwargs)
