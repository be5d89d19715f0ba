"""The Slurm executor: one job array per sweep through submitit (`pip install 'dcbench[slurm]'`).

Each array task runs one cell with `run_cell`, so it writes its own run record and leaderboard
row on the shared filesystem. A task that Slurm preempts or times out is requeued by submitit
and continues from its last epoch checkpoint (the task is resubmitted with resume on). The
option cluster=local runs the same jobs through submitit's local executor (for testing a sweep
on one machine with exactly the code path a cluster uses).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dcbench.errors import DcbenchError
from dcbench.executors import CellOutcome, CellTask, Executor, run_cell

try:
    import submitit
except ImportError:  # optional extra; SlurmExecutor says how to install it
    submitit = None

INSTALL_HINT = "the slurm executor needs submitit: pip install 'dcbench[slurm]' (or pip install submitit)"


class _CellJob(submitit.helpers.Checkpointable if submitit is not None else object):  # type: ignore[misc]
    """A picklable callable for submitit; on preemption or time-out it asks to be requeued
    continuing its run folder, so the cell goes on from its last epoch instead of starting again."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None

    def __call__(self, task: CellTask) -> CellOutcome:
        return run_cell(task, on_record=self._remember)

    def _remember(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def checkpoint(self, task: CellTask) -> Any:
        again = dataclasses.replace(task, continue_run=self.run_dir or task.continue_run)
        return submitit.helpers.DelayedSubmission(_CellJob(), again)


class SlurmExecutor(Executor):
    name = "slurm"
    option_defaults = {"partition": None, "account": None, "qos": None, "constraint": None,
                       "time": 240, "gpus": 0, "cpus": 4, "mem_gb": 16, "setup": None,
                       "cluster": "slurm", "poll": 30.0}

    def __init__(self, jobs: int, folder: Any, options: dict[str, str] | None = None) -> None:
        super().__init__(jobs, folder, options)
        if submitit is None:
            raise DcbenchError(INSTALL_HINT)
        if self.options["cluster"] not in ("slurm", "local"):
            raise DcbenchError(f"executor option cluster must be slurm or local, got '{self.options['cluster']}'")

    def describe(self) -> str:
        o = self.options
        partition = o["partition"] or "(default)"
        where = "submitit's local executor" if o["cluster"] == "local" else f"Slurm partition {partition}"
        return (f"slurm executor: one job array on {where}, up to {self.jobs} tasks at a time, {o['time']} min, "
                f"{o['gpus']} GPU, {o['cpus']} CPU, {o['mem_gb']} GB each")

    def make_submitit_executor(self) -> Any:
        o = self.options
        executor = submitit.AutoExecutor(folder=self.folder / "submitit" / "%j", cluster=o["cluster"])
        params: dict[str, Any] = {"name": "dcbench-sweep", "timeout_min": int(o["time"]),
                                  "cpus_per_task": int(o["cpus"]), "gpus_per_node": int(o["gpus"]),
                                  "mem_gb": int(o["mem_gb"]), "slurm_array_parallelism": self.jobs}
        for key in ("partition", "account", "qos", "constraint"):
            if o[key]:
                params[f"slurm_{key}"] = o[key]
        if o["setup"]:
            params["slurm_setup"] = [o["setup"]]  # e.g. "source ~/venvs/dcbench/bin/activate"
        executor.update_parameters(**params)
        return executor

    def run(self, tasks: Sequence[CellTask]) -> Iterator[CellOutcome]:
        if not tasks:
            return
        # On a cluster a cell gets the CPUs Slurm gives it; locally the cells share this machine's cores.
        shared = max(1, (os.cpu_count() or 1) // self.jobs)
        threads = int(self.options["cpus"]) if self.options["cluster"] == "slurm" else shared
        tasks = [dataclasses.replace(task, threads=threads) for task in tasks]
        jobs = self.make_submitit_executor().map_array(_CellJob(), list(tasks))
        by_id = {job.job_id: task for job, task in zip(jobs, tasks)}
        for job in submitit.helpers.as_completed(jobs, poll_frequency=float(self.options["poll"])):
            task = by_id[job.job_id]
            try:
                yield job.result()
            except Exception as exc:  # the job itself failed (killed, out of memory, node failure)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                where = f"see {job.paths.stderr} and {task.log_path}"
                yield CellOutcome(task.index, "failed", error=f"Slurm job {job.job_id} failed: {first}; {where}")
