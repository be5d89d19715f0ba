"""D-scores on codes where the right answer is known."""

from __future__ import annotations

import numpy as np

from dcbench.api import Codes, DataBundle, MetricInput, Split
from dcbench_plugins.metrics.dscore import DScore


def test_dscore_is_one_for_label_codes_and_near_chance_for_noise() -> None:
    rng = np.random.default_rng(0)
    labels = {s: rng.integers(0, 10, n) for s, n in (("train", 600), ("test", 300))}
    x = {s: np.zeros((len(labels[s]), 1, 4, 4), np.float32) for s in labels}
    onehot = {s: np.eye(10)[labels[s]] for s in labels}
    noise = {s: rng.normal(size=(len(labels[s]), 10)) for s in labels}
    data = DataBundle(Split(x["train"], labels["train"]), Split(x["test"], labels["test"]))
    inputs = MetricInput(Codes(onehot["train"], noise["train"]), Codes(onehot["test"], noise["test"]), data,
                         method=None, seed=0)
    scores = DScore().compute(inputs)
    assert scores["D(c|c)"] == 1.0
    assert scores["D(c|z)"] < 0.25
    assert DScore.columns == {"D(c|c)": "max", "D(c|z)": "min"}
