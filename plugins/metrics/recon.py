"""Test reconstruction error: mean squared error per input element between each test input and
Dec(c, z) of its own codes (posterior means). Generative methods only; NaN ("not applicable")
for methods without a decoder."""

from __future__ import annotations

import math

import numpy as np

from dcbench.api import Metric, MetricInput


class Recon(Metric):
    name = "recon"
    columns = {"recon MSE": "min"}
    batch_size = 500

    def compute(self, inputs: MetricInput) -> dict[str, float]:
        method, test = inputs.method, inputs.data.test
        if not method.generative:
            return {"recon MSE": math.nan}
        codes = inputs.test_codes
        total = 0.0
        for i in range(0, len(test), self.batch_size):
            part = slice(i, i + self.batch_size)
            decoded = method.decode(codes.content[part], codes.transformation[part])
            total += float(np.square(decoded.astype(np.float64) - test.x[part]).sum())
        return {"recon MSE": total / test.x.size}
