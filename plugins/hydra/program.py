"""Finding and running Hydra's `drgnai` program, and reading what it writes.

Facts about `drgnai` used here (from the Hydra repository, ml-struct-bio/hydra: src/command_line.py,
src/configuration.py, src/reconstruct.py):

- `drgnai setup OUT --particles P --ctf C [--capture-setup spa|et] [--reconstruction-type het|homo]
  [--pose-estimation abinit|refine|fixed] [--conf-estimation autodecoder|encoder|refine]` writes
  OUT/configs.yaml (PyYAML block style: particles, ctf, pose, quick_config, outdir = OUT/out) and
  creates OUT/out. Every other setting is a top-level key edited into configs.yaml; unknown keys
  are refused by Hydra.
- `drgnai train OUT [--no-analysis]` trains into OUT/out. Its epochs: a pretraining epoch -1,
  then epochs 0 .. E - 1 with E = (pose-search epochs) + `epochs_sgd`, where the pose-search
  epochs are max(2, `n_imgs_pose_search` // N + 1) for N particles (0 when n_imgs_pose_search is 0).
  After each epoch it logs "# =====> SGD Epoch: e finished in ...; total loss = x" to
  OUT/out/training.log, and after the pretraining epoch, every pose-search epoch and every epoch
  e with e % `log_heavy_interval` == 0 it pickles an (N, `n_classes`) float array of class
  posteriors to OUT/out/p_classes.<e>.pkl (only when n_classes > 1). `seed` seeds numpy and torch.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dcbench.errors import DataError, DcbenchError
from dcbench.safe_pickle import load_numpy_pickle
from dcbench_plugins.hydra import environment

ENV_VAR = "DCBENCH_HYDRA_EXE"
INSTALL = ("build Hydra's environment with `dcbench hydra setup --source PATH_OR_URL` (its source: a folder, "
           "archive or URL of ml-struct-bio/hydra; see docs/hydra.md)")
POINT = (f"or point dcbench at a `drgnai` of your own: {ENV_VAR}=/path/to/drgnai (or the Python environment that "
         "has it) or --set exe=...")
EPOCH_LINE = re.compile(r"SGD Epoch: (-?\d+) finished in [^;]*; total loss = (\S+)")
P_CLASSES = re.compile(r"^p_classes\.(-?\d+)\.pkl$")
POLL_SECONDS = 0.5
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def find_drgnai(setting: str = "") -> Path:
    """The `drgnai` executable: `setting` (the method's `exe`), else $DCBENCH_HYDRA_EXE, else PATH,
    else the one `dcbench hydra setup` recorded. The first two may name the program itself, a
    Python interpreter next to it, or an environment folder (its bin/ is searched). Raises a
    one-line DcbenchError saying how to install and point to it."""
    text = setting.strip() or os.environ.get(ENV_VAR, "").strip()
    source = "--set exe" if setting.strip() else f"${ENV_VAR}"
    if not text:
        found = shutil.which("drgnai") or environment.recorded_drgnai()
        if found:
            return Path(found)
        raise DcbenchError(f"method 'hydra' needs Hydra's `drgnai` program, which is neither on PATH nor set up "
                           f"by dcbench ({environment.home() / environment.RECORD}): {INSTALL}; {POINT}")
    path = Path(text).expanduser()
    if path.is_dir():
        candidates = [path / "drgnai", path / "bin" / "drgnai"]
    elif path.name.startswith("python") and path.parent != Path("."):
        candidates = [path.parent / "drgnai"]  # the interpreter of an environment that has drgnai
    elif os.sep not in text and not path.exists():
        which = shutil.which(text)
        candidates = [Path(which)] if which else []
    else:
        candidates = [path]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.resolve()
    raise DcbenchError(f"{text} (from {source}) is not an executable `drgnai` nor a Python environment that has one: "
                       f"{INSTALL}; {POINT}")


def setup_command(exe: Path, experiment: Path, particles: Path, ctf: Path, extra_args: str = "") -> list[str]:
    """`drgnai setup`: heterogeneous, ab initio poses, as the Hydra paper runs it. Options in
    `extra_args` come last, so they win (argparse keeps the last of a repeated option)."""
    return [str(exe), "setup", str(experiment), "--particles", str(particles), "--ctf", str(ctf),
            "--capture-setup", "spa", "--reconstruction-type", "het", "--pose-estimation", "abinit",
            "--conf-estimation", "autodecoder", *shlex.split(extra_args)]


def train_command(exe: Path, experiment: Path) -> list[str]:
    return [str(exe), "train", str(experiment), "--no-analysis"]


def parse_assignments(text: str) -> dict[str, str]:
    """'key=value key2=value2' -> {'key': 'value', ...}; values are YAML scalars as written."""
    pairs = {}
    for item in shlex.split(text):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DcbenchError(f"extra_configs expects space-separated key=value pairs, got '{item}'")
        pairs[key] = value
    return pairs


def set_configs(path: Path, values: dict[str, str]) -> None:
    """Set top-level keys of Hydra's configs.yaml to YAML scalars given as text. The file is the
    block-style YAML that `drgnai setup` writes; an existing entry of a key (with its indented or
    list continuation lines) is replaced, new keys are appended."""
    kept: list[str] = []
    skipping = False
    for line in path.read_text(encoding="utf-8").splitlines():
        continuation = line.startswith((" ", "\t", "- ")) or line == "-"
        if skipping and continuation:
            continue
        key = line.split(":", 1)[0].strip()
        skipping = not continuation and ":" in line and key in values
        if not skipping:
            kept.append(line)
    kept += [f"{key}: {value}" for key, value in values.items()]
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")


def heavy_interval(epochs: int, at_most: int) -> int:
    """The largest interval <= at_most that divides epochs - 1, so that Hydra's last epoch
    (epochs - 1) is one it writes p_classes for."""
    last = epochs - 1
    if last <= 0:
        return 1
    return max(d for d in range(1, max(1, at_most) + 1) if last % d == 0)


class _Follower:
    """The complete lines appended to a text file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return []
        self.offset += len(data)
        *complete, self.partial = (self.partial + data).split(b"\n")
        return [line.decode("utf-8", "replace") for line in complete]


def p_classes_files(out_dir: Path) -> dict[int, Path]:
    """{epoch: path} of the p_classes.<epoch>.pkl files in Hydra's output folder."""
    found = {}
    if out_dir.is_dir():
        for path in out_dir.iterdir():
            match = P_CLASSES.match(path.name)
            if match:
                found[int(match.group(1))] = path
    return found


class EpochWatcher:
    """Which of Hydra's training epochs (0, 1, ...; not the pretraining epoch -1) have finished,
    from its "SGD Epoch: e finished ...; total loss = x" log lines (in any of `logs`) or, where
    no such line was seen, from a p_classes.<e>.pkl file appearing."""

    def __init__(self, logs: list[Path], out_dir: Path) -> None:
        self.followers = [_Follower(path) for path in logs]
        self.out_dir = out_dir
        self.reported: set[int] = set()

    def poll(self) -> list[tuple[int, dict[str, float]]]:
        """Newly finished epochs, in order, each with its terms: {"loss": total loss} where the
        log gave it, else {"epoch_done": 1.0}."""
        found: dict[int, dict[str, float]] = {}
        for follower in self.followers:
            for line in follower.lines():
                match = EPOCH_LINE.search(line)
                if match:
                    try:
                        loss = float(match.group(2))
                    except ValueError:
                        loss = float("nan")  # Hydra printed something that is not a number
                    found.setdefault(int(match.group(1)), {"loss": loss})
        for epoch in p_classes_files(self.out_dir):
            found.setdefault(epoch, {"epoch_done": 1.0})
        new = sorted(epoch for epoch in found if epoch >= 0 and epoch not in self.reported)
        self.reported.update(new)
        return [(epoch, found[epoch]) for epoch in new]


def _last_line(log: Path) -> str:
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, log.stat().st_size - 4096))
            lines = [x.strip() for x in handle.read().decode("utf-8", "replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def _stop(process: subprocess.Popen) -> None:
    """End the program we started and its children (its own process group), politely first."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _on_parent_death() -> Callable[[], None] | None:
    return functools.partial(_die_with_dcbench, os.getpid()) if sys.platform.startswith("linux") else None


def _die_with_dcbench(dcbench_pid: int) -> None:
    """In the child before exec (Linux): ask the kernel for SIGTERM when dcbench dies, even by
    SIGKILL, so that a killed run does not leave drgnai training on as an orphan in its own session."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # no prctl: _stop() still covers every exit dcbench sees
        return
    if os.getppid() != dcbench_pid:  # dcbench died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run_logged(argv: list[str], log: Path, env: dict[str, str] | None = None,
               on_poll: Callable[[], None] | None = None) -> None:
    """Run argv with its stdout and stderr appended to `log`, calling on_poll() every
    POLL_SECONDS while it runs and once after it ends. A non-zero exit raises a one-line
    DcbenchError with the log's path; an exception from on_poll (a NaN loss, Ctrl-C) stops the
    program and propagates."""
    step = f"{Path(argv[0]).name} {argv[1]}" if len(argv) > 1 else Path(argv[0]).name
    with open(log, "ab") as handle:
        handle.write(f"$ {shlex.join(argv)}\n".encode())
        handle.flush()
        try:
            process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, start_new_session=True,
                                       preexec_fn=_on_parent_death())
        except OSError as exc:
            raise DcbenchError(f"could not start {argv[0]}: {exc.strerror or exc}; {INSTALL}; {POINT}") from None
        try:
            while True:
                try:
                    code = process.wait(timeout=POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    if on_poll is not None:
                        on_poll()
            if on_poll is not None:
                on_poll()  # what the last moments wrote
        except BaseException:
            _stop(process)
            raise
    if code != 0:
        how = f"exit status {code}" if code > 0 else f"signal {-code}"
        last = _last_line(log)
        raise DcbenchError(f"{step} failed ({how}){': ' + last if last else ''}; full log: {log}")


def read_p_classes(path: Path, count: int) -> np.ndarray:
    """Hydra's (count, K) class posteriors from p_classes.<e>.pkl, with restricted unpickling
    (plain numpy arrays only: a pickle that asks for anything else is refused, nothing runs)."""
    value = load_numpy_pickle(path, gzipped=False)
    if not isinstance(value, np.ndarray) or value.ndim != 2 or value.dtype.kind not in "fiu":
        shape = getattr(value, "shape", type(value).__name__)
        raise DataError(f"{path} is not an (N, K) numeric array of class posteriors (got {shape})")
    if value.shape[0] != count or value.shape[1] < 2:
        raise DataError(f"{path} holds posteriors of shape {value.shape}, expected ({count}, K >= 2): one row per "
                        "particle written")
    if not np.isfinite(value).all():
        raise DataError(f"{path} holds NaN or infinite posteriors")
    return value.astype(np.float64)


def write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, default=str) + "\n", encoding="utf-8")
