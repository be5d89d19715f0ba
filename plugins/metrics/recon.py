"""Test reconstruction error: mean squared error per input element between each test input and
Dec(c, z) of its own codes (posterior means). Requires a decoder: the runner reports it "not
applicable" (NaN) for methods that are not generative. Setting: `batch_size`, inputs decoded at
once (the squared errors are summed batch by batch)."""

from __future__ import annotations

import numpy as np

from dcbench.api import Metric, MetricInput
from dcbench.finite import checked_decode


class Recon(Metric):
    name = "recon"
    columns = {"recon MSE": "min"}
    requires = frozenset({"decoder"})
    settings = {"batch_size": 500}

    def compute(self, inputs: MetricInput) -> dict[str, float]:
        method, test = inputs.method, inputs.data.test
        codes = inputs.test_codes
        total, batch = 0.0, int(self.settings["batch_size"])
        for i in range(0, len(test), batch):
            part = slice(i, i + batch)
            # a NaN here would make the score NaN, which the board shows as n/a: refuse it in one line
            decoded = checked_decode(method, codes.content[part], codes.transformation[part], "reconstruction error")
            total += float(np.square(decoded.astype(np.float64) - test.x[part]).sum())
        return {"recon MSE": total / test.x.size}
