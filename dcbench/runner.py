"""Cross one method with one dataset and its metrics: train, encode, score, record, rank."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcbench import atomic, leaderboard
from dcbench.api import Codes, DataBundle, Dataset, Method, Metric, MetricInput, Split
from dcbench.config import PRESETS, RunSpec, dataset_options, preset_label, resolve_method_config
from dcbench.errors import DataError, DcbenchError, TrainingDiverged
from dcbench.records import RunRecord, environment, utc_now
from dcbench.registry import Registry, get_registry


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, float]
    leaderboard: Path | None


@dataclass
class Plan:
    """Everything resolved before any work starts, so that bad names fail fast."""

    method_cls: type[Method]
    dataset_cls: type[Dataset]
    metrics: list[Metric]
    config: dict[str, Any]
    data_settings: dict[str, Any]
    label: str


def plan(spec: RunSpec, registry: Registry) -> Plan:
    if spec.preset not in PRESETS:
        raise DcbenchError(f"unknown preset '{spec.preset}': use {' or '.join(PRESETS)}")
    method_cls = registry.load("method", spec.method)
    dataset_cls = registry.load("dataset", spec.dataset)
    metric_names = spec.metrics or list(dataset_cls.default_metrics)
    metrics = [registry.load("metric", name)() for name in metric_names]
    reason = method_cls.supports(tuple(dataset_cls.shape))
    if reason:
        raise DcbenchError(f"method '{spec.method}' cannot run on dataset '{spec.dataset}': it {reason}")
    defaults = method_cls.default_config(spec.preset, tuple(dataset_cls.shape))
    config, data_settings = resolve_method_config(defaults, spec.overrides, spec.epochs, spec.method,
                                                 dict(dataset_cls.option_defaults))
    return Plan(method_cls, dataset_cls, metrics, config, data_settings,
                preset_label(spec.preset, spec.overrides, spec.epochs))


def subsample(split: Split, size: int, seed: int) -> Split:
    """A seeded random subset of `size` inputs (all of them when size is 0 or too large)."""
    if size <= 0 or size >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).choice(len(split), size=size, replace=False))
    pick = lambda a: None if a is None else a[idx]  # noqa: E731
    return Split(split.x[idx], split.content[idx], pick(split.conformation), pick(split.transform_params))


def check_data(data: DataBundle, dataset: type[Dataset]) -> None:
    for name, split in (("train", data.train), ("test", data.test)):
        if tuple(split.shape) != tuple(dataset.shape):
            raise DataError(f"dataset '{dataset.name}' declared inputs of shape {dataset.shape} but its "
                            f"{name} split has {split.shape}; fix the dataset plugin")
        if len(split) == 0:
            raise DataError(f"dataset '{dataset.name}' has an empty {name} split")
        if not np.isfinite(split.x).all():
            raise DataError(f"dataset '{dataset.name}' {name} split contains NaN or infinite values; "
                            "clean the input files")


class EpochProgress:
    """A progress bar over epochs showing the loss terms; stops the run on a non-finite loss."""

    def __init__(self, epochs: int, label: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=epochs, desc=label, unit="epoch", dynamic_ncols=True, leave=True)
        self.history: list[dict[str, float]] = []

    def __call__(self, epoch: int, terms: dict[str, float]) -> None:
        self.history.append({"epoch": epoch, **terms})
        bad = [k for k, v in terms.items() if not math.isfinite(v)]
        if bad:
            raise TrainingDiverged(f"loss term '{bad[0]}' became {terms[bad[0]]} in epoch {epoch + 1}; "
                                   "try a lower learning rate (--set lr=...) or another seed")
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items()}, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def save_codes(path: Path, train: Codes, test: Codes, data: DataBundle) -> None:
    arrays = {"train_content": train.content, "train_transformation": train.transformation,
              "train_labels": data.train.content, "test_content": test.content,
              "test_transformation": test.transformation, "test_labels": data.test.content}
    if data.test.conformation is not None:
        arrays["test_conformation"] = data.test.conformation
    atomic.write_with(path, lambda handle: np.savez_compressed(handle, **arrays))


def execute(spec: RunSpec, registry: Registry | None = None) -> RunResult:
    """Run one (method, dataset, seed) cell end to end and record it."""
    registry = registry or get_registry()
    p = plan(spec, registry)
    full_config = {"method": spec.method, "dataset": spec.dataset, "seed": spec.seed, "preset": spec.preset,
                   "preset_label": p.label, "device": spec.device, "metrics": [m.name for m in p.metrics],
                   "data_root": spec.data_root, "overrides": spec.overrides, "method_config": p.config,
                   "data": p.data_settings}
    record = RunRecord.create(spec.runs_dir, spec.method, spec.dataset, spec.seed, full_config)
    try:
        metrics, budget, train_seconds = _execute_phases(spec, p, record)
    except BaseException as exc:
        message = str(exc) if isinstance(exc, DcbenchError) else f"{type(exc).__name__}: {exc}"
        record.fail(message or type(exc).__name__)
        raise
    board = None
    if spec.leaderboard_dir is not None:
        row = {"method": spec.method, "dataset": spec.dataset, "preset": p.label, "seed": spec.seed,
               "metrics": metrics, "directions": {c: d for m in p.metrics for c, d in m.columns.items()},
               "budget": budget, "train_seconds": train_seconds, "run": str(record.path),
               "finished_at": utc_now(), "dcbench": record.provenance["environment"]["dcbench"],
               "git_commit": record.provenance["environment"]["dcbench_git_commit"],
               "generative": p.method_cls.generative,
               # What `dcbench reproduce` needs to rerun this row exactly.
               "spec": {"preset": spec.preset, "epochs": spec.epochs, "overrides": spec.overrides,
                        "metrics": [m.name for m in p.metrics]}}
        leaderboard.publish_figures(spec.leaderboard_dir, row, record.path / "figures")
        board = leaderboard.append_row(spec.leaderboard_dir, spec.dataset, row, p.dataset_cls.reported,
                                       p.dataset_cls.reported_source)
    return RunResult(record.path, metrics, board)


def _execute_phases(spec: RunSpec, p: Plan, record: RunRecord) -> tuple[dict[str, float], dict[str, Any], float]:
    with record.phase("load_data"):
        dataset = p.dataset_cls(data_root=spec.data_root, **dataset_options(p.data_settings))
        data = dataset.load(spec.seed)
        data = dataclasses.replace(data, train=subsample(data.train, p.data_settings["data.train_size"], spec.seed),
                                   test=subsample(data.test, p.data_settings["data.test_size"], spec.seed))
        check_data(data, p.dataset_cls)
    with record.phase("build"):
        method = p.method_cls(p.config, data.shape, spec.device, spec.seed)
    record.provenance["environment"] = environment()
    record.provenance["device"] = method.device
    record.provenance["data"] = {"train_size": len(data.train), "test_size": len(data.test),
                                 **data.provenance}
    progress = EpochProgress(int(p.config["epochs"]), f"{spec.method} on {spec.dataset}")
    try:
        with record.phase("train"):
            method.fit(data.train, progress)
    finally:
        progress.close()
        record.provenance["loss_history"] = progress.history
    with record.phase("checkpoint"):
        with atomic.atomic_path(record.path / "checkpoint.pt") as tmp:
            method.save(tmp)
    with record.phase("encode"):
        train_codes, test_codes = method.encode(data.train.x), method.encode(data.test.x)
        save_codes(record.path / "codes.npz", train_codes, test_codes, data)
    with record.phase("metrics"):
        metrics: dict[str, float] = {}
        inputs = MetricInput(train_codes, test_codes, data, method, spec.seed, record.path / "figures")
        for metric in p.metrics:
            metrics.update({k: float(v) for k, v in metric.compute(inputs).items()})
        atomic.write_json(record.path / "metrics.json", metrics)
    with record.phase("figures"):
        from dcbench.run_figures import write_run_figures

        write_run_figures(method, data, test_codes, record.path / "figures", f"{spec.method} on {spec.dataset}",
                          spec.seed)
    budget = {"epochs": p.config["epochs"], "train_size": len(data.train),
              "batch_size": p.config.get("batch_size"), "lr": p.config.get("lr")}
    record.finish(metrics=metrics)
    return metrics, budget, record.provenance["phases_s"]["train"]
