"""S(z): how much of the transformation code is explained by the transformation alone.

The paper reports S(z) without defining it in the text available to us; its numbers constrain it
(rotation-only codes and a collapsed z score about 1, richer codes 0.6-0.75, lower = z holds
information beyond rotation). dcbench's operationalisation (docs/metrics.md):

  draw pairs (i, j) of different test inputs and angles a; rotate both inputs by the same a,
  encode them, and average |cos(z(R_a x_i), z(R_a x_j))| over pairs and angles.

If z only encodes the rotation, both codes point the same way and S(z) = 1; if z also carries
content or style, the two inputs' codes differ and S(z) falls. A code of all zeros counts as
identical to another all-zero code (|cos| = 1), so a collapsed z scores 1 either way. Requires
transformation codes: not applicable for a zero-width z (a method without transformation codes;
such methods need not encode new inputs). Settings: `pairs`, `angles` and `max_degrees` (angles
drawn uniformly in [-max_degrees, max_degrees]).
"""

from __future__ import annotations

import math

import numpy as np

from dcbench.api import Metric, MetricInput
from dcbench.finite import check_codes


def rotate_batch(x: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotate each image (N, C, H, W) in-plane by its angle (radians), or each volume
    (N, 1, D, H, W) about the z axis (the first spatial axis), with bilinear resampling."""
    import torch

    from dcbench_plugins.common.geometry import rotation_matrices_2d, rotation_matrices_3d, warp

    t = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    a = torch.as_tensor(angles, dtype=torch.float32)
    if t.dim() == 4:
        linear = rotation_matrices_2d(a)
    else:
        linear = rotation_matrices_3d(torch.stack([torch.zeros_like(a), torch.zeros_like(a), a], 1))
    return warp(t, linear).numpy()


def mean_abs_cosine(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> float:
    """Mean |cos| between rows of a and b; two zero rows count as 1, one zero row as 0."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na < eps) & (nb < eps)
    cos = np.abs((a * b).sum(1)) / np.maximum(na * nb, eps)
    return float(np.where(both_zero, 1.0, np.minimum(cos, 1.0)).mean())


class SZ(Metric):
    name = "sz"
    columns = {"S(z)": "min"}
    requires = frozenset({"transformation_codes"})
    settings = {"pairs": 500, "angles": 8, "max_degrees": 90.0}

    def compute(self, inputs: MetricInput) -> dict[str, float]:
        test = inputs.data.test
        rng = np.random.default_rng(inputs.seed)
        n = len(test)
        if n < 2:  # no pair of different inputs
            return {"S(z)": math.nan}
        pairs, max_degrees = int(self.settings["pairs"]), float(self.settings["max_degrees"])
        first = rng.integers(0, n, pairs)
        second = (first + rng.integers(1, n, pairs)) % n  # never the same input
        scores = []
        for angle in rng.uniform(-max_degrees, max_degrees, int(self.settings["angles"])):
            angles = np.full(pairs, math.radians(angle))
            z_first = self._encoded(inputs, rotate_batch(test.x[first], angles))
            z_second = self._encoded(inputs, rotate_batch(test.x[second], angles))
            scores.append(mean_abs_cosine(z_first, z_second))
        return {"S(z)": float(np.mean(scores))}

    @staticmethod
    def _encoded(inputs: MetricInput, x: np.ndarray) -> np.ndarray:
        """Transformation codes of rotated test inputs, refused in one line if any is not finite
        (a NaN would make S(z) NaN, shown as n/a, instead of failing the run)."""
        codes = inputs.method.encode(x)
        check_codes(getattr(inputs.method, "name", type(inputs.method).__name__), codes, "rotated test")
        return codes.transformation
