"""The run folder: config, provenance, checkpoint, codes, metrics and figures of one run.

provenance.json is rewritten (atomically) at every phase and epoch, so a run that dies still
leaves a record saying how far it got and why it stopped. A live run holds an OS lock on the
folder's `.running.lock` (released by the kernel even when the process is killed), which is
how a record that says "running" is told apart from one whose process died.

figures.json lists the figures and reports the leaderboard links, {kind: path relative to the
run folder}, as whoever drew them returned them (the runner, a metric, `dcbench report`,
`dcbench score`); the board publishes what it lists (figure_files).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from dcbench import __version__, atomic
from dcbench.errors import DcbenchError

LOCK_NAME = ".running.lock"


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def git_commit(path: Path) -> str | None:
    """The commit of the git checkout holding `path` (with '+dirty' if it has changes), or None."""
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for records and benchmark reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, Any]:
    """Versions and hardware that may change a result."""
    info: dict[str, Any] = {
        "dcbench": __version__,
        "dcbench_git_commit": git_commit(Path(__file__).resolve().parent),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "argv": sys.argv,
    }
    for module in ("numpy", "torch", "sklearn", "pluggy"):
        mod = sys.modules.get(module)
        if mod is not None:
            info[module] = getattr(mod, "__version__", "?")
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


class RunRecord:
    """One run's folder and its provenance, kept up to date on disk."""

    def __init__(self, path: Path, provenance: dict[str, Any], lock: FileLock | None = None) -> None:
        self.path = path
        self.provenance = provenance
        self._lock = lock

    @classmethod
    def create(cls, runs_dir: Path, method: str, dataset: str, seed: int, config: dict[str, Any]) -> RunRecord:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        path = Path(runs_dir) / dataset / method / f"{stamp}-seed{seed}-{secrets.token_hex(3)}"
        path.mkdir(parents=True, exist_ok=False)
        lock = _hold_lock(path)
        (path / "figures").mkdir()
        atomic.write_json(path / "config.json", config)
        record = cls(path, {"status": "running", "started_at": utc_now(), "finished_at": None,
                            "seeds": {"seed": seed}, "phases_s": {}, "error": None, "attempts": [_attempt()]},
                     lock)
        record.save()
        return record

    @classmethod
    def reopen(cls, path: Path) -> RunRecord:
        """Take over an interrupted or failed run folder to continue it (`--resume`)."""
        path = Path(path)
        lock = _hold_lock(path)
        try:
            provenance = read_json(path / "provenance.json")
        except DcbenchError:
            lock.release()
            raise
        provenance.setdefault("attempts", [])
        previous = {"status": provenance.get("status"), "phase": provenance.get("phase"),
                    "error": provenance.get("error")}
        provenance["attempts"].append({**_attempt(), "after": previous})
        provenance.update(status="running", finished_at=None, error=None)
        record = cls(path, provenance, lock)
        record.save()
        return record

    @classmethod
    def hold_finished(cls, path: Path) -> RunRecord:
        """Hold a finished run's folder to add to its record (`dcbench score`), status unchanged;
        refuses a run another process holds. release() lets go of it."""
        path = Path(path)
        lock = _hold_lock(path)
        try:
            provenance = read_json(path / "provenance.json")
            if provenance.get("status") != "finished":
                raise DcbenchError(f"{path} is not a finished run (its status is {provenance.get('status')!r}); "
                                   "finish it with `dcbench run ... --resume` first")
        except DcbenchError:
            lock.release()
            raise
        return cls(path, provenance, lock)

    # What a run keeps goes in through these, so that one class knows the record's layout.
    def note_setup(self, environment: dict[str, Any], device: str, data: dict[str, Any]) -> None:
        """The machine and software (records.environment()), the device trained on, and facts
        about the data (sizes and the dataset's own provenance)."""
        self.provenance.update(environment=environment, device=device, data=data)
        self.save()

    @property
    def environment(self) -> dict[str, Any]:
        """What note_setup recorded ({} before it)."""
        return dict(self.provenance.get("environment") or {})

    @property
    def loss_history(self) -> list[dict[str, float]]:
        """One {"epoch": i, term: mean, ...} per epoch trained, in order."""
        return list(self.provenance.get("loss_history", []))

    def add_epoch(self, epoch: int, terms: dict[str, float]) -> None:
        """Keep an epoch's loss means. A resumed run repeats the epochs after its last
        checkpoint: their new numbers replace the old, and later epochs' are dropped."""
        history = [h for h in self.loss_history if h["epoch"] < epoch] + [{"epoch": epoch, **terms}]
        self.provenance["loss_history"] = history
        self.save()

    def note_estimate(self, estimate: dict[str, Any], train_s: float) -> None:
        """The run's estimated training time (dcbench.progress), as first shown."""
        self.provenance.update(estimated_train_s=round(train_s, 1), estimate=estimate)
        self.save()

    def phase_seconds(self, name: str) -> float:
        """Wall time spent in a phase so far (0 if it has not run)."""
        return float(self.provenance["phases_s"].get(name, 0.0))

    def add_phase_seconds(self, name: str, seconds: float) -> None:
        """Count time spent on a phase outside `phase()` (e.g. a load shared by two records)."""
        self.provenance["phases_s"][name] = round(self.phase_seconds(name) + seconds, 3)
        self.save()

    def note_not_applicable(self, reasons: dict[str, str]) -> None:
        """The metrics whose requirements the run did not meet, {metric: why} (dcbench.metric_contract)."""
        self.provenance["not_applicable"] = dict(reasons)
        self.save()

    def add_rescoring(self, entry: dict[str, Any]) -> None:
        """Note a re-scoring (`dcbench score`) in the record: when, which metrics, by which dcbench."""
        self.provenance.setdefault("rescored", []).append(entry)
        self.save()

    def release(self) -> None:
        self._close(lambda: None)

    def save(self) -> None:
        atomic.write_json(self.path / "provenance.json", self.provenance)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase and record its wall time, even when it fails; a phase run again by a
        resumed run adds to its time."""
        self.provenance["phase"] = name
        self.save()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add_phase_seconds(name, time.perf_counter() - start)

    def finish(self, **extra: Any) -> None:
        self.provenance.update(status="finished", finished_at=utc_now(), phase=None, **extra)
        self._close(self.save)

    def fail(self, message: str, status: str = "failed") -> None:
        """Mark the run failed (or 'interrupted', which `--resume` continues). Never raises for
        a disk that cannot take the record any more: the caller is already reporting an error."""
        self.provenance.update(status=status, finished_at=utc_now(), error=message)

        def save_quietly() -> None:
            try:
                self.save()
            except OSError:
                pass

        self._close(save_quietly)

    def _close(self, save: Any) -> None:
        try:
            save()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None


def _attempt() -> dict[str, Any]:
    return {"started_at": utc_now(), "host": socket.gethostname(), "pid": os.getpid()}


def _hold_lock(path: Path) -> FileLock:
    lock = FileLock(str(path / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise DcbenchError(f"run {path} is being run by another live process; wait for it or stop it") from None
    return lock


def is_live(path: Path) -> bool:
    """Whether a process still holds the run folder's lock (so it is running right now)."""
    if not (Path(path) / LOCK_NAME).exists():
        return False
    lock = FileLock(str(Path(path) / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def read_json_or_none(path: Path) -> Any:
    """A JSON file's content, or None if it is missing or unreadable (a record another process
    is rewriting, a folder that is not a run's)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_metrics(run_dir: Path) -> dict[str, float]:
    """A finished run's metrics.json ({} if it is missing or unreadable)."""
    metrics = read_json_or_none(Path(run_dir) / "metrics.json")
    return metrics if isinstance(metrics, dict) else {}


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DcbenchError(f"cannot read {path}: {exc}") from exc


FIGURES_FILE = "figures.json"
# Runs recorded before run folders listed their figures have no figures.json: these are the
# files such a run may hold, by kind, found by looking. History, not a list to extend: a new
# figure is listed by whoever draws it.
LEGACY_FIGURE_FILES = {"transfer grid": "figures/transfer_grid.png", "embedding": "figures/content_embedding.png",
                       "montage": "figures/volume_montage.png", "cluster averages": "figures/fsc_averages.png",
                       "classification report": "classification_report.md",
                       "confusion matrices": "classification_report.png",
                       "classes STAR": "exports/test_particles.star",
                       "class averages MRC": "exports/class_averages.mrcs"}


def figure_files(run_dir: Path) -> dict[str, str]:
    """The run's figures and reports, {kind: path relative to the run folder}: as its
    figures.json lists them, or, for a run from before that list, the LEGACY_FIGURE_FILES it has."""
    listed = read_json_or_none(Path(run_dir) / FIGURES_FILE)
    if isinstance(listed, dict) and all(isinstance(v, str) for v in listed.values()):
        return dict(listed)
    return {kind: path for kind, path in LEGACY_FIGURE_FILES.items() if (Path(run_dir) / path).is_file()}


def write_figures(run_dir: Path, figures: Mapping[str, Path | str], merge: bool = False) -> dict[str, str]:
    """Write the run's figures.json: `figures` {kind: file} (a path in the run folder, or one
    relative to it), added to those it lists already (figure_files) when `merge`. Returns the list."""
    run_dir = Path(run_dir)
    listed = figure_files(run_dir) if merge else {}
    listed.update({kind: _in_run(run_dir, Path(path)) for kind, path in figures.items()})
    atomic.write_json(run_dir / FIGURES_FILE, listed)
    return listed


def _in_run(run_dir: Path, path: Path) -> str:
    """A file's path relative to the run folder (ValueError for an absolute one outside it)."""
    if path.is_absolute():
        return path.resolve().relative_to(run_dir.resolve()).as_posix()
    try:
        return path.relative_to(run_dir).as_posix()  # run_dir / "figures/x.png", run_dir relative
    except ValueError:
        return path.as_posix()  # relative to the run folder already

