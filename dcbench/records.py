"""The run folder: config, provenance, checkpoint, codes, metrics and figures of one run.

provenance.json is rewritten (atomically) at every phase, so a run that dies still leaves a
record saying how far it got and why it stopped.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dcbench import __version__, atomic


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

    def __init__(self, path: Path, provenance: dict[str, Any]) -> None:
        self.path = path
        self.provenance = provenance

    @classmethod
    def create(cls, runs_dir: Path, method: str, dataset: str, seed: int, config: dict[str, Any]) -> RunRecord:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        path = Path(runs_dir) / dataset / method / f"{stamp}-seed{seed}-{secrets.token_hex(3)}"
        path.mkdir(parents=True, exist_ok=False)
        (path / "figures").mkdir()
        atomic.write_json(path / "config.json", config)
        record = cls(path, {"status": "running", "started_at": utc_now(), "finished_at": None,
                            "seeds": {"seed": seed}, "phases_s": {}, "error": None})
        record.save()
        return record

    def save(self) -> None:
        atomic.write_json(self.path / "provenance.json", self.provenance)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase and record its wall time, even when it fails."""
        self.provenance["phase"] = name
        self.save()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.provenance["phases_s"][name] = round(time.perf_counter() - start, 3)
            self.save()

    def finish(self, **extra: Any) -> None:
        self.provenance.update(status="finished", finished_at=utc_now(), phase=None, **extra)
        self.save()

    def fail(self, message: str) -> None:
        self.provenance.update(status="failed", finished_at=utc_now(), error=message)
        self.save()
