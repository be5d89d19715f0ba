"""Score saved codes (a run folder's codes.npz) with several readings of SAP(c), to see which one
the paper's numbers fit. Used for docs/reproduction.md; not part of the benchmark.

Usage: python scripts/sap_variants.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.svm import LinearSVC

from dcbench.array_cache import load_arrays

MAX_TRAIN = 10_000


class _BalancedSVC(LinearSVC):
    """LinearSVC scored by balanced accuracy (chance = 0.5 whatever the class frequency)."""

    def __init__(self) -> None:
        super().__init__(C=0.01, class_weight="balanced")

    def score(self, x: np.ndarray, y: np.ndarray, sample_weight=None) -> float:
        from sklearn.metrics import balanced_accuracy_score

        return float(balanced_accuracy_score(y, self.predict(x)))


def gap(scores: np.ndarray) -> float:
    top = np.sort(scores)[::-1]
    return float(top[0] - top[1])


def per_dimension(make, train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> np.ndarray:
    scores = []
    for i in range(train.shape[1]):
        model = make()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(train[:, i:i + 1], y_train)
        scores.append(model.score(test[:, i:i + 1], y_test))
    return np.array(scores)


def variants(run_dir: Path) -> dict[str, float]:
    keys = ("train_content", "train_labels", "test_content", "test_labels")
    arrays = load_arrays(run_dir / "codes.npz", keys)
    if arrays is None:
        raise SystemExit(f"{run_dir}: no readable codes.npz")
    c_train, y_train, c_test, y_test = (arrays[k] for k in keys)
    keep = np.random.default_rng(0).choice(len(c_train), min(MAX_TRAIN, len(c_train)), replace=False)
    c_train, y_train = c_train[keep], y_train[keep]
    mean, std = c_train.mean(0), c_train.std(0) + 1e-12
    z_train, z_test = (c_train - mean) / std, (c_test - mean) / std
    svm = lambda: LinearSVC(C=0.01, class_weight="balanced")  # noqa: E731
    return {
        "code scale (mean std)": float(std.mean()),
        "svm (dcbench)": gap(per_dimension(svm, c_train, y_train, c_test, y_test)),
        "svm, standardised codes": gap(per_dimension(svm, z_train, y_train, z_test, y_test)),
        "logistic regression": gap(per_dimension(lambda: LogisticRegression(max_iter=1000), c_train, y_train,
                                                 c_test, y_test)),
        "one-vs-rest per class, balanced accuracy, mean gap": float(np.mean([
            gap(per_dimension(lambda: _BalancedSVC(), c_train, y_train == k, c_test, y_test == k))
            for k in np.unique(y_train)])),
        "R^2 of class id (continuous SAP)": gap(per_dimension(LinearRegression, c_train, y_train.astype(float),
                                                              c_test, y_test.astype(float))),
    }


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        run = Path(arg)
        print(run.parent.name, {k: round(v, 3) for k, v in variants(run).items()})
