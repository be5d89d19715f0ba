"""Exact, faster stand-ins for the 3D networks' layers on CPU (docs/performance.md, "Volumes").

Each keeps its parent's parameters (same state_dict keys, shapes and initialisation), so saved
checkpoints load unchanged, and computes the same function:

- FlatConv3d: a Conv3d whose kernel covers its whole (unpadded) input, e.g. k4 on the 4^3 map
  or 1x1x1 on 1^3, is a Linear on the flattened input. oneDNN runs these as convolutions at
  10-15 GFLOP/s; as one matmul they run at the machine's matmul rate.
- FlatConvTranspose3d: a ConvTranspose3d on a 1^3 input is a Linear to (out, k, k, k).
- rows_linear_with_free_rows: one output-layer matmul for rows that need gradients and rows
  that do not (the generated pair), whose backward only works on the former.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _covers_input(conv: nn.modules.conv._ConvNd, x: torch.Tensor) -> bool:
    return (tuple(x.shape[2:]) == tuple(conv.kernel_size) and all(p == 0 for p in conv.padding)
            and all(d == 1 for d in conv.dilation) and conv.groups == 1 and conv.padding_mode == "zeros")


class FlatConv3d(nn.Conv3d):
    """nn.Conv3d that runs as F.linear when its kernel covers the whole input (one output voxel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _covers_input(self, x):
            return super().forward(x)
        # flatten(1) orders a channels-last input as (C, D, H, W) too: the weight's order.
        out = F.linear(x.flatten(1), self.weight.flatten(1), self.bias)
        return out.view(*out.shape, 1, 1, 1)


class FlatConvTranspose3d(nn.ConvTranspose3d):
    """nn.ConvTranspose3d that runs as one matmul on a 1^3 input: unpadded, the single input
    voxel paints one kernel-sized block, which is the whole output."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        plain = (output_size is not None or tuple(x.shape[2:]) != (1, 1, 1) or self.groups != 1
                 or any(p != 0 for p in (*self.padding, *self.output_padding)) or any(d != 1 for d in self.dilation))
        if plain:
            return super().forward(x, output_size)
        n = x.shape[0]
        out = (x.flatten(1) @ self.weight.flatten(1)).view(n, self.out_channels, -1)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1)
        return out.view(n, self.out_channels, *self.kernel_size)


class _LinearWithFreeRows(torch.autograd.Function):
    """(rows @ W^T + b, free_rows @ W^T + b) from one matmul over both row blocks; the second
    output carries no gradient, so backward only touches the first block's rows."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, free_rows: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.addmm(bias, torch.cat([rows, free_rows]), weight.t())
        ctx.save_for_backward(rows, weight)
        ctx.mark_non_differentiable(free := out[rows.shape[0]:])
        return out[:rows.shape[0]], free

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _free_grad: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        rows, weight = ctx.saved_tensors
        grad_rows = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad.t() @ rows if ctx.needs_input_grad[2] else None
        grad_bias = grad.sum(0) if ctx.needs_input_grad[3] else None
        return grad_rows, None, grad_weight, grad_bias


def linear_with_free_rows(layer: nn.Linear, rows: torch.Tensor, free_rows: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """layer(rows) with gradients and layer(free_rows) without, as one matmul: a wide layer
    streams its weights from memory once for both (faster with more rows) and its weight
    gradient covers only `rows`. Plain calls under autocast, whose casts this would bypass."""
    if torch.is_autocast_enabled(rows.device.type):
        with torch.no_grad():
            free = layer(free_rows)
        return layer(rows), free
    return _LinearWithFreeRows.apply(rows, free_rows.detach(), layer.weight, layer.bias)
