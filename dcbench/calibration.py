"""`dcbench calibrate`: reference rows that put a leaderboard's clustering numbers on a scale.

Two reference "methods" whose content codes are built from the test labels, scored by the
dataset's own metrics on the dataset's own data (loaded exactly as a run loads it), so that the
rows are computed, never typed in:

- `labels (ceiling)`: one-hot(composition) next to 0.1 x one-hot(conformation). k-means with
  k = #compositions then groups by composition, and within a composition k-means with
  k = #conformations groups by conformation, so ARI is 1 and AUC-FSC averages pure clusters:
  the best these metrics can say about these particles.
- `shuffled labels (floor)`: the same codes from a seeded permutation of the test labels
  (composition and conformation moved together): clusters of the right sizes with random
  members, which is what codes that know nothing score (ARI about 0; AUC-FSC of blended
  averages, well above 0).

Only metrics whose every column is an ARI or an AUC-FSC take part: the others are trivial for
label codes (a linear probe reads labels perfectly) or need a method (rotating inputs,
decoding). Each (reference, seed) is one run folder under runs/ (codes, metrics, provenance)
and one leaderboard row with `"calibration": "ceiling"` or `"floor"` and the preset label
`reference` plus any data overrides, next to the runs made with the same data settings.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from dcbench import atomic, leaderboard
from dcbench.api import Codes, DataBundle, Dataset, Method, Metric, MetricInput
from dcbench.config import parse_assignments, preset_label, resolve_method_config
from dcbench.errors import DcbenchError
from dcbench.metric_contract import metric_settings, score_metrics
from dcbench.records import RunRecord, environment, utc_now, write_figures
from dcbench.registry import Registry, get_registry
from dcbench.settings_checks import check_seeds

PRESET = "reference"
REFERENCES = {"ceiling": "labels (ceiling)", "floor": "shuffled labels (floor)"}
CALIBRATED_COLUMNS = ("ARI(", "AUC-FSC(")  # metrics with only such columns take labels as codes
CONFORMATION_SCALE = 0.1  # conformation one-hots 10x closer than compositions: k-means splits compositions first


@dataclass(frozen=True)
class LabelCodes:
    """Stands in for the method in MetricInput: which code holds conformation (the ari metric
    asks), and that there is no decoder."""

    name: str
    conformation_code: str = "content"
    generative: bool = False


@dataclass
class CalibrationPlan:
    """Everything resolved before any work, so that bad input fails fast."""

    dataset: str
    dataset_cls: type[Dataset]
    metrics: list[Metric]
    data_settings: dict[str, Any]
    overrides: dict[str, str]
    label: str
    seeds: list[int]


def calibrated(metric_cls: type[Metric]) -> bool:
    """Whether labels-as-codes calibrate this metric: all its columns are ARIs or AUC-FSCs."""
    return bool(metric_cls.columns) and all(c.startswith(CALIBRATED_COLUMNS) for c in metric_cls.columns)


def calibrated_datasets(registry: Registry) -> list[str]:
    """The registered datasets with at least one default metric that labels calibrate."""
    found = []
    for name in registry.names("dataset"):
        try:
            metrics = registry.load("dataset", name).default_metrics
            if any(calibrated(registry.load("metric", m)) for m in metrics):
                found.append(name)
        except DcbenchError:  # a broken plugin: not ours to report here
            continue
    return found


def plan(dataset: str, seeds: Sequence[int], assignments: Sequence[str], registry: Registry) -> CalibrationPlan:
    if not seeds:
        raise DcbenchError("--seeds names no seed")
    check_seeds(seeds)
    dataset_cls = registry.load("dataset", dataset)
    metric_classes = [registry.load("metric", name) for name in dataset_cls.default_metrics]
    metrics = [cls() for cls in metric_classes if calibrated(cls)]
    if not metrics:
        raise DcbenchError(f"dataset '{dataset}' has no default metric that labels calibrate (columns ARI or AUC-FSC: "
                           f"ari, fsc); datasets that have one: {', '.join(calibrated_datasets(registry)) or 'none'}")
    overrides = parse_assignments(list(assignments))
    # Data settings only (data.train_size, data.<option>): there is no method to configure.
    _, data_settings = resolve_method_config({}, overrides, None, "calibrate", dict(dataset_cls.option_defaults),
                                             dataset_cls.option_types, dataset_cls.check_options)
    return CalibrationPlan(dataset, dataset_cls, metrics, data_settings, overrides,
                           preset_label(PRESET, overrides, None), list(seeds))


def one_hot(labels: np.ndarray, categories: np.ndarray) -> np.ndarray:
    return (np.asarray(labels)[:, None] == categories[None]).astype(np.float32)


def label_codes(content: np.ndarray, conformation: np.ndarray | None, data: DataBundle) -> Codes:
    """Content codes one-hot(composition) ++ 0.1 x one-hot(conformation), over the categories of
    both splits (so train and test codes share columns); a zero-width transformation code."""
    compositions = np.unique(np.concatenate([data.train.content, data.test.content]))
    parts = [one_hot(content, compositions)]
    if conformation is not None:
        known = [s.conformation for s in (data.train, data.test) if s.conformation is not None]
        parts.append(CONFORMATION_SCALE * one_hot(conformation, np.unique(np.concatenate(known))))
    codes = np.concatenate(parts, axis=1)
    return Codes(codes, np.zeros((len(codes), 0), np.float32))


def reference_codes(kind: str, data: DataBundle, seed: int) -> tuple[Codes, Codes]:
    """(train, test) codes of one reference: from the labels (ceiling) or from a seeded
    permutation of them, composition and conformation permuted together (floor)."""
    rng = np.random.default_rng(seed)
    out = []
    for split in (data.train, data.test):
        order = np.arange(len(split)) if kind == "ceiling" else rng.permutation(len(split))
        conformation = None if split.conformation is None else split.conformation[order]
        out.append(label_codes(split.content[order], conformation, data))
    return out[0], out[1]


def run_calibration(dataset: str, seeds_text: str, assignments: Sequence[str], data_root: Path | None,
                    runs_dir: Path, leaderboard_dir: Path, echo: Callable[[str], None] = print,
                    registry: Registry | None = None) -> Path | None:
    """Compute both reference rows for every seed and append them to the dataset's
    leaderboard; returns its Markdown path (None if the page could not be re-rendered: a warning
    says why). All input is checked before any data is loaded."""
    from dcbench.sweep import parse_seeds

    registry = registry or get_registry()
    p = plan(dataset, parse_seeds(seeds_text), assignments, registry)
    atomic.ensure_writable_folder(runs_dir, "--runs-dir")
    atomic.ensure_writable_folder(leaderboard_dir, "--leaderboard-dir")
    board = leaderboard.markdown_path(leaderboard_dir, dataset)
    for number, seed in enumerate(p.seeds, 1):
        echo(f"[seed {seed}, {number}/{len(p.seeds)}] loading {dataset} ({p.label})")
        board = calibrate_seed(p, seed, data_root, runs_dir, leaderboard_dir, echo)
    return board


def calibrate_seed(p: CalibrationPlan, seed: int, data_root: Path | None, runs_dir: Path, leaderboard_dir: Path,
                   echo: Callable[[str], None] = print) -> Path | None:
    """Both reference rows of one seed (one data load); returns the leaderboard's Markdown path
    (None if the page could not be re-rendered)."""
    from dcbench.runner import load_data

    names = ", ".join(m.name for m in p.metrics)
    started = time.perf_counter()
    data = load_data(p.dataset_cls, p.data_settings, data_root, seed)
    load_s = round(time.perf_counter() - started, 3)
    env = environment()
    board = leaderboard.markdown_path(leaderboard_dir, p.dataset)
    for kind, method in REFERENCES.items():
        echo(f"  {method}: computing {names} on {len(data.test)} test inputs ...")
        started = time.perf_counter()
        config = {"calibration": kind, "method": method, "dataset": p.dataset, "seed": seed, "preset": PRESET,
                  "preset_label": p.label, "metrics": [m.name for m in p.metrics], "data_root": data_root,
                  "overrides": p.overrides, "data": p.data_settings, "metric_settings": metric_settings(p.metrics)}
        record = RunRecord.create(runs_dir, f"calibration-{kind}", p.dataset, seed, config)
        finished: list[RunRecord] = []  # filled when its row goes in: a later error must not unmark it
        try:
            record.note_setup(env, "cpu", {"train_size": len(data.train), "test_size": len(data.test),
                                           **data.provenance})
            record.add_phase_seconds("load_data", load_s)  # one load serves both references
            metrics = _score(p, kind, data, seed, record)
            board = _publish(p, kind, seed, metrics, record, env, leaderboard_dir,
                             functools.partial(_finish, record, metrics, finished))
        except BaseException as exc:
            if finished:
                raise
            record.fail(str(exc) or type(exc).__name__,
                        status="interrupted" if isinstance(exc, KeyboardInterrupt | SystemExit) else "failed")
            raise
        shown = ", ".join(f"{column} {value:.3f}" for column, value in metrics.items())
        echo(f"  {method}: {shown} ({time.perf_counter() - started:.0f} s) -> {record.path}")
    return board


def _finish(record: RunRecord, metrics: dict[str, float], finished: list[RunRecord]) -> None:
    record.finish(metrics=metrics)
    finished.append(record)


def _score(p: CalibrationPlan, kind: str, data: DataBundle, seed: int, record: RunRecord) -> dict[str, float]:
    from dcbench.runner import save_codes

    with record.phase("codes"):
        train_codes, test_codes = reference_codes(kind, data, seed)
        save_codes(record.path / "codes.npz", train_codes, test_codes, data)
    with record.phase("metrics"):
        stand_in = cast(Method, LabelCodes(REFERENCES[kind]))
        inputs = MetricInput(train_codes, test_codes, data, stand_in, seed, record.path / "figures")
        scoring = score_metrics(p.metrics, inputs)  # as a run scores (dcbench.metric_contract)
        record.note_not_applicable(scoring.not_applicable)
        atomic.write_json(record.path / "metrics.json", scoring.scores)
        write_figures(record.path, scoring.figures)  # the cluster averages, for the board (seed 0)
    return scoring.scores


def _publish(p: CalibrationPlan, kind: str, seed: int, metrics: dict[str, float], record: RunRecord,
             env: dict[str, Any], leaderboard_dir: Path, finish: Callable[[], None]) -> Path | None:
    """The row a run would append (runner._publish), marked as calibration; no budget, since
    nothing trained. finish() marks the record finished in the same step as the row goes in."""
    row = {"method": REFERENCES[kind], "dataset": p.dataset, "preset": p.label, "seed": seed, "metrics": metrics,
           "directions": {c: d for m in p.metrics for c, d in m.columns.items()}, "calibration": kind,
           "metric_settings": metric_settings(p.metrics),
           "run": str(record.path), "finished_at": utc_now(), "dcbench": env["dcbench"],
           "git_commit": env["dcbench_git_commit"],
           "spec": {"preset": PRESET, "epochs": None, "overrides": p.overrides,
                    "metrics": [m.name for m in p.metrics]}}
    leaderboard.publish_figures(leaderboard_dir, row, record.path)  # seed 0: the cluster averages
    return leaderboard.append_row(leaderboard_dir, p.dataset, row, p.dataset_cls.reported,
                                  p.dataset_cls.reported_source, commit=finish)
