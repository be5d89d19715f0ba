"""Cross one method with one dataset and its metrics: train, encode, score, record, rank."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from dcbench import atomic, cells, classification_report, finite, leaderboard
from dcbench.api import Codes, DataBundle, Dataset, Method, Metric, MetricInput, RunContext, Split
from dcbench.config import PRESETS, RunSpec, dataset_options, preset_label, resolve_method_config
from dcbench.errors import DataError, DcbenchError
from dcbench.metric_contract import metric_settings, score_metrics
from dcbench.progress import EpochProgress
from dcbench.records import RunRecord, environment, read_json_or_none, read_metrics, utc_now, write_figures
from dcbench.registry import Registry, get_registry
from dcbench.settings_checks import check_seed

TRAINING_STATE = "train_state.pt"

# The part of RunSpec.settings() a leaderboard row keeps as "spec" (the row has the rest).
ROW_SPEC_KEYS = ("preset", "epochs", "overrides", "metrics")


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, float]
    leaderboard: Path | None
    # resume: the cell had a finished record already (nothing ran), or an unfinished one was continued
    already_finished: bool = False
    resumed: bool = False


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
                                                 dict(dataset_cls.option_defaults), dataset_cls.option_types,
                                                 dataset_cls.check_options)
    check_seed(spec.seed)  # with the settings above: typed and in range before any run folder exists
    method_cls.check_config(config, tuple(dataset_cls.shape))  # the method's own ranges, for this shape
    method_cls.check_ready(config)  # e.g. an external program that is not installed: refuse before any work
    return Plan(method_cls, dataset_cls, metrics, config, data_settings,
                preset_label(spec.preset, spec.overrides, spec.epochs))


def subsample(split: Split, size: int, seed: int) -> Split:
    """A seeded random subset of `size` inputs (all of them when size is 0 or too large)."""
    if size <= 0 or size >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).choice(len(split), size=size, replace=False))
    pick = lambda a: None if a is None else a[idx]  # noqa: E731
    return Split(split.x[idx], split.content[idx], pick(split.conformation), pick(split.transform_params),
                 pick(split.names))


def transductive_split(data: DataBundle) -> Split:
    """Train and test inputs as one split, train rows first, for methods that only label the
    inputs they trained on. Labels are withheld (-1): methods never learn from labels, and this
    keeps it so for the test inputs."""
    x = np.concatenate([data.train.x, data.test.x])
    return Split(x, np.full(len(x), -1, dtype=np.int64))


def data_facts(data: DataBundle) -> dict[str, Any]:
    """What RunContext.data_facts holds: facts about the data beyond the inputs, never labels."""
    voxel = data.references.voxel if data.references is not None else None
    return {"ctf": dict(data.ctf) if data.ctf else None, "voxel": voxel, "n_classes": data.n_classes}


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


def load_data(dataset_cls: type[Dataset], data_settings: dict[str, Any], data_root: Path | None,
              seed: int) -> DataBundle:
    """The dataset's splits as a run sees them: its options applied, `data.train_size` /
    `data.test_size` subsampling (seeded), and checked (also used by `dcbench calibrate`)."""
    dataset = dataset_cls(data_root=data_root, **dataset_options(data_settings))
    try:
        data = dataset.load(seed)
    except ValueError as exc:  # e.g. Split's shape checks: a plugin handed over unusable arrays
        raise DataError(f"dataset '{dataset_cls.name}' produced unusable data: {exc}; fix the dataset plugin "
                        "or its input files") from exc
    data = dataclasses.replace(data, train=subsample(data.train, data_settings["data.train_size"], seed),
                               test=subsample(data.test, data_settings["data.test_size"], seed))
    check_data(data, dataset_cls)
    return data


def save_codes(path: Path, train: Codes, test: Codes, data: DataBundle) -> None:
    arrays = {"train_content": train.content, "train_transformation": train.transformation,
              "train_labels": data.train.content, "test_content": test.content,
              "test_transformation": test.transformation, "test_labels": data.test.content}
    for name, codes in (("train", train), ("test", test)):
        if codes.assignments is not None:  # a method's own classes (e.g. Hydra's)
            arrays[f"{name}_assignments"] = codes.assignments
    if data.test.conformation is not None:
        arrays["test_conformation"] = data.test.conformation
    # the label names, so that `dcbench report` can name classes without loading the data again
    for key in ("class_names", "conformation_names"):
        if getattr(data, key):
            arrays[key] = np.array([str(name) for name in getattr(data, key)])
    atomic.write_with(path, lambda handle: np.savez_compressed(handle, **arrays))


def planned_settings(spec: RunSpec, p: Plan) -> dict[str, Any]:
    """RunSpec.settings() with the metrics the plan resolved (the dataset's defaults if none were asked)."""
    return {**spec.settings(), "metrics": [m.name for m in p.metrics]}


def cell_of(spec: RunSpec, p: Plan) -> dict[str, Any]:
    """The identity of the grid cell a planned run belongs to (see dcbench.cells)."""
    return cells.cell_identity(spec.method, spec.dataset, spec.seed, p.label, [m.name for m in p.metrics],
                               spec.data_root)


def execute(spec: RunSpec, registry: Registry | None = None, resume: bool = False,
            continue_run: Path | None = None, on_record: Callable[[Path], None] | None = None) -> RunResult:
    """Run one (method, dataset, seed) cell end to end and record it.

    resume: a cell that has a finished record is not run again, and one whose latest record is
    unfinished (killed, interrupted or failed) continues in that folder from its last epoch
    checkpoint. continue_run: continue exactly this unfinished run folder of the cell.
    on_record(run_dir) is called as soon as the run folder is known.

    Publication is the last step and one step: every output (checkpoint, codes, metrics,
    figures) is written first; then, under the board's lock, the row is appended and the record
    marked finished (leaderboard.append_row's commit). If finishing fails the row is taken back
    and the run is marked failed, so a failed run adds no row. A kill leaves either no row (the
    record is unfinished: --resume continues it and appends the row once) or, in the instant
    between the two writes, a whole row whose record says it was publishing: --resume then finds
    the row, only marks the record finished and adds no second one. The Markdown page is
    re-rendered after; a page that cannot be written is a warning, not a failed run."""
    registry = registry or get_registry()
    p = plan(spec, registry)
    identity = cell_of(spec, p)
    full_config = {**planned_settings(spec, p), "preset_label": p.label, "device": spec.device,
                   "data_root": spec.data_root, "method_config": p.config,
                   "data": p.data_settings, "cell": identity, "metric_settings": metric_settings(p.metrics)}
    # Before any work: an output folder we cannot write to must not cost a training run.
    atomic.ensure_writable_folder(spec.runs_dir, "--runs-dir")
    if spec.leaderboard_dir is not None:
        atomic.ensure_writable_folder(spec.leaderboard_dir, "--leaderboard-dir")
    record = None
    if continue_run is not None:
        state = cells.read_state(Path(continue_run))
        config = read_json_or_none(Path(continue_run) / "config.json")
        if state is None or not isinstance(config, dict) or cells.identity_of_config(config) != identity:
            raise DcbenchError(f"{continue_run} is not a run of this cell; cannot continue it")
        record = RunRecord.reopen(Path(continue_run))
    elif resume:
        found = cells.find_records(spec.runs_dir, identity)
        if found.finished is not None:
            return RunResult(found.finished.path, read_metrics(found.finished.path), None, already_finished=True)
        if found.latest is not None:
            record = RunRecord.reopen(found.latest.path)  # refuses a run another process is running
    resumed = record is not None
    if record is None:
        record = RunRecord.create(spec.runs_dir, spec.method, spec.dataset, spec.seed, full_config)
    if on_record is not None:
        on_record(record.path)
    finished = False

    def finish(metrics: dict[str, float]) -> None:
        nonlocal finished
        record.finish(metrics=metrics)
        finished = True

    try:
        board = None
        if resumed and spec.leaderboard_dir is not None and \
                leaderboard.has_run_row(spec.leaderboard_dir, spec.dataset, record.path):
            # Stopped after its row went in but before its record said so: every output is written
            # already, and its row must not go in twice. Finish the record; refresh the page.
            metrics = read_metrics(record.path)
            finish(metrics)
            board = leaderboard.try_render(spec.leaderboard_dir, spec.dataset, p.dataset_cls.reported,
                                           p.dataset_cls.reported_source)
        else:
            metrics, row_facts = _execute_phases(spec, p, record)
            if spec.leaderboard_dir is None:
                finish(metrics)
            else:
                board = _publish(spec, p, record, metrics, row_facts, lambda: finish(metrics))
    except BaseException as exc:
        if finished:  # e.g. Ctrl-C while the page renders: the run and its row stand
            raise
        interrupted = isinstance(exc, KeyboardInterrupt | SystemExit)
        message = str(exc) if isinstance(exc, DcbenchError) else f"{type(exc).__name__}: {exc}"
        record.fail(message if str(exc) else type(exc).__name__, status="interrupted" if interrupted else "failed")
        raise
    (record.path / TRAINING_STATE).unlink(missing_ok=True)  # the weights are in checkpoint.pt
    return RunResult(record.path, metrics, board, resumed=resumed)


def _publish(spec: RunSpec, p: Plan, record: RunRecord, metrics: dict[str, float], row_facts: dict[str, Any],
             finish: Callable[[], None]) -> Path | None:
    """Publish the run: its seed-0 figures, then its row together with finish() (which marks
    the record finished), as one step (leaderboard.append_row). Returns the Markdown page, None
    if it could not be re-rendered (a warning, not a failure: the row is in)."""
    assert spec.leaderboard_dir is not None
    with record.phase("publish"):
        row = {"method": spec.method, "dataset": spec.dataset, "preset": p.label, "seed": spec.seed,
               "metrics": metrics, "directions": {c: d for m in p.metrics for c, d in m.columns.items()},
               "metric_settings": metric_settings(p.metrics), **row_facts, "run": str(record.path),
               "finished_at": utc_now(), "dcbench": record.environment["dcbench"],
               "git_commit": record.environment["dcbench_git_commit"],
               "generative": p.method_cls.generative,
               # What `dcbench reproduce` needs to rerun this row exactly (method, dataset, seed: above).
               "spec": {key: value for key, value in planned_settings(spec, p).items() if key in ROW_SPEC_KEYS}}
        leaderboard.publish_figures(spec.leaderboard_dir, row, record.path)
    # Outside the phase: its bookkeeping would write the record again after it is finished.
    return leaderboard.append_row(spec.leaderboard_dir, spec.dataset, row, p.dataset_cls.reported,
                                  p.dataset_cls.reported_source, commit=finish)


def _execute_phases(spec: RunSpec, p: Plan, record: RunRecord) -> tuple[dict[str, float], dict[str, Any]]:
    with record.phase("load_data"):
        data = load_data(p.dataset_cls, p.data_settings, spec.data_root, spec.seed)
    with record.phase("build"):
        method = p.method_cls(p.config, data.shape, spec.device, spec.seed)
        method.check_initialised()  # one line if a plugin's __init__ skipped Method.__init__
    record.note_setup(environment(), method.device,
                      {"train_size": len(data.train), "test_size": len(data.test), **data.provenance})
    progress = EpochProgress(int(p.config["epochs"]), f"{spec.method} on {spec.dataset}", record)
    # the progress bar is both the epoch callback and where steps move the bar and give the run's estimate
    context = RunContext(on_epoch=progress, data_facts=MappingProxyType(data_facts(data)),
                         training_state=record.path / TRAINING_STATE,
                         training_state_interval_s=spec.checkpoint_every_s,
                         work_dir=record.path / spec.method, step_progress=progress)
    fit_split = transductive_split(data) if p.method_cls.transductive else data.train
    try:
        with record.phase("train"):
            method.fit(fit_split, context)
    finally:
        progress.close()
    with record.phase("checkpoint"):
        with atomic.atomic_path(record.path / "checkpoint.pt") as tmp:
            method.save(tmp)
    with record.phase("encode"):
        train_codes, test_codes = method.encode(data.train.x), method.encode(data.test.x)
        finite.check_codes(spec.method, train_codes, "train")
        finite.check_codes(spec.method, test_codes, "test")
        save_codes(record.path / "codes.npz", train_codes, test_codes, data)
    with record.phase("metrics"):
        inputs = MetricInput(train_codes, test_codes, data, method, spec.seed, record.path / "figures")
        scoring = score_metrics(p.metrics, inputs)
        metrics = scoring.scores
        record.note_not_applicable(scoring.not_applicable)
        atomic.write_json(record.path / "metrics.json", metrics)
    with record.phase("figures"):
        from dcbench import training_curves
        from dcbench.run_figures import write_run_figures

        figures = dict(scoring.figures)  # what each drawer returns, listed in figures.json for the board
        title = f"{spec.method} on {spec.dataset}"
        figures.update(write_run_figures(method, data, test_codes, record.path / "figures", title, spec.seed))
        figures.update(training_curves.write_for_run(record.path / "figures", record.loss_history, p.config, title))
        figures.update(classification_report.write_for_run(record.path, method, data, test_codes,
                                                           spec.seed))  # 3D runs only
        from dcbench import exports  # STAR classes and MRC class averages; 3D runs only
        computed = [m for m in p.metrics if m.name not in scoring.not_applicable]
        figures.update(exports.write_for_run(record.path, data, train_codes, test_codes, computed, spec.seed))
        write_figures(record.path, figures)
    budget = {"epochs": p.config["epochs"], "train_size": len(fit_split),  # train + test for transductive methods
              "batch_size": p.config.get("batch_size"), "lr": p.config.get("lr")}
    # What the networks saw, for methods with settings for it (volumes: dcbench.volume_input).
    budget.update({key: p.config[key] for key in ("networks", "lowpass_sigma", "bin") if key in p.config})
    return metrics, {"budget": budget, "train_seconds": record.phase_seconds("train")}
