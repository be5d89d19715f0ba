"""The k-means that dcbench's clustering scores share (the `ari` and `fsc` metrics and the
classification report), so that all of them read the same clusters of the same codes."""

from __future__ import annotations

import warnings

import numpy as np


def kmeans(codes: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster ids 0 .. k - 1 (N,) of scikit-learn's KMeans with k clusters, 10 initialisations,
    seeded with `seed`."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # collapsed codes leave clusters empty, which every score counts as it is; no need to warn
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(np.asarray(codes, np.float64))
