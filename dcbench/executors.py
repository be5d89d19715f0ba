"""Executors run the cells of a sweep somewhere: local processes, a Slurm cluster, ...

An executor is a plugin (hook `register_executors`) subclassing `Executor`. It receives picklable
`CellTask`s and must yield exactly one `CellOutcome` per task, in any order, as they complete.
Every task runs `run_cell` in a fresh process, which runs the cell through the ordinary runner
(`dcbench.runner.execute`), so each cell writes its own run record and leaderboard row exactly
as `dcbench run` would; the executor only decides where and how many at a time.
"""

from __future__ import annotations

import abc
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from dcbench.config import RunSpec, coerce
from dcbench.errors import DcbenchError, unknown_name_message


@dataclass(frozen=True)
class CellTask:
    """One cell to run: the run's spec, whether to resume it, where its output goes."""

    index: int
    spec: RunSpec
    log_path: Path
    # An unfinished run folder of this cell to continue from its last epoch (None: a new run).
    continue_run: Path | None = None
    # torch threads for the cell (None: torch's default); local runs share the machine's cores.
    threads: int | None = None


@dataclass
class CellOutcome:
    index: int
    status: str  # "finished", "already-finished" or "failed"
    seconds: float = 0.0
    run_dir: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


class Executor(abc.ABC):
    """Where the cells of a sweep run. `options` are the user's `--executor-option key=value`
    pairs, checked against `option_defaults` (whose types decide how the text is read)."""

    name: ClassVar[str]
    option_defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})  # read-only: subclasses assign their own

    def __init__(self, jobs: int, folder: Path, options: dict[str, str] | None = None) -> None:
        if jobs < 1:
            raise DcbenchError(f"--jobs must be at least 1, got {jobs}")
        self.jobs = jobs
        self.folder = Path(folder)  # the sweep's own folder, for executor files
        self.options: dict[str, Any] = dict(self.option_defaults)
        for key, text in (options or {}).items():
            if key not in self.option_defaults:
                raise DcbenchError(unknown_name_message(f"option of executor '{self.name}'", key,
                                                        sorted(self.option_defaults)))
            default = self.option_defaults[key]
            self.options[key] = text if default is None else coerce(key, text, default)

    def describe(self) -> str:
        """One line for the sweep's header and dry run."""
        return f"{self.name} executor, up to {self.jobs} cells at a time"

    @abc.abstractmethod
    def run(self, tasks: Sequence[CellTask]) -> Iterator[CellOutcome]:
        """Run every task; yield one outcome per task as each completes (a failed outcome,
        naming a log to read, when a task could not run at all)."""


def run_cell(task: CellTask, on_record: Callable[[Path], None] | None = None) -> CellOutcome:
    """Run one cell in this (fresh) process with its output going to the cell's log file.
    Never raises for a failed cell: the failure is the outcome. on_record(run_dir) as in
    dcbench.runner.execute."""
    started = time.perf_counter()
    task.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(task.log_path, "a", encoding="utf-8", buffering=1) as log:
        # Redirect the file descriptors, so that output from C code and subprocesses lands there too.
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        print(f"== dcbench cell {task.index}: {task.spec.method} on {task.spec.dataset}, seed {task.spec.seed}, "
              f"continuing {task.continue_run or '(new run)'}, pid {os.getpid()}", file=sys.stderr, flush=True)
        if task.threads:
            os.environ["OMP_NUM_THREADS"] = str(task.threads)
        try:
            from dcbench.interrupts import sigterm_as_interrupt
            from dcbench.runner import execute

            if task.threads:
                import torch

                torch.set_num_threads(task.threads)
            with sigterm_as_interrupt():
                result = execute(task.spec, continue_run=task.continue_run, on_record=on_record)
        except BaseException as exc:  # a plugin may raise anything; the sweep goes on
            if not isinstance(exc, DcbenchError):
                traceback.print_exc()
            message = str(exc) if isinstance(exc, DcbenchError) else f"{type(exc).__name__}: {exc}"
            print(f"== failed: {message}", file=sys.stderr, flush=True)
            return CellOutcome(task.index, "failed", time.perf_counter() - started,
                               error=message.splitlines()[0] if message else type(exc).__name__)
        status = "already-finished" if result.already_finished else "finished"
        print(f"== {status}: {result.run_dir}", file=sys.stderr, flush=True)
        return CellOutcome(task.index, status, time.perf_counter() - started, str(result.run_dir), result.metrics)
