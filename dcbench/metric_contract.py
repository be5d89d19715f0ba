"""The metric contract: what a metric may require, and the one place that scores metrics.

A metric declares what it needs (`Metric.requires`, names from REQUIREMENTS below). Before
calling compute, `score_metrics` checks each requirement against the MetricInput; when one is
unmet the metric is "not applicable": compute is not called, every column is NaN, and the reason
is kept ({metric: reason}, in the run's provenance.json as "not_applicable"). compute may return
a plain {column: value} dict or a MetricResult that also names the figures it drew. A run, `dcbench
score` and `dcbench calibrate` all score through score_metrics, so re-scoring a run
reproduces its metrics.json exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcbench.api import Metric, MetricInput, MetricResult


@dataclass(frozen=True)
class Requirement:
    meaning: str  # what is needed, phrased to follow "needs"
    met: Callable[[MetricInput], bool]


def _width(codes: Any, part: str) -> int:
    return int(getattr(codes, part).shape[1])


REQUIREMENTS: dict[str, Requirement] = {
    "content_codes": Requirement("content codes of at least one dimension",
                                 lambda i: _width(i.test_codes, "content") > 0),
    "transformation_codes": Requirement("transformation codes of at least one dimension",
                                        lambda i: _width(i.test_codes, "transformation") > 0),
    "codes_or_assignments": Requirement(
        "content codes of at least one dimension or the method's own class assignments",
        lambda i: i.test_codes.assignments is not None or _width(i.test_codes, "content") > 0),
    "decoder": Requirement("a generative method (one that decodes codes into inputs)",
                           lambda i: i.method is not None and bool(i.method.generative)),
    "volumes": Requirement("volumes as inputs, (N, 1, D, H, W)", lambda i: i.data.test.x.ndim == 5),
    "references": Requirement("ground-truth reference maps (DataBundle.references)",
                              lambda i: i.data.references is not None),
    "conformation_labels": Requirement("conformation labels on the test split",
                                       lambda i: i.data.test.conformation is not None),
}


def check_requires(owner: str, names: Iterable[str]) -> frozenset[str]:
    """A metric class's `requires` as a frozenset; TypeError (when its plugin loads) for a name
    that is not in REQUIREMENTS, so a typo fails before any training, not after."""
    if isinstance(names, str):  # requires = "decoder" would otherwise be seven one-letter names
        names = [names]
    declared = frozenset(names)
    unknown = sorted(declared - set(REQUIREMENTS))
    if unknown:
        raise TypeError(f"metric {owner} requires unknown {', '.join(map(repr, unknown))}; "
                        f"known requirements: {', '.join(REQUIREMENTS)}")
    return declared


def unmet(metric: Metric, inputs: MetricInput) -> str | None:
    """Why `metric` does not apply to these inputs ("needs ..."), or None if every requirement
    it declares is met. Checked in REQUIREMENTS order, so the reason is the same every time."""
    for name, requirement in REQUIREMENTS.items():
        if name in metric.requires and not requirement.met(inputs):
            return f"needs {requirement.meaning}"
    return None


@dataclass
class Scoring:
    """What scoring a run's metrics gave."""

    scores: dict[str, float] = field(default_factory=dict)  # every metric's columns, in order
    figures: dict[str, Path] = field(default_factory=dict)  # kind -> file a metric drew
    not_applicable: dict[str, str] = field(default_factory=dict)  # metric name -> why it was not computed

    def merge(self, other: Scoring) -> None:
        """Add another scoring's results (later metrics' columns after these)."""
        self.scores.update(other.scores)
        self.figures.update(other.figures)
        self.not_applicable.update(other.not_applicable)


def score_metrics(metrics: Sequence[Metric], inputs: MetricInput) -> Scoring:
    """Score every metric in order: NaN in every column of a metric whose requirements are not
    met (compute not called), else its compute's values as floats and its figures."""
    scoring = Scoring()
    for metric in metrics:
        reason = unmet(metric, inputs)
        if reason is not None:
            scoring.not_applicable[metric.name] = reason
            scoring.scores.update({column: math.nan for column in metric.columns})
            continue
        result = metric.compute(inputs)
        scoring.scores.update({column: float(value) for column, value in result.items()})
        if isinstance(result, MetricResult):
            scoring.figures.update(result.figures)
    return scoring


def metric_settings(metrics: Sequence[Metric]) -> dict[str, dict[str, Any]]:
    """{metric name: its settings} of every metric (an empty dict for one without any), as the
    run's config.json and leaderboard row record them."""
    return {metric.name: dict(metric.settings) for metric in metrics}


__all__ = ["REQUIREMENTS", "Requirement", "Scoring", "check_requires", "metric_settings", "score_metrics", "unmet"]
