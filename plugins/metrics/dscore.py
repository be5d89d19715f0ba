"""D-scores: how well a linear classifier recovers the content class from each code.

D(c|c): logistic regression trained on the train split's content codes, accuracy on the test
split's content codes (higher is better). D(c|z): the same from transformation codes (lower
is better: z should not tell the class). NaN for a zero-width code (a method without one).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from dcbench.api import Metric, MetricInput


def linear_probe_accuracy(train_codes: np.ndarray, train_labels: np.ndarray, test_codes: np.ndarray,
                          test_labels: np.ndarray, seed: int = 0) -> float:
    """Test accuracy of sklearn's default logistic regression (as in the paper's protocol), given
    enough iterations to converge."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if train_codes.shape[1] == 0:  # no code to probe (e.g. a method that only assigns classes)
        return math.nan
    probe = LogisticRegression(max_iter=1000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(train_codes, train_labels)
    return float(probe.score(test_codes, test_labels))


class DScore(Metric):
    name = "dscore"
    columns = {"D(c|c)": "max", "D(c|z)": "min"}
    # no `requires`: each column needs its own code, and a zero-width one is NaN in its column only

    def compute(self, inputs: MetricInput) -> dict[str, float]:
        train, test, data = inputs.train_codes, inputs.test_codes, inputs.data
        return {
            "D(c|c)": linear_probe_accuracy(train.content, data.train.content, test.content,
                                            data.test.content, inputs.seed),
            "D(c|z)": linear_probe_accuracy(train.transformation, data.train.content, test.transformation,
                                            data.test.content, inputs.seed),
        }
