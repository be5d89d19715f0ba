"""Issue 14: settings checked before any work, plugins that cannot end dcbench, `reproduce`
asking before it starts external programs, and exit statuses 130 / 143 when a run is stopped.

The settings table runs `dcbench.cli.main` in-process (fast) in an empty folder: each case must
end with its exit status and one `error:` line, and leave the folder as it was (no run folder,
no sweep folder, no leaderboard)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from plugin_helpers import dcbench_env, run_dcbench, write_distribution

import dcbench
from dcbench.cli import main
from dcbench.registry import build_registry

RUN = ["run", "-m", "dualcontrast", "-d", "digits", "--device", "cpu"]


def snapshot(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, args: list[str]) -> tuple[int, str, str]:
    """`dcbench ARGS` in this process: its exit status, stdout and stderr."""
    monkeypatch.setattr(sys, "argv", ["dcbench", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def board_row(method: str, overrides: dict[str, str]) -> dict:
    """A leaderboard row as a run writes it (the keys `dcbench reproduce` reads)."""
    label = " ".join(["quick", *(f"{k}={v}" for k, v in sorted(overrides.items()))])
    return {"method": method, "dataset": "digits", "preset": label, "seed": 0, "metrics": {"ARI(c)": 0.5},
            "directions": {"ARI(c)": "max"}, "run": "runs/x",
            "spec": {"preset": "quick", "epochs": None, "overrides": overrides, "metrics": []}}


def write_board(folder: Path, row: dict) -> Path:
    folder.mkdir()
    (folder / "digits.jsonl").write_text(json.dumps(row) + "\n")
    return folder


# ------------------------------------------------------------- settings: one line, nothing written

MANIFEST = '[[structure]]\nfile = "a.pdb"\ncomposition = "a"\n'

CASES = [  # (id, args, exit status, fragments of the one error line)
    ("epochs=0", [*RUN, "--set", "epochs=0"], 1, ["'epochs' of dualcontrast", "whole number >= 1", "got 0"]),
    ("epochs=-1", [*RUN, "--set", "epochs=-1"], 1, ["'epochs' of dualcontrast", "got -1"]),
    ("--epochs 0", [*RUN, "--epochs", "0"], 1, ["--epochs must be at least 1"]),
    ("batch_size=0", [*RUN, "--set", "batch_size=0"], 1, ["'batch_size' of dualcontrast", ">= 1", "got 0"]),
    ("lr=nan", [*RUN, "--set", "lr=nan"], 1, ["'lr' of dualcontrast", "finite number > 0", "got nan"]),
    ("lr=-1", [*RUN, "--set", "lr=-1e-3"], 1, ["'lr' of dualcontrast", "> 0"]),
    ("train_size=-5", [*RUN, "--set", "data.train_size=-5"], 1, ["'data.train_size'", ">= 0", "got -5"]),
    ("test_size=x", [*RUN, "--set", "data.test_size=x"], 1, ["'data.test_size' expects a int, got 'x'"]),
    ("seed -1", [*RUN, "--seed", "-1"], 1, ["--seed must be a whole number from 0 to 4294967295", "got -1"]),
    ("seed 2^40", [*RUN, "--seed", "1099511627776"], 1, ["--seed must be", "got 1099511627776"]),
    ("mnist checksums=foo", ["run", "-m", "dualcontrast", "-d", "mnist", "--set", "data.checksums=foo"], 1,
     ["'data.checksums' expects a dict written as JSON, got 'foo'"]),
    ("mnist misspelt option", ["run", "-m", "dualcontrast", "-d", "mnist", "--set", "data.checksum=foo"], 1,
     ["unknown setting for dualcontrast 'data.checksum'", "did you mean 'data.checksums'", "data.download"]),
    ("spectrum epochs=2", ["run", "-m", "spectrum", "-d", "digits", "--set", "epochs=2"], 1,
     ["spectrum is training-free", "epochs must be 1"]),
    ("sweep epochs=0", ["sweep", "-m", "dualcontrast", "-d", "digits", "--seeds", "0-1", "--set", "epochs=0"], 1,
     ["no cell of this sweep can run", "'epochs' of dualcontrast", "refused too: 1 other cell(s)"]),
    ("sweep seeds 2^32", ["sweep", "-m", "dualcontrast", "-d", "digits", "--seeds", "4294967296"], 1,
     ["--seeds must be a whole number from 0 to 4294967295"]),
    ("sweep --jobs 0", ["sweep", "-m", "dualcontrast", "-d", "digits", "--jobs", "0"], 1,
     ["--jobs must be at least 1"]),
    ("calibrate train_size=-1", ["calibrate", "-d", "subtomo-sim", "--set", "data.train_size=-1"], 1,
     ["'data.train_size'", ">= 0"]),
    ("calibrate seeds 2^32", ["calibrate", "-d", "subtomo-sim", "--seeds", "4294967296"], 1, ["--seeds must be"]),
    ("simulate --out /proc", ["simulate", "m.toml", "--out", "/proc/x", "--per-structure", "1"], 1,
     ["cannot write to /proc/x", "choose another --out"]),
]


@pytest.mark.parametrize("args, status, fragments", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_settings_fail_in_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, args, status,
                                                         fragments) -> None:
    monkeypatch.chdir(tmp_path)  # runs/ and leaderboards/ by default: must stay absent
    (tmp_path / "m.toml").write_text(MANIFEST)
    (tmp_path / "a.pdb").write_text("not read before the output folder is checked\n")
    before = snapshot(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, args)
    lines = err.strip().splitlines()
    assert code == status and len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert snapshot(tmp_path) == before


def test_reproduce_plans_every_row_before_running_any(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    write_board(tmp_path / "boards", board_row("dualcontrast", {"epochs": "0"}))
    before = snapshot(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, ["reproduce", "digits", "--leaderboard-dir", "boards"])
    assert code == 1 and "cannot rerun the row of dualcontrast, seed 0" in err and "'epochs'" in err, err
    assert snapshot(tmp_path) == before


def test_a_dataset_option_of_a_declared_type_is_read_as_json() -> None:
    from dcbench.config import resolve_method_config

    _, data = resolve_method_config({}, {"data.checksums": '{"a": {"raw": "x"}}'}, None, "m",
                                    {"checksums": None}, {"checksums": dict})
    assert data["data.checksums"] == {"a": {"raw": "x"}}


# ---------------------------------------------------------------------------------- plugins


def test_a_plugin_calling_sys_exit_at_import_is_skipped_with_a_warning(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    write_distribution(site, "dcbench-quits", "0.3", "quits", "dcbench_quits", "import sys\nsys.exit(3)\n")
    result = run_dcbench(["list", "--kind", "method"], tmp_path, dcbench_env(site))
    assert result.returncode == 0, result.stderr
    assert "warning: plugin 'quits' (0.3) failed to import and was skipped: SystemExit: 3" in result.stderr
    assert "dualcontrast" in result.stdout


class Registers:
    """An in-process plugin whose register_methods hook registers `names`, then raises `error`."""

    def __init__(self, names: list[object], error: BaseException | None = None) -> None:
        self.__name__ = "tricky"
        self.names, self.error = names, error

    @dcbench.hookimpl
    def register_methods(self, register):
        for name in self.names:
            register(name, "nowhere:Nothing")
        if self.error is not None:
            raise self.error


def test_names_that_would_leave_their_folder_are_refused_naming_the_plugin() -> None:
    bad = ["../escape", "a/b", "a\\b", "..", ".", "", "   ", " padded", "new\nline"]
    registry = build_registry(extra_plugins=[Registers([*bad, "fine"])], entry_points=False)
    assert "fine" in registry.names("method")
    assert not set(bad) & set(registry.names("method"))
    refused = [p for p in registry.problems if p.startswith("plugin 'tricky' registered a method")]
    assert len(refused) == len(bad), registry.problems


def test_a_hook_raising_system_exit_is_skipped_but_ctrl_c_still_stops() -> None:
    registry = build_registry(extra_plugins=[Registers([], SystemExit(3))], entry_points=False)
    assert any("plugin 'tricky' failed while registering methods" in p and "SystemExit" in p
               for p in registry.problems)
    assert "dualcontrast" in registry.names("method")
    with pytest.raises(KeyboardInterrupt):  # the user asked to stop: not a broken plugin
        build_registry(extra_plugins=[Registers([], KeyboardInterrupt())], entry_points=False)


# ------------------------------------------------------------------- reproduce: external programs


def test_reproduce_shows_external_programs_and_runs_them_only_when_allowed(tmp_path, monkeypatch,
                                                                           capsys) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "ran"
    exe = tmp_path / "drgnai"
    exe.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    exe.chmod(0o755)
    write_board(tmp_path / "boards", board_row("hydra", {"exe": str(exe), "data.train_size": "20",
                                                         "data.test_size": "10"}))
    before = snapshot(tmp_path)
    args = ["reproduce", "digits", "--leaderboard-dir", "boards", "--device", "cpu"]

    code, out, err = run_cli(monkeypatch, capsys, [*args, "--dry-run"])
    assert code == 0, err
    assert f"--set exe={exe}" in out and f"#   runs the external program {exe} (needs --allow-external)" in out

    code, _, err = run_cli(monkeypatch, capsys, args)
    assert code == 1 and "would start programs outside dcbench (hydra, seed 0" in err, err
    assert str(exe) in err and "--allow-external" in err
    assert not marker.exists() and snapshot(tmp_path) == before

    code, _, err = run_cli(monkeypatch, capsys, [*args, "--allow-external"])
    assert marker.exists(), err  # allowed: it ran (and, being a fake, failed the run)


# ---------------------------------------------------------------------- Ctrl-C and SIGTERM: 130 / 143

SLOW_PLUGIN = """
import os
import time
from pathlib import Path

import dcbench
from dcbench.api import Method


class Slow(Method):
    name = "slow"

    @classmethod
    def default_config(cls, preset, input_shape):
        return {"epochs": 1}

    def fit(self, train, on_epoch):
        Path(os.environ["SLOW_MARKER"]).write_text("fitting")  # the test signals once this exists
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.02)

    def encode(self, x):
        raise AssertionError("never reached")

    def save(self, path):
        raise AssertionError("never reached")

    def load_state(self, path):
        raise AssertionError("never reached")


@dcbench.hookimpl
def register_methods(register):
    register("slow", Slow)
"""


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_stopped_run_exits_130_or_143_and_its_record_says_interrupted(tmp_path: Path, sig, status) -> None:
    site = tmp_path / "site"
    site.mkdir()
    write_distribution(site, "dcbench-slow", "0.1", "slow", "dcbench_slow", SLOW_PLUGIN)
    env = dcbench_env(site, plugins="slow") | {"SLOW_MARKER": str(tmp_path / "fitting"), "OMP_NUM_THREADS": "1"}
    # SIGINT back to its default in the child, so Python turns it into KeyboardInterrupt even when
    # this test runs in a background job (whose children start with SIGINT ignored)
    process = subprocess.Popen(
        [sys.executable, "-m", "dcbench.cli", "run", "-m", "slow", "-d", "digits", "--metric", "dscore",
         "--device", "cpu", "--no-leaderboard"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (tmp_path / "fitting").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted") and "--resume" in last, err
    (provenance,) = (tmp_path / "runs").glob("*/*/*/provenance.json")
    record = json.loads(provenance.read_text())
    assert record["status"] == "interrupted" and record["phase"] == "train"
