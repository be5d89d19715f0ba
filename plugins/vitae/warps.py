"""VITAE's spatial transformers: CPAB, diffeomorphic affine, and affine then CPAB.

Each maps a batch of parameters theta (N, P) to a warp T_theta with T_0 = identity and
T_theta^-1 = T_-theta (exactly for affine, up to integration error for CPAB), which is what
C-VITAE needs: x is warped back with -theta before the appearance encoder, and the appearance
is warped forward with theta. warp(x, theta)(p) = x(T_theta(p)).

CPAB integration. The velocity field is v(p) = A_c [p; 1] in triangle c of libcpab's
tessellation, with A = basis @ theta (basis from libcpab, see cpab.py). Like libcpab's
pure-PyTorch integrator, each of `nsteps` steps moves a point by the exact flow of its current
cell's field for 1/nsteps, expm(A_c / nsteps); tests/test_vitae.py checks values, gradients and
cell lookup against libcpab. libcpab's own loop is far too slow to train with on CPU: 100
MNIST-sized grids took 5.4 s forward + 1.9 s backward at its default 50 steps (1.2 s at 10
steps), because it gathers a 3x3 matrix per point and multiplies with bmm, finds cells with a
dozen boolean-mask assignments, and takes matrix exponentials of thousands of 3x3 matrices
with batched tiny matmuls. Here, on the same machine: about 10 to 20 ms at 5 steps:
- `integrate` works on the six affine coefficients per point, gathered once per step from an
  (N, 6, cells) table, as a few elementwise ops, with a branch-free cell lookup and a
  hand-written backward (_Integrate) that reuses the forward's cells and coefficients;
- `affine_exp` takes the step maps' exponentials with scalar series (Cayley-Hamilton);
- `Warper.both_ways` integrates theta and -theta as one batch.
Points that leave [0, 1]^2 through rounding take the cell of the nearest border point
(libcpab has extra rules outside the square; with zero boundary velocity no exact trajectory
leaves it).

The CPAB basis is a buffer of the module, so it is saved with the weights: a basis recomputed
on another machine (another LAPACK) may span the same space with other vectors, which would
change what a saved theta means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from dcbench_plugins.vitae import cpab as cpab_lib

TRANSFORMATIONS = ("cpab", "affine", "affine+cpab")
AFFINE_DIM = 6


def cell_index(x: torch.Tensor, y: torch.Tensor, nx: int, ny: int) -> torch.Tensor:
    """Index of the triangle holding each point (x, y) of [0, 1]^2, as libcpab numbers them:
    4 * (column + nx * row) + (0 top, 1 right, 2 bottom, 3 left) within a square, with libcpab's
    tie rules. Points outside the square take the cell of the nearest border point."""
    fx = (x * nx).clamp_(0.0, nx - 1e-4)
    fy = (y * ny).clamp_(0.0, ny - 1e-4)
    col, row = fx.floor(), fy.floor()
    u, v = fx.sub_(col), fy.sub_(row)  # position inside the square, y pointing down
    diag = (v > u).float()  # below the main diagonal: bottom or left
    anti = (u.add_(v) > 1).float()  # below the anti-diagonal: right or bottom
    # top 0 (neither), right 1 (anti), bottom 2 (both), left 3 (diag) = anti + 3 diag - 2 anti diag
    sub = anti.addcmul_(diag, anti, value=-2).add_(diag, alpha=3)
    return row.mul_(4 * nx).add_(col, alpha=4).add_(sub).long()


def affine_exp(m: torch.Tensor, tol: float = 1e-8) -> torch.Tensor:
    """exp of affine Lie-algebra elements: m (..., 6) = (a11, a12, b1, a21, a22, b2), the top two
    rows of a 3x3 matrix X = [[L, b], [0, 0]] -> the top two rows of exp(X) = [[e^L, phi(L) b],
    [0, 1]] with phi(L) = sum_k L^k / (k+1)!, same layout.

    torch.linalg.matrix_exp on thousands of 3x3 matrices runs batched tiny matmuls (slow on
    CPU: it was the largest cost of a training step). Here, by Cayley-Hamilton, every power of
    the 2x2 block is L^k = p_k L + q_k I with p_{k+1} = tr(L) p_k + q_k and q_{k+1} = -det(L) p_k,
    so both series reduce to four scalar series per matrix: a few elementwise ops per term.
    Scaling and squaring keeps the scaled infinity norm r <= 1/2, and the series stop at the
    first order k with r^(k+1) / (k+1)! < tol (a few terms for CPAB's small step maps)."""
    norm = float(m.detach().abs().amax()) * 3 if m.numel() else 0.0  # bounds the infinity norm
    squarings = max(0, math.ceil(math.log2(max(norm, 1e-30) / 0.5)))
    scaled = norm / 2 ** squarings
    order, term = 1, scaled
    while order < 16 and term * scaled / (order + 1) >= tol:  # term = r^order / order!
        order += 1
        term *= scaled / order
    a11, a12, b1, a21, a22, b2 = (m / 2 ** squarings).unbind(-1)
    trace, det = a11 + a22, a11 * a22 - a12 * a21
    p, q = torch.zeros_like(trace), torch.ones_like(trace)  # L^0 = 0 L + 1 I
    alpha, beta, gamma, eta = q, p, q, p  # k = 0 terms of e^L = alpha I + beta L, phi(L) = gamma I + eta L
    factorial = 1.0
    for k in range(1, order + 1):
        p, q = torch.addcmul(q, trace, p), -det * p
        factorial *= k
        alpha, beta = alpha + q / factorial, beta + p / factorial
        gamma, eta = gamma + q / (factorial * (k + 1)), eta + p / (factorial * (k + 1))
    lb1, lb2 = a11 * b1 + a12 * b2, a21 * b1 + a22 * b2  # L b
    e11, e12, e21, e22 = alpha + beta * a11, beta * a12, beta * a21, alpha + beta * a22
    f1, f2 = gamma * b1 + eta * lb1, gamma * b2 + eta * lb2
    for _ in range(squarings):  # E <- E o E
        e11, e12, e21, e22, f1, f2 = (
            e11 * e11 + e12 * e21, e11 * e12 + e12 * e22, e21 * e11 + e22 * e21, e21 * e12 + e22 * e22,
            e11 * f1 + e12 * f2 + f1, e21 * f1 + e22 * f2 + f2,
        )
    return torch.stack([e11, e12, f1, e21, e22, f2], dim=-1)


def step_maps(theta: torch.Tensor, basis: torch.Tensor, nsteps: int) -> torch.Tensor:
    """(N, 6, cells): per sample and cell, the affine map of one integration step,
    expm(A_c / nsteps), as (a11, a12, b1, a21, a22, b2)."""
    n = theta.shape[0]
    steps = affine_exp((theta @ basis.t()).reshape(n, -1, 6) / nsteps)
    return steps.transpose(1, 2).contiguous()


class _Integrate(torch.autograd.Function):
    """The integration loop with a hand-written backward that reuses the forward's cells and
    coefficients (autograd would record a dozen small nodes per step and gather again).

    Forward, per step with c = table[n, :, cell]: x' = c0 x + c1 y + c2, y' = c3 x + c4 y + c5.
    Backward: table[n, :, cell] += (gx x, gx y, gx, gy x, gy y, gy); (gx, gy) <- (c0 gx + c3 gy,
    c1 gx + c4 gy). Gathers and scatters run along the last axis of (N, 6, cells) tables, which
    keeps every coefficient row contiguous."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, table: torch.Tensor, nc: tuple[int, int],
                nsteps: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, p = x.shape
        xs, ys, cells, coeffs = [], [], [], []
        for _ in range(nsteps):
            idx = cell_index(x, y, nc[0], nc[1]).unsqueeze(1).expand(n, 6, p)
            c = torch.gather(table, 2, idx)
            xs.append(x)
            ys.append(y)
            cells.append(idx)
            coeffs.append(c)
            x, y = torch.addcmul(c[:, 2], c[:, 0], x).addcmul_(c[:, 1], y), \
                torch.addcmul(c[:, 5], c[:, 3], x).addcmul_(c[:, 4], y)
        ctx.save_for_backward(*xs, *ys, *cells, *coeffs)
        ctx.table_shape, ctx.nsteps = table.shape, nsteps
        return x, y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gx: torch.Tensor, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved, k = ctx.saved_tensors, ctx.nsteps
        xs, ys, cells, coeffs = saved[:k], saved[k:2 * k], saved[2 * k:3 * k], saved[3 * k:]
        grad_table = gx.new_zeros(ctx.table_shape) if ctx.needs_input_grad[2] else None
        local = gx.new_empty(gx.shape[0], 6, gx.shape[1])
        for step in range(k - 1, -1, -1):
            c = coeffs[step]
            if grad_table is not None:
                x, y = xs[step], ys[step]
                torch.mul(gx, x, out=local[:, 0])
                torch.mul(gx, y, out=local[:, 1])
                local[:, 2] = gx
                torch.mul(gy, x, out=local[:, 3])
                torch.mul(gy, y, out=local[:, 4])
                local[:, 5] = gy
                grad_table.scatter_add_(2, cells[step], local)
            gx, gy = (c[:, 0] * gx).addcmul_(c[:, 3], gy), (c[:, 1] * gx).addcmul_(c[:, 4], gy)
        return gx, gy, grad_table, None, None


def integrate(points: torch.Tensor, theta: torch.Tensor, basis: torch.Tensor, nc: Sequence[int],
              nsteps: int) -> torch.Tensor:
    """Points (2, P) or (N, 2, P) in [0, 1]^2 moved along each theta's field for unit time -> (N, 2, P)."""
    n = theta.shape[0]
    table = step_maps(theta, basis.to(theta.dtype), nsteps)
    if points.dim() == 2:
        points = points.unsqueeze(0).expand(n, -1, -1)
    x, y = _Integrate.apply(points[:, 0].contiguous(), points[:, 1].contiguous(), table, (nc[0], nc[1]),
                            int(nsteps))
    return torch.stack([x, y], dim=1)


def affine_matrices(theta: torch.Tensor) -> torch.Tensor:
    """(N, 6) -> (N, 2, 3): expm of the Lie-algebra element [[t0 t1 t2] [t3 t4 t5] [0 0 0]],
    in grid_sample's normalised [-1, 1] coordinates: identity at 0, inverse at -theta."""
    return affine_exp(theta).view(-1, 2, 3)


def apply_affine(points: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Points (2, P) or (N, 2, P) in [0, 1]^2 mapped by the affine warp of theta -> (N, 2, P)."""
    m = affine_matrices(theta)
    p = points * 2 - 1  # the affine warp acts about the image centre, as affine_grid does
    if p.dim() == 2:
        p = p.unsqueeze(0)
    return ((m[:, :, :2] @ p + m[:, :, 2:]) + 1) / 2


class Warper(nn.Module):
    """T_theta for one image size and transformation family."""

    def __init__(self, image_hw: tuple[int, int], transformation: str, tess_size: Sequence[int] = (4, 2),
                 nsteps: int = 5) -> None:
        super().__init__()
        if transformation not in TRANSFORMATIONS:
            raise ValueError(f"unknown transformation '{transformation}'; use {', '.join(TRANSFORMATIONS)}")
        self.transformation = transformation
        self.nc = [int(n) for n in tess_size]
        self.nsteps = int(nsteps)
        self.register_buffer("grid", cpab_lib.unit_grid(*image_hw), persistent=False)
        if "cpab" in transformation:
            basis = cpab_lib.make_cpab(self.nc, self.nsteps).get_basis()
            self.register_buffer("basis", torch.as_tensor(basis, dtype=torch.float32))
            self.cpab_dim = int(basis.shape[1])
        else:
            self.cpab_dim = 0
        self.affine_dim = AFFINE_DIM if "affine" in transformation else 0

    @property
    def theta_dim(self) -> int:
        return self.affine_dim + self.cpab_dim

    def _split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return theta[:, :self.affine_dim], theta[:, self.affine_dim:]

    def sampling_points(self, theta: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Where each output pixel p samples its input, (N, 2, H*W) in [0, 1]^2: T_theta(p), or
        T_theta^-1(p) = T_-theta(p). affine+cpab is T = affine o CPAB (the CPAB flow first, then
        the affine map); its inverse runs the affine inverse first, then the reversed flow."""
        n = theta.shape[0]
        affine, velocity = self._split(theta)
        if inverse:
            points = apply_affine(self.grid, -affine) if self.affine_dim else self.grid.expand(n, -1, -1)
            return integrate(points, -velocity, self.basis, self.nc, self.nsteps) if self.cpab_dim else points
        points = integrate(self.grid, velocity, self.basis, self.nc, self.nsteps) if self.cpab_dim \
            else self.grid.expand(n, -1, -1)
        return apply_affine(points, affine) if self.affine_dim else points

    def both_ways(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T_theta(p), T_theta^-1(p)) for every pixel p, as sampling_points gives them. C-VITAE
        needs both for every batch: the CPAB flows of theta and -theta run as one integration
        of 2N (half the op launches of two)."""
        if not self.cpab_dim:
            return self.sampling_points(theta), self.sampling_points(theta, inverse=True)
        n = theta.shape[0]
        affine, velocity = self._split(theta)
        inverse_start = apply_affine(self.grid, -affine) if self.affine_dim else self.grid.expand(n, -1, -1)
        start = torch.cat([self.grid.expand(n, -1, -1), inverse_start])
        moved = integrate(start, torch.cat([velocity, -velocity]), self.basis, self.nc, self.nsteps)
        forward = apply_affine(moved[:n], affine) if self.affine_dim else moved[:n]
        return forward, moved[n:]

    def forward(self, x: torch.Tensor, theta: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """warp(x, theta)(p) = x(T_theta(p)); with inverse, x(T_theta^-1(p))."""
        return cpab_lib.sample_at(x, self.sampling_points(theta, inverse).to(x.dtype))
