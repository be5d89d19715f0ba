"""ARI: do the codes cluster the way the true classes do?

- ARI(composition): k-means on the test content codes with k = the number of true content
  classes (compositions), scored against them with sklearn's adjusted_rand_score.
- ARI(conformation): within each true composition, k-means on the codes that hold conformation
  with k = the number of conformations present in that composition, scored against the true
  conformations; the mean over compositions (each with at least two conformations). Which code
  holds conformation is the method's claim: its `conformation_code` (Method.conformation_code,
  "content" or "transformation"), by default the content code, since a conformation is part of
  what an object is, not of its pose. NaN when the dataset has no conformation labels.

k-means: scikit-learn's KMeans, 10 initialisations, seeded with the run's seed.

Methods that assign classes themselves (Codes.assignments, e.g. Hydra) are scored on those
classes instead of k-means clusters for ARI(composition); ARI(conformation) then needs
conformation codes and is NaN for methods with zero-width codes. Requires content codes or
assignments (the runner reports the metric not applicable for a method with neither).
"""

from __future__ import annotations

import math

import numpy as np

from dcbench.api import Method, Metric, MetricInput
from dcbench.clustering import kmeans


def cluster_ari(codes: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """ARI between `labels` and a k-means clustering of `codes` into as many clusters."""
    from sklearn.metrics import adjusted_rand_score

    k = len(np.unique(labels))
    if k < 2 or len(codes) <= k:
        return math.nan
    return float(adjusted_rand_score(labels, kmeans(codes, k, seed)))


class ARI(Metric):
    name = "ari"
    columns = {"ARI(composition)": "max", "ARI(conformation)": "max"}
    requires = frozenset({"codes_or_assignments"})

    def compute(self, inputs: MetricInput) -> dict[str, float]:
        from sklearn.metrics import adjusted_rand_score

        test, codes, seed = inputs.data.test, inputs.test_codes, inputs.seed
        if codes.assignments is not None:  # the method's own classes, not k-means on its codes
            composition = float(adjusted_rand_score(test.content, codes.assignments))
        else:
            composition = cluster_ari(codes.content, test.content, seed)
        scores = {"ARI(composition)": composition, "ARI(conformation)": math.nan}
        if test.conformation is None:
            return scores
        # the method's claim; no method (metrics computed by hand): the declared default
        which = (inputs.method if inputs.method is not None else Method).conformation_code
        conformation_codes = codes.transformation if which == "transformation" else codes.content
        if conformation_codes.shape[1] == 0:  # no codes to cluster (an assignment-only method)
            return scores
        per_composition = []
        for k in np.unique(test.content):
            members = test.content == k
            per_composition.append(cluster_ari(conformation_codes[members], test.conformation[members], seed))
        per_composition = [s for s in per_composition if not math.isnan(s)]
        if per_composition:
            scores["ARI(conformation)"] = float(np.mean(per_composition))
        return scores
