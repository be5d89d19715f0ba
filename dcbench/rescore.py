"""`dcbench score`: score finished runs again, without retraining.

A run folder keeps what its metrics phase saw: codes.npz (the train and test codes) and
checkpoint.pt (the trained model), and config.json says how its data were loaded (settings,
seed). Re-scoring loads the data again as the run did (runner.load_data), checks they are the
data the codes belong to (the same labels), rebuilds the method from its checkpoint with its own
load_state (only when a metric calls into it: decoding or encoding, e.g. recon, S(z)) and
computes the metrics through metric_contract.score_metrics, the function the run itself used,
with the run's seed: a run's own metrics come out exactly as in its metrics.json, so a refactor
of a metric can be checked on finished runs.

The results merge into metrics.json (new values replace those of the same column, others stay),
figures the metrics drew are added to the run's figures.json, the re-scoring is noted in
provenance.json ("rescored": when, which metrics, their settings, those that did not apply and
why, the environment),
and, where the board's latest row of the run's cell is this run's, that row is appended again
with the merged metrics (leaderboard.append_row(replace=True), as `dcbench report` republishes
a row), metrics.json and the record written in the same locked step. Every check and every
computation comes before the first write, so a refusal writes nothing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from dcbench import atomic, leaderboard
from dcbench.api import Codes, Method, Metric, MetricInput
from dcbench.classification_report import CODES_FILE, read_run_codes, read_run_config
from dcbench.errors import DcbenchError
from dcbench.metric_contract import Scoring, metric_settings, score_metrics
from dcbench.records import RunRecord, environment, read_json_or_none, read_metrics, utc_now, write_figures
from dcbench.registry import Registry
from dcbench.runner import load_data

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"


@dataclass
class Rescored:
    run_dir: Path
    before: dict[str, float]  # metrics.json before
    scores: dict[str, float]  # the columns just computed
    board: str  # what happened to the leaderboard, in words
    not_applicable: dict[str, str] = field(default_factory=dict)  # metric -> why it gave only n/a


@dataclass
class BoardScoring:
    scored: list[Rescored] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one line each: a row whose run folder is gone
    failed: list[str] = field(default_factory=list)  # one line each: a run that was refused


def load_metrics(names: list[str], registry: Registry) -> list[Metric]:
    """The metrics asked for (each once, in order); an unknown name is a one-line error."""
    if not names:
        raise DcbenchError("give at least one --metric NAME (see `dcbench list --kind metric`)")
    return [registry.load("metric", name)() for name in dict.fromkeys(names)]


class _TrainedMethod:
    """The run's method, its checkpoint loaded the first time a metric calls one of its methods
    (encode, decode ...). Attributes (generative, conformation_code) need no checkpoint, so a
    metric that calls nothing scores runs whose checkpoint.pt is gone."""

    def __init__(self, method: Method, checkpoint: Path) -> None:
        self._method, self._checkpoint, self._loaded = method, checkpoint, False
        self.metric = ""  # the metric being computed, for the error

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._method, name)
        if callable(value) and not self._loaded:
            if not self._checkpoint.is_file():
                raise DcbenchError(f"metric '{self.metric}' needs the trained model, but {self._checkpoint} is "
                                   "missing; score that run with metrics that use only its codes")
            self._method.load_state(self._checkpoint)
            self._loaded = True
        return value


def check_run(run_dir: Path) -> dict[str, Any]:
    """A finished run folder's config.json, or a one-line refusal; reads only (cheap, writes nothing)."""
    config = read_run_config(run_dir)  # a run folder at all
    provenance = read_json_or_none(Path(run_dir) / "provenance.json")
    status = provenance.get("status") if isinstance(provenance, dict) else None
    if status != "finished":  # checked before the lock, which would write its file into any folder
        raise DcbenchError(f"{run_dir} is not a finished run (status {status!r}); only finished runs can be "
                           "re-scored: finish it with `dcbench run ... --resume`")
    if not (Path(run_dir) / CODES_FILE).is_file():
        raise DcbenchError(f"{run_dir} has no {CODES_FILE}, which re-scoring needs; rerun it with `dcbench run`")
    return config


def score_run(run_dir: Path, metrics: list[Metric], registry: Registry, leaderboard_dir: Path | None,
              device: str | None = None) -> Rescored:
    """Score the finished run `run_dir` with `metrics` and publish the result (module docstring).
    device: where the model runs (None: the run's own setting, for identical numbers)."""
    run_dir = Path(run_dir)
    config = check_run(run_dir)
    arrays = read_run_codes(run_dir)
    if "train_content" not in arrays or "train_labels" not in arrays:
        raise DcbenchError(f"{run_dir / CODES_FILE} lacks the train codes; rerun it with `dcbench run`")
    seed, dataset = int(config["seed"]), str(config["dataset"])
    dataset_cls = registry.load("dataset", dataset)
    method_cls = registry.load("method", str(config["method"]))
    record = RunRecord.hold_finished(run_dir)  # no other process re-scores or resumes it meanwhile
    try:
        data_root = Path(config["data_root"]) if config.get("data_root") else None
        data = load_data(dataset_cls, config.get("data") or {}, data_root, seed)  # as the run loaded it
        for split in ("train", "test"):
            if not np.array_equal(arrays[f"{split}_labels"], getattr(data, split).content):
                raise DcbenchError(f"dataset '{dataset}' loaded again does not match {run_dir / CODES_FILE} "
                                   f"({split} labels differ): its files changed since the run; rerun it instead")
        method = method_cls(config["method_config"], data.shape, device or config.get("device") or "auto", seed)
        method.check_initialised()
        trained = _TrainedMethod(method, run_dir / CHECKPOINT)
        codes = [Codes(arrays[f"{s}_content"], arrays[f"{s}_transformation"], arrays.get(f"{s}_assignments"))
                 for s in ("train", "test")]
        before = read_metrics(run_dir)
        scoring = Scoring()
        with tempfile.TemporaryDirectory() as scratch:  # a metric's figures, kept only if all goes well
            inputs = MetricInput(codes[0], codes[1], data, cast(Method, trained), seed, Path(scratch))
            for metric in metrics:
                trained.metric = metric.name
                computed = score_metrics([metric], inputs)  # the run's own function, metric by metric
                _check_applies(metric, computed, before, run_dir, dataset, str(config["method"]))
                scoring.merge(computed)
            for figure in (f for f in Path(scratch).iterdir() if f.is_file()):  # all checks passed: now write
                atomic.write_bytes(run_dir / "figures" / figure.name, figure.read_bytes())
            if scoring.figures:  # listed for the board, as the run lists its own
                write_figures(run_dir, {kind: run_dir / "figures" / Path(path).relative_to(scratch)
                                        for kind, path in scoring.figures.items()}, merge=True)
        board = _publish(record, config, dataset_cls, metrics, before, scoring, leaderboard_dir, method.device)
    finally:
        record.release()
    return Rescored(run_dir, before, scoring.scores, board, scoring.not_applicable)


def score(run_dirs: list[Path], metric_names: list[str], board: str | None, leaderboard_dir: Path,
          registry: Registry, device: str | None = None, echo: Callable[[str], None] = print) -> None:
    """`dcbench score`: the runs given, or those of the board `board`; one line per run to echo.
    Raises a one-line DcbenchError for a refusal (for a board: after scoring the others)."""
    if bool(run_dirs) == bool(board):
        raise DcbenchError("give run folders or --leaderboard DATASET (one of the two)")
    metrics = load_metrics(metric_names, registry)
    if board is None:
        for run_dir in run_dirs:  # every folder checked before any is scored
            check_run(run_dir)
        for run_dir in run_dirs:
            echo(summary(score_run(run_dir, metrics, registry, leaderboard_dir, device)))
        return
    result = score_board(board, leaderboard_dir, metrics, registry, device, echo)
    for line in result.skipped:
        echo(line)
    if result.failed:
        raise DcbenchError(f"{len(result.failed)} of {len(result.failed) + len(result.scored)} runs were refused "
                           "(see above); the others are scored")


def score_board(dataset: str, leaderboard_dir: Path, metrics: list[Metric], registry: Registry,
                device: str | None = None, echo: Callable[[str], None] = print) -> BoardScoring:
    """Score the run of the latest row of each (method, preset, seed) of a board; rows whose run
    folder is gone are skipped, and a run that is refused does not stop the others."""
    if not leaderboard.jsonl_path(leaderboard_dir, dataset).is_file():
        raise DcbenchError(f"no leaderboard {leaderboard.jsonl_path(leaderboard_dir, dataset)}; "
                           "see `dcbench leaderboard --leaderboard-dir DIR` for the boards there")
    result = BoardScoring()
    for row in leaderboard.latest_rows(leaderboard.read_rows(leaderboard_dir, dataset)):
        cell = f"{row['method']} ({row['preset']}, seed {row['seed']})"
        if row.get("calibration"):
            result.skipped.append(f"skipped {cell}: a calibration row; `dcbench calibrate` scores those")
        elif not row.get("run") or not Path(str(row["run"])).is_dir():
            result.skipped.append(f"skipped {cell}: its run folder {row.get('run')} is missing")
        else:
            try:
                result.scored.append(score_run(Path(str(row["run"])), metrics, registry, leaderboard_dir, device))
                echo(summary(result.scored[-1]))
            except DcbenchError as exc:
                result.failed.append(f"failed {cell}: {exc}")
                echo(result.failed[-1])
    return result


def summary(result: Rescored) -> str:
    """What to tell the user: each column computed, marked new or changed against metrics.json."""
    def note(column: str, value: float) -> str:
        if column not in result.before:
            return "new"
        old = result.before[column]
        return "unchanged" if _same(old, value) else f"was {old:.6g}"

    values = ", ".join(f"{k} = {v:.4f} ({note(k, v)})" for k, v in result.scores.items())
    return f"{result.run_dir}: {values}; {result.board}"


def _same(old: Any, new: float) -> bool:
    return old == new or (old is None or old != old) and new != new  # NaN (or null) is n/a on both sides


def _check_applies(metric: Metric, computed: Scoring, before: dict[str, Any], run_dir: Path, dataset: str,
                   method: str) -> None:
    """Refuse a metric that gives no number for this run, unless the run already recorded it (then
    n/a is the value to reproduce)."""
    scores = computed.scores
    if scores and all(v != v for v in scores.values()) and not set(scores) & set(before):
        why = computed.not_applicable.get(metric.name)
        raise DcbenchError(f"metric '{metric.name}' does not apply to {run_dir} (dataset '{dataset}', method "
                           f"'{method}'): {f'it {why}' if why else 'every column it gives is n/a'}; "
                           "nothing was written")


def _publish(record: RunRecord, config: dict[str, Any], dataset_cls: Any, metrics: list[Metric],
             before: dict[str, Any], scoring: Scoring, leaderboard_dir: Path | None, device: str) -> str:
    """Write metrics.json and the record's note and, where the board shows this run, its row
    again, in one locked step (the row is taken back if the writes fail). Returns what happened."""
    env, scores, settings = environment(), scoring.scores, metric_settings(metrics)
    entry = {"at": utc_now(), "metrics": [m.name for m in metrics], "columns": list(scores),
             "changed": {k: [before[k], v] for k, v in scores.items() if k in before and not _same(before[k], v)},
             "metric_settings": settings, "not_applicable": scoring.not_applicable,
             "device": device, "environment": env}
    old_bytes = (record.path / METRICS).read_bytes() if (record.path / METRICS).is_file() else None

    def commit() -> None:
        atomic.write_json(record.path / METRICS, {**before, **scores})
        try:
            record.add_rescoring(entry)
        except BaseException:  # keep metrics.json and the record saying the same
            if old_bytes is not None:
                atomic.write_bytes(record.path / METRICS, old_bytes)
            raise

    dataset = str(config["dataset"])
    row = None if leaderboard_dir is None else leaderboard.latest_row_of_run(leaderboard_dir, dataset, record.path)
    if row is None:
        commit()
        return f"no leaderboard row of this run in {leaderboard_dir}: board unchanged" if leaderboard_dir \
            else "board not updated"
    spec = dict(row.get("spec") or {})
    spec["metrics"] = list(dict.fromkeys([*spec.get("metrics", []), *entry["metrics"]]))  # reproduce scores them
    row = {**row, "metrics": {**row["metrics"], **scores}, "spec": spec,
           "directions": {**row.get("directions", {}), **{c: d for m in metrics for c, d in m.columns.items()}},
           "metric_settings": {**(row.get("metric_settings") or {}), **settings},
           "rescored_at": entry["at"], "rescored_dcbench": env["dcbench"],
           "rescored_git_commit": env["dcbench_git_commit"]}
    row.pop("figures", None)  # published anew (seed 0), with any figure a new metric drew
    leaderboard.publish_figures(leaderboard_dir, row, record.path)
    page = leaderboard.append_row(leaderboard_dir, dataset, row, dataset_cls.reported, dataset_cls.reported_source,
                                  commit=commit, replace=True)
    return f"leaderboard row updated: {page or leaderboard.jsonl_path(leaderboard_dir, dataset)}"


__all__ = ["BoardScoring", "Rescored", "check_run", "load_metrics", "score", "score_board", "score_run", "summary"]
