"""`dcbench sweep`: cross methods x datasets x seeds, decide what each cell needs, run the cells
through an executor plugin, retry failures, and summarise.

What a re-run does with a cell that already has records (`--overwrite`):
  only-missing (default): finished cells are skipped; an unfinished one (killed, interrupted or
      failed) is continued in its folder from its last epoch checkpoint; cells without records run.
  always: every cell runs anew (older records stay on disk; the leaderboard counts the newest
      row per seed).
  never: a cell with any record is left alone; only cells without records run.
A cell some live process is running is always skipped. A cell that cannot even be planned (an
unknown or broken plugin, a bad setting for that method) is refused and reported; the others go on.
When no cell can be planned (a bad setting shared by all), the sweep stops before writing anything.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcbench import atomic, cells
from dcbench.config import RunSpec
from dcbench.errors import DcbenchError
from dcbench.executors import CellOutcome, CellTask, Executor
from dcbench.records import read_metrics  # light: no torch, unlike dcbench.runner
from dcbench.registry import Registry
from dcbench.settings_checks import check_seed

OVERWRITE_RULES = ("only-missing", "always", "never")
RESULT_WIDTH = 90


@dataclass
class Cell:
    index: int
    spec: RunSpec
    action: str  # run | continue | skip | refuse
    reason: str = ""
    continue_run: Path | None = None
    status: str = "pending"  # finished | skipped | failed | refused, or stopped if the sweep was
    attempts: int = 0
    seconds: float = 0.0
    run_dir: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    identity: dict[str, Any] | None = None  # the planned cell's identity (dcbench.cells); None if refused

    @property
    def label(self) -> str:
        return f"{self.spec.method} on {self.spec.dataset}, seed {self.spec.seed}"


def split_names(values: tuple[str, ...] | list[str]) -> list[str]:
    """('a,b', 'c') -> ['a', 'b', 'c'], keeping order and dropping repeats."""
    names: list[str] = []
    for value in values:
        for part in value.split(","):
            if part.strip() and part.strip() not in names:
                names.append(part.strip())
    return names


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,3,7-8' -> [0, 3, 7, 8]."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise DcbenchError(f"--seeds expects numbers and ranges like 0-4 or 0,3,7-9, got '{text}'")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise DcbenchError(f"--seeds range '{part}' runs backwards; write {last}-{first}")
        check_seed(last, "--seeds")  # before the range: a huge one would take forever to list
        seeds.extend(s for s in range(first, last + 1) if s not in seeds)
    return seeds


def plan_cells(methods: list[str], datasets: list[str], seeds: list[int], template: RunSpec, overwrite: str,
               registry: Registry) -> list[Cell]:
    """One Cell per (dataset, method, seed), with what it needs given the records under the runs folder."""
    from dcbench.runner import cell_of, plan

    if overwrite not in OVERWRITE_RULES:
        raise DcbenchError(f"unknown --overwrite rule '{overwrite}': use {', '.join(OVERWRITE_RULES)}")
    out: list[Cell] = []
    for dataset in datasets:
        for method in methods:
            for seed in seeds:
                spec = dataclasses.replace(template, method=method, dataset=dataset, seed=seed)
                try:
                    planned = plan(spec, registry)
                except DcbenchError as exc:
                    out.append(Cell(len(out), spec, "refuse", str(exc)))
                    continue
                identity = cell_of(spec, planned)  # planned once: a retry finds its records by this
                cell = _decide(len(out), spec, cells.find_records(spec.runs_dir, identity), overwrite)
                cell.identity = identity
                out.append(cell)
    return out


def check_not_all_refused(cells_: list[Cell]) -> None:
    """A sweep none of whose cells can be planned (a bad setting shared by all) fails before its
    folder is created, with the first cell's reason."""
    if cells_ and all(cell.action == "refuse" for cell in cells_):
        more = f" (refused too: {len(cells_) - 1} other cell(s); --dry-run lists why)" if len(cells_) > 1 else ""
        raise DcbenchError(f"no cell of this sweep can run: {cells_[0].label}: {cells_[0].reason}{more}")


def _decide(index: int, spec: RunSpec, found: cells.CellRecords, overwrite: str) -> Cell:
    if found.running is not None:
        return Cell(index, spec, "skip", f"running in another process: {found.running.path}",
                    run_dir=str(found.running.path))
    if overwrite == "always":
        return Cell(index, spec, "run", "--overwrite always")
    if overwrite == "never" and found.latest is not None:
        return Cell(index, spec, "skip", f"has a {found.latest.state} record, left alone (--overwrite never): "
                    f"{found.latest.path}", run_dir=str(found.latest.path))
    if found.finished is not None:
        return Cell(index, spec, "skip", f"finished before: {found.finished.path}", run_dir=str(found.finished.path))
    if found.latest is not None:
        return Cell(index, spec, "continue", f"{found.latest.state} run, continued from its last epoch: "
                    f"{found.latest.path}", continue_run=found.latest.path)
    return Cell(index, spec, "run", "no record yet")


def new_sweep_folder(runs_dir: Path, create: bool = True) -> Path:
    """A new runs/sweeps/<time>-<random> path; created unless create is False."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = Path(runs_dir) / "sweeps" / f"{stamp}-{secrets.token_hex(3)}"
    if create:
        folder.mkdir(parents=True, exist_ok=False)
    return folder


def log_path(folder: Path, cell: Cell) -> Path:
    return folder / "logs" / f"cell-{cell.index:03d}-{cell.spec.method}-{cell.spec.dataset}-seed{cell.spec.seed}.log"


def run_cells(cells_: list[Cell], executor: Executor, folder: Path, retries: int,
              report: Callable[[str], None] | None = None) -> list[Cell]:
    """Run the cells that need it, retrying failures up to `retries` times (a retry continues the
    failed attempt's run folder), with one progress bar over all cells."""
    from tqdm.auto import tqdm

    by_index = {cell.index: cell for cell in cells_}
    for cell in cells_:
        if cell.action == "skip":
            cell.status = "skipped"
            cell.metrics = read_metrics(Path(cell.run_dir)) if cell.run_dir else {}
        elif cell.action == "refuse":
            cell.status, cell.error = "refused", cell.reason
    todo = [cell for cell in cells_ if cell.action in ("run", "continue")]
    interactive = sys.stderr.isatty()
    bar = tqdm(total=len(cells_), initial=len(cells_) - len(todo), unit="cell", desc="sweep",
               dynamic_ncols=True, disable=not interactive)
    say = report or (lambda line: bar.write(line, file=sys.stderr))
    counts = {"finished": 0, "failed": 0, "skipped": sum(c.status in ("skipped", "refused") for c in cells_)}
    try:
        for attempt in range(retries + 1):
            if not todo:
                break
            tasks = [CellTask(cell.index, cell.spec, log_path(folder, cell), cell.continue_run) for cell in todo]
            failed: list[Cell] = []
            for outcome in executor.run(tasks):
                cell = by_index[outcome.index]
                _absorb(cell, outcome)
                if outcome.status == "failed" and attempt < retries:
                    failed.append(cell)
                    cell.continue_run = _unfinished_run(cell)  # continue where the failed attempt stopped
                    say(f"failed, will retry: {cell.label}: {outcome.error}")
                    continue
                cell.status = "failed" if outcome.status == "failed" else "finished"
                counts[cell.status] += 1
                bar.update(1)
                bar.set_postfix(counts, refresh=True)
                if not interactive or cell.status == "failed":
                    say(f"[{sum(counts.values())}/{len(cells_)}] {cell.status}: {cell.label}"
                        + (f": {cell.error}" if cell.status == "failed" else ""))
            todo = failed
    finally:
        bar.close()
        for cell in cells_:  # the sweep was stopped: rerunning the same command continues these
            if cell.status == "pending":
                cell.status = "stopped"
    return cells_


def _absorb(cell: Cell, outcome: CellOutcome) -> None:
    cell.attempts += 1
    cell.seconds += outcome.seconds
    cell.error = outcome.error
    cell.run_dir = outcome.run_dir or cell.run_dir
    cell.metrics = outcome.metrics or cell.metrics
    if outcome.status == "already-finished":
        cell.reason = "finished before (found when it ran)"


def _unfinished_run(cell: Cell) -> Path | None:
    """The cell's newest record if it is unfinished (the failed attempt's), to continue it."""
    if cell.identity is None:
        return None
    latest = cells.find_records(cell.spec.runs_dir, cell.identity).latest
    return latest.path if latest is not None and latest.state in ("failed", "interrupted") else None


def plan_table(cells_: list[Cell]) -> str:
    from tabulate import tabulate

    rows = [[c.index, c.spec.method, c.spec.dataset, c.spec.seed, c.action, c.reason] for c in cells_]
    return tabulate(rows, headers=["cell", "method", "dataset", "seed", "action", "why"], tablefmt="simple")


def summary_table(cells_: list[Cell], tablefmt: str = "simple") -> str:
    """One line per cell: outcome, attempts, time, the first metrics (or the error), run folder."""
    from tabulate import tabulate

    rows = []
    for c in cells_:
        shown = list(c.metrics.items())[:3]
        result = ", ".join(f"{k} {v:.3f}" for k, v in shown) if c.status in ("finished", "skipped") else (c.error or "")
        if len(result) > RESULT_WIDTH and tablefmt == "simple":  # the full error is in summary.json and the log
            result = result[:RESULT_WIDTH - 1] + "…"
        rows.append([c.index, c.spec.method, c.spec.dataset, c.spec.seed, c.status, c.attempts,
                     f"{c.seconds:.0f}" if c.attempts else "", result, c.run_dir or ""])
    return tabulate(rows, headers=["cell", "method", "dataset", "seed", "status", "attempts", "time (s)",
                                   "result", "run folder"], tablefmt=tablefmt, disable_numparse=True)


def write_summary(folder: Path, cells_: list[Cell], header: dict[str, Any]) -> None:
    records = [{"index": c.index, "method": c.spec.method, "dataset": c.spec.dataset, "seed": c.spec.seed,
                "action": c.action, "reason": c.reason, "status": c.status, "attempts": c.attempts,
                "seconds": round(c.seconds, 1), "run_dir": c.run_dir, "metrics": c.metrics, "error": c.error}
               for c in cells_]
    atomic.write_json(folder / "summary.json", {**header, "cells": records})
    atomic.write_text(folder / "summary.md", f"# Sweep {folder.name}\n\n{summary_table(cells_, 'github')}\n")
