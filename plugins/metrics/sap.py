"""SAP(c), the Separated Attribute Predictability score (Kumar et al. 2018) of the content code.

For each single dimension i of the content code, S[i] is the test accuracy of a linear SVM
(LinearSVC, C = 0.01, balanced class weights, as in disentanglement_lib for discrete factors)
trained on that one dimension of the train codes to predict the content class. SAP(c) is the
gap between the best and the second-best dimension: high when one dimension alone carries the
class. With one factor (the content class) there is nothing further to average over. Requires
content codes (a method that only assigns classes has none: not applicable); NaN for a content
code of one dimension (no gap). Setting: `max_train`, the size of the seeded subset of train
codes the SVMs are fitted on.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from dcbench.api import Metric, MetricInput


def single_dimension_accuracies(train_codes: np.ndarray, train_labels: np.ndarray, test_codes: np.ndarray,
                                test_labels: np.ndarray) -> np.ndarray:
    """Test accuracy of a LinearSVC on each code dimension alone."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    scores = np.zeros(train_codes.shape[1])
    for i in range(train_codes.shape[1]):
        svm = LinearSVC(C=0.01, class_weight="balanced")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            svm.fit(train_codes[:, i:i + 1], train_labels)
        scores[i] = svm.score(test_codes[:, i:i + 1], test_labels)
    return scores


def sap_gap(scores: np.ndarray) -> float:
    if len(scores) < 2:
        return math.nan
    top = np.sort(scores)[::-1]
    return float(top[0] - top[1])


class SAP(Metric):
    name = "sap"
    columns = {"SAP(c)": "max"}
    requires = frozenset({"content_codes"})
    # a seeded subset: one SVM per dimension on 60k codes adds minutes, not precision
    settings = {"max_train": 10_000}

    def compute(self, inputs: MetricInput) -> dict[str, float]:
        train_codes, train_labels = inputs.train_codes.content, inputs.data.train.content
        if train_codes.shape[1] < 2:  # one dimension: no gap to measure
            return {"SAP(c)": math.nan}
        max_train = int(self.settings["max_train"])
        if len(train_codes) > max_train:
            keep = np.random.default_rng(inputs.seed).choice(len(train_codes), max_train, replace=False)
            train_codes, train_labels = train_codes[keep], train_labels[keep]
        scores = single_dimension_accuracies(train_codes, train_labels, inputs.test_codes.content,
                                             inputs.data.test.content)
        return {"SAP(c)": sap_gap(scores)}
