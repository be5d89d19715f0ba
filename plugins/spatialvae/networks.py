"""SpatialVAE's networks: the inference MLP, the coordinate generator, the pixel grid and the
rotations that act on it.

The generator is a function of one coordinate and the content code, evaluated at every pixel
(or voxel) of a grid that has been rotated and shifted by the transformation latents. All
(pixel, input) pairs of a batch go through the MLP as the rows of one matrix, with a
hand-written backward (see _PixelMLP) checked against the plain autograd form in the tests.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dcbench_plugins.common.geometry import rotation_matrices_2d, rotation_matrices_3d

ACTIVATIONS = ("tanh", "leaky_relu")
ROTATIONS_3D = ("axis_angle", "euler")
LEAKY_SLOPE = 0.01  # nn.LeakyReLU's default, which the reference uses


def unsupported_reason(input_shape: tuple[int, ...]) -> str | None:
    """None for (C, H, W) images with 1 or 3 channels and (1, D, H, W) volumes."""
    shape = tuple(input_shape)
    ok = (len(shape) == 3 and shape[0] in (1, 3)) or (len(shape) == 4 and shape[0] == 1)
    if ok and all(int(s) >= 1 for s in shape):
        return None
    return f"needs (C,H,W) images with 1 or 3 channels or (1,D,H,W) volumes, got {shape}"


def spatial_dims(input_shape: tuple[int, ...]) -> int:
    """2 for images, 3 for volumes."""
    return len(input_shape) - 1


def rotation_params(input_shape: tuple[int, ...]) -> int:
    """Numbers that parameterise a rotation: 1 angle in 2D, 3 in 3D."""
    return 1 if spatial_dims(input_shape) == 2 else 3


def coordinate_grid(size: tuple[int, ...]) -> torch.Tensor:
    """Centred coordinates of every pixel (H, W) or voxel (D, H, W), shape (N, 2) as (x, y) or
    (N, 3) as (x, y, z), in the row-major order of the flattened input.

    As in the reference: x runs -1 -> 1 along the columns and y +1 -> -1 down the rows (y up).
    z runs -1 -> 1 along the depth. The longest axis spans [-1, 1] and the others keep the same
    spacing, so a rotation turns pixels by the same angle on non-square grids; on a square grid
    this is exactly the reference's linspace(-1, 1) grid.
    """
    step = 2.0 / max(max(size) - 1, 1)
    axes = [(torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * step for n in size]
    if len(size) == 2:
        rows, cols = torch.meshgrid(axes[0], axes[1], indexing="ij")
        grid = torch.stack([cols, -rows], -1)
    else:
        depth, rows, cols = torch.meshgrid(axes[0], axes[1], axes[2], indexing="ij")
        grid = torch.stack([cols, -rows, depth], -1)
    return grid.reshape(-1, len(size)).float()


def axis_angle_matrices(v: torch.Tensor) -> torch.Tensor:
    """(N, 3) rotation vectors (axis * angle in radians) -> (N, 3, 3) matrices (Rodrigues):
    R = I + sinc(a) V + (1 - cos a) / a^2 V^2 with V the cross-product matrix of v. A Taylor
    series near a = 0 keeps values and gradients finite there."""
    a2 = (v * v).sum(1)
    small = a2 < 1e-6
    safe = torch.where(small, torch.ones_like(a2), a2)  # never take sqrt/divide at 0
    a = safe.sqrt()
    s = torch.where(small, 1 - a2 / 6, torch.sin(a) / a)
    c = torch.where(small, 0.5 - a2 / 24, (1 - torch.cos(a)) / safe)
    x, y, z = v.unbind(1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], 1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand_as(cross)
    return eye + s.view(-1, 1, 1) * cross + c.view(-1, 1, 1) * (cross @ cross)


def rotation_matrices(params: torch.Tensor, rotation_3d: str = "axis_angle") -> torch.Tensor:
    """(B, 1) angles -> (B, 2, 2); (B, 3) axis-angle vectors or Euler angles -> (B, 3, 3)."""
    if params.shape[1] == 1:
        return rotation_matrices_2d(params[:, 0])
    if rotation_3d == "euler":
        return rotation_matrices_3d(params)
    return axis_angle_matrices(params)


def transform_grid(grid: torch.Tensor, rotation: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each coordinate p to R p, then shift by t: (N, s) grid, (B, s, s) rotations and
    (B, s) shifts -> (B, N, s). The reference's bmm(grid, R^T) + t."""
    return torch.baddbmm(shift.unsqueeze(1), grid.expand(rotation.shape[0], -1, -1), rotation.transpose(1, 2))


def _activation(name: str) -> nn.Module:
    # The reference's 'relu' option is a LeakyReLU.
    return nn.Tanh() if name == "tanh" else nn.LeakyReLU()


class _Activation:
    """How the fused generator stores a hidden layer y = act(a): as a state s with
    y = alpha * s + beta, made in place from gamma * a; backward(u, s) gives e with
    dL/da = kappa * e when dL/dy = u.

    tanh(a) = 2 sigmoid(2a) - 1: the state is sigmoid(2a), one in-place pass (torch's tanh kernel
    is ~3x slower than its sigmoid on CPU); the affine 2s - 1 is folded into the next layer's
    weights and bias, and the factors 2 into the matmuls' alpha/beta."""

    def __init__(self, name: str) -> None:
        self.tanh = name == "tanh"
        self.alpha, self.beta, self.gamma, self.kappa = (2.0, -1.0, 2.0, 4.0) if self.tanh else (1.0, 0.0, 1.0, 1.0)

    def forward_(self, scaled_pre: torch.Tensor) -> torch.Tensor:
        return scaled_pre.sigmoid_() if self.tanh else F.leaky_relu_(scaled_pre, LEAKY_SLOPE)

    def backward(self, grad: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """grad * s (1 - s) for tanh (kappa * this = grad * (1 - y^2)); leaky ReLU's derivative."""
        if self.tanh:
            return torch.ops.aten.sigmoid_backward(grad, state)
        return torch.ops.aten.leaky_relu_backward(grad, state, LEAKY_SLOPE, True)


class _PixelMLP:
    """The per-pixel MLP's arithmetic, shared by the two autograd Functions below.

    It computes y_1 = act(grid_aug @ first[b]),  y_l = act(y_{l-1} @ W_l^T + b_l),
    out = y_L @ W_out^T + b_out for every grid point n and input b, where grid_aug = [p, 1]
    (N, s+1) and first[b] (s+1, h) is input b's first layer: the coordinate layer composed with
    its rotation and shift, plus the content offset. The first layer of all inputs is then one
    (n, s+1) @ (s+1, B*h) matmul, so activations are laid out (n, B, h): rows are (pixel, input)
    pairs. Its weight gradient is again one matmul, instead of a (h, B*N) @ (B*N, s) product that
    runs ~15x slower in MKL. Hidden states are kept in _Activation's folded form.
    """

    def __init__(self, activation: str, first: torch.Tensor, params: tuple[torch.Tensor, ...]) -> None:
        act = self.act = _Activation(activation)
        self.batch, self.k, self.hidden = first.shape
        self.weights = params[0::2]
        biases = params[1::2]
        self.stacked = (first * act.gamma).transpose(0, 1).reshape(self.k, self.batch * self.hidden)
        self.folded = [act.gamma * (bias + act.beta * w.sum(1)) for w, bias in zip(self.weights[:-1], biases[:-1])]
        self.out_bias = biases[-1] + act.beta * self.weights[-1].sum(1)

    def forward(self, grid_rows: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Hidden states and outputs (n * B, n_out) at grid points grid_rows (n, s+1)."""
        act = self.act
        pre = torch.mm(grid_rows, self.stacked).view(-1, self.hidden)
        states = [act.forward_(pre)]
        for weight, folded in zip(self.weights[:-1], self.folded):
            states.append(act.forward_(torch.addmm(folded, states[-1], weight.t(), alpha=act.gamma * act.alpha)))
        return states, torch.addmm(self.out_bias, states[-1], self.weights[-1].t(), alpha=self.act.alpha)


def _pixel_mlp_backward(act: _Activation, weights: tuple[torch.Tensor, ...], g: torch.Tensor,
                        grid_rows: torch.Tensor, states: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of sum(g * out) for one block of rows: [d/d first (stacked, (s+1, B*h)),
    d/dW_2, d/db_2, ..., d/dW_out, d/db_out]."""
    n_layers = len(states)
    g_sum = g.sum(0)
    param_grads = [act.alpha * (g.t() @ states[-1]) + act.beta * g_sum.unsqueeze(1), g_sum]
    # dL/dy_L = scale * u; an outer product when the output is one channel
    u = g * weights[-1] if g.shape[1] == 1 else g @ weights[-1]
    scale = 1.0
    for layer in range(n_layers - 1, -1, -1):
        e = act.backward(u, states[layer])
        scale *= act.kappa  # dL/d(pre-activation of this layer) = scale * e
        if layer == 0:
            break
        e_sum = e.sum(0)
        weight_grad = scale * (act.alpha * (e.t() @ states[layer - 1]) + act.beta * e_sum.unsqueeze(1))
        param_grads[:0] = [weight_grad, scale * e_sum]
        u = e @ weights[layer - 1]
    grad_stacked = (grid_rows.t() @ e.view(grid_rows.shape[0], -1)).mul_(scale)
    return [grad_stacked, *param_grads]


class _CoordinateMLP(torch.autograd.Function):
    """The generator's output at every grid point, (N, B, n_out), with a hand-written backward
    that takes the fewest passes over the (pixels x inputs x hidden) activations. Used to decode;
    training uses _CoordinateMLPLoss. Checked against the plain autograd form in the tests."""

    @staticmethod
    def forward(ctx, grid_aug: torch.Tensor, first: torch.Tensor, activation: str, *params: torch.Tensor
                ) -> torch.Tensor:
        mlp = _PixelMLP(activation, first, params)
        states, out = mlp.forward(grid_aug)
        ctx.activation, ctx.shape = activation, first.shape
        ctx.save_for_backward(grid_aug, *mlp.weights, *states)
        return out.view(grid_aug.shape[0], mlp.batch, -1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grid_aug, *rest = ctx.saved_tensors
        weights, states = rest[:len(rest) // 2], rest[len(rest) // 2:]
        g = grad_out.reshape(-1, grad_out.shape[-1])
        grad_stacked, *param_grads = _pixel_mlp_backward(_Activation(ctx.activation), weights, g, grid_aug, states)
        batch, k, hidden = ctx.shape
        return (None, grad_stacked.view(k, batch, hidden).transpose(0, 1), None, *param_grads)


class _CoordinateMLPLoss(torch.autograd.Function):
    """Reconstruction negative log-likelihood summed over pixels, channels and inputs, and its
    gradient, in one pass over blocks of grid points.

    The loss is a sum over pixels, so each block is run forward, scored and run backward at once
    and only the gradients are kept: activations are held for one block at a time, so memory
    does not grow with the batch or the image size (a 32^3 volume is 32768 pixels). backward only
    scales the stored gradients. Checked against the plain form in the tests.
    """

    @staticmethod
    def forward(ctx, grid_aug: torch.Tensor, first: torch.Tensor, target: torch.Tensor, likelihood: str,
                activation: str, block_rows: int, *params: torch.Tensor) -> torch.Tensor:
        mlp = _PixelMLP(activation, first, params)
        step = max(1, block_rows // mlp.batch)  # grid points per block
        loss = grid_aug.new_zeros((), dtype=torch.float64)
        grads: list[torch.Tensor] = []
        for start in range(0, grid_aug.shape[0], step):
            rows = grid_aug[start:start + step]
            states, out = mlp.forward(rows)
            t = target[start:start + step].reshape(out.shape)
            if likelihood == "bernoulli":  # -log p = softplus(out) - t * out; d/dout = sigmoid(out) - t
                loss += F.binary_cross_entropy_with_logits(out, t, reduction="sum").double()
                g = torch.sigmoid(out).sub_(t)
            else:  # unit-variance Gaussian without constants: 0.5 (out - t)^2; d/dout = out - t
                g = out.sub_(t)
                loss += 0.5 * g.double().square().sum()
            block = _pixel_mlp_backward(mlp.act, mlp.weights, g, rows, states)
            grads = block if not grads else [total.add_(part) for total, part in zip(grads, block)]
        grad_stacked, *param_grads = grads
        ctx.save_for_backward(grad_stacked.view(mlp.k, mlp.batch, mlp.hidden).transpose(0, 1), *param_grads)
        return loss.to(grid_aug.dtype)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_first, *param_grads = ctx.saved_tensors
        return (None, grad_first * grad_loss, None, None, None, None, *(g * grad_loss for g in param_grads))


class InferenceNetwork(nn.Module):
    """MLP on the flattened input -> (mean, log std) of every latent variable."""

    def __init__(self, n_in: int, n_latent: int, hidden: int, layers: int, activation: str) -> None:
        super().__init__()
        body: list[nn.Module] = []
        width = n_in
        for _ in range(layers):
            body += [nn.Linear(width, hidden), _activation(activation)]
            width = hidden
        body.append(nn.Linear(width, 2 * n_latent))
        self.layers = nn.Sequential(*body)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logstd = self.layers(x.flatten(1)).chunk(2, dim=1)
        return mu, logstd


class SpatialGenerator(nn.Module):
    """g(coordinate, z) -> n_out values for that pixel.

    First layer: coord_linear(coordinate) + latent_linear(z), as in the reference (the content
    code enters through its own layer, added to the coordinate layer's output); then
    (layers - 1) hidden Linear + activation; then a Linear to n_out. The per-input part of the
    first layer (latent term and both biases) is computed once per input, not once per pixel,
    and the per-pixel part runs in _CoordinateMLP on all N * B (pixel, input) pairs at once.
    """

    def __init__(self, n_coords: int, latent_dim: int, hidden: int, layers: int, n_out: int,
                 activation: str) -> None:
        super().__init__()
        self.activation = activation
        self.coord_linear = nn.Linear(n_coords, hidden)
        self.latent_linear = nn.Linear(latent_dim, hidden) if latent_dim > 0 else None
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.out = nn.Linear(hidden, n_out)

    def first_layer(self, rotation: torch.Tensor, shift: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Each input's first layer as a map of [p, 1]: W (R p + t) + bias + latent_linear(z) =
        [p, 1] @ [R^T W^T ; t W^T + bias + latent_linear(z)], shape (B, s + 1, hidden)."""
        weight_t = self.coord_linear.weight.t()
        offset = shift @ weight_t + self.coord_linear.bias
        if self.latent_linear is not None:
            offset = offset + self.latent_linear(z)
        return torch.cat([rotation.transpose(1, 2) @ weight_t, offset.unsqueeze(1)], dim=1)

    def forward(self, grid_aug: torch.Tensor, rotation: torch.Tensor, shift: torch.Tensor, z: torch.Tensor
                ) -> torch.Tensor:
        """Values at every point p of the grid (grid_aug = [p, 1], (N, s + 1)) for each input's
        rotation (B, s, s), shift (B, s) and content code (B, d): g(R p + t, z), (N, B, n_out)."""
        first = self.first_layer(rotation, shift, z)
        return _CoordinateMLP.apply(grid_aug, first, self.activation, *self._params())

    def _params(self) -> list[torch.Tensor]:
        return [p for layer in (*self.hidden, self.out) for p in (layer.weight, layer.bias)]

    def recon_loss(self, grid_aug: torch.Tensor, rotation: torch.Tensor, shift: torch.Tensor, z: torch.Tensor,
                   target: torch.Tensor, likelihood: str, block_rows: int) -> torch.Tensor:
        """Negative log-likelihood of target (N, B, n_out) under the generator's output, summed
        over everything: 'bernoulli' (outputs are logits) or 'gaussian' (unit variance, outputs
        are means, constants dropped). Computed block by block (block_rows = pixels x inputs)."""
        first = self.first_layer(rotation, shift, z)
        return _CoordinateMLPLoss.apply(grid_aug, first, target, likelihood, self.activation, block_rows,
                                        *self._params())

    def reference_forward(self, grid_aug: torch.Tensor, rotation: torch.Tensor, shift: torch.Tensor,
                          z: torch.Tensor) -> torch.Tensor:
        """The same function written plainly with autograd on transformed coordinates (tests)."""
        act = _activation(self.activation)
        coords = transform_grid(grid_aug[:, :-1], rotation, shift)  # (B, N, s)
        h = self.coord_linear(coords)
        if self.latent_linear is not None:
            h = h + self.latent_linear(z).unsqueeze(1)
        h = act(h)
        for layer in self.hidden:
            h = act(layer(h))
        return self.out(h).transpose(0, 1)
