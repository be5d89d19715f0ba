"""The local executor: each cell in its own fresh Python process, up to --jobs at a time.

A process per cell (rather than a reused pool) means a cell that crashes, leaks memory or is
killed by the OOM killer takes nothing else with it; the cost is a Python start per cell,
small next to training. The cores are shared out: each cell gets cpu_count // jobs threads.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
from collections.abc import Iterator, Sequence
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from dcbench import atomic
from dcbench.executors import CellOutcome, CellTask, Executor, run_cell


def _run_and_report(task: CellTask, outcome_path: str) -> None:
    outcome = run_cell(task)
    atomic.write_json(Path(outcome_path), dataclasses.asdict(outcome))


class LocalExecutor(Executor):
    name = "local"
    option_defaults = {"threads": 0}  # torch threads per cell; 0: the cores shared out evenly

    def describe(self) -> str:
        return f"local executor, up to {self.jobs} cells at a time, {self._threads()} torch threads each"

    def _threads(self) -> int:
        return int(self.options["threads"]) or max(1, (os.cpu_count() or 1) // self.jobs)

    def run(self, tasks: Sequence[CellTask]) -> Iterator[CellOutcome]:
        # spawn, not fork: a forked child would inherit the parent's torch threads and locks.
        context = multiprocessing.get_context("spawn")
        outcomes = self.folder / "outcomes"
        outcomes.mkdir(parents=True, exist_ok=True)
        pending = list(tasks)
        running: dict[Any, tuple[Any, CellTask, Path]] = {}
        try:
            while pending or running:
                while pending and len(running) < self.jobs:
                    task = dataclasses.replace(pending.pop(0), threads=self._threads())
                    outcome_path = outcomes / f"cell-{task.index}.json"
                    outcome_path.unlink(missing_ok=True)
                    process = context.Process(target=_run_and_report, args=(task, str(outcome_path)),
                                              name=f"dcbench-cell-{task.index}")
                    process.start()
                    running[process.sentinel] = (process, task, outcome_path)
                for sentinel in wait(list(running)):
                    process, task, outcome_path = running.pop(sentinel)
                    process.join()
                    yield _outcome(process.exitcode, task, outcome_path)
        finally:
            for process, _, _ in running.values():  # Ctrl-C or an error in the driver: stop the cells
                process.terminate()
            for process, _, _ in running.values():
                process.join(timeout=30)


def _outcome(exitcode: int | None, task: CellTask, outcome_path: Path) -> CellOutcome:
    try:
        return CellOutcome(**json.loads(outcome_path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        pass
    if exitcode is not None and exitcode < 0:
        how = f"was killed by {signal.Signals(-exitcode).name}"
    else:
        how = f"exited with code {exitcode}"
    return CellOutcome(task.index, "failed", error=f"the cell's process {how} before reporting; see {task.log_path}")
