"""Issue 14: settings checked before any work, plugins that cannot end dcbench, `reproduce`
asking before it starts external programs, and exit statuses 130 / 143 when a run is stopped.

The settings table runs `dcbench.cli.main` in-process (fast) in an empty folder: each case must
end with its exit status and one `error:` line, and leave the folder as it was (no run folder,
no sweep folder, no leaderboard)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from plugin_helpers import dcbench_env, run_dcbench, write_distribution

import dcbench
from dcbench.api import Dataset, Method
from dcbench.cli import main
from dcbench.errors import DcbenchError
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

# Dataset options out of the dataset's own range (Dataset.check_options), and method settings out
# of the generic (settings_checks) or the method's own range (Method.check_config): all refused
# while planning, before any data is loaded or simulated.
SIM = ["run", "-m", "dualcontrast", "-d", "subtomo-sim", "--device", "cpu"]
DATASET_CASES = [
    ("sim snr=0", [*SIM, "--set", "data.snr=0"], 1, ["data.snr must be a finite number > 0", "got 0.0"]),
    ("sim snr=nan", [*SIM, "--set", "data.snr=nan"], 1, ["'data.snr' must be a finite number", "got nan"]),
    ("sim per_structure=1", [*SIM, "--set", "data.per_structure=1"], 1,
     ["data.per_structure must be at least 2 (one train and one test particle), got 1"]),
    ("sim test_fraction=1.5", [*SIM, "--set", "data.test_fraction=1.5"], 1,
     ["data.test_fraction must be between 0 and 1, got 1.5"]),
    ("sim wedge=95", [*SIM, "--set", "data.wedge=95"], 1, ["data.wedge must be 0 (no missing wedge)", "got 95.0"]),
    ("sim wedge=-1", [*SIM, "--set", "data.wedge=-1"], 1, ["data.wedge must be"]),
    ("sim simulation_seed=-1", [*SIM, "--set", "data.simulation_seed=-1"], 1,
     ["data.simulation_seed must be a whole number from 0 to 4294967295, got -1"]),
    ("proteins test_fraction=0", ["run", "-m", "spectrum", "-d", "subtomo-proteins", "--set", "data.test_fraction=0"],
     1, ["data.test_fraction must be between 0 and 1, got 0.0"]),
    ("mrc test_fraction=1", ["run", "-m", "spectrum", "-d", "mrc", "--set", "data.path=nowhere", "--set",
                             "data.test_fraction=1"], 1, ["data.test_fraction must be between 0 and 1, got 1.0"]),
    ("mrc zscore=maybe", ["run", "-m", "spectrum", "-d", "mrc", "--set", "data.zscore=maybe"], 1,
     ["'data.zscore' expects a bool, got 'maybe'"]),
    ("subtomo test_fraction=-0.1", ["run", "-m", "spectrum", "-d", "subtomo", "--set", "data.test_fraction=-0.1"],
     1, ["data.test_fraction must be between 0 and 1, got -0.1"]),
    ("mnist checksums malformed", ["run", "-m", "spectrum", "-d", "mnist", "--set", 'data.checksums={"a": 1}'], 1,
     ["data.checksums must give md5s for every MNIST file", "train-images-idx3-ubyte"]),
    ("linemod n_train_per_object=0", ["run", "-m", "spectrum", "-d", "linemod", "--set",
                                      "data.n_train_per_object=0"], 1,
     ["n_train_per_object must be a positive integer, got 0"]),
    ("calibrate snr=0", ["calibrate", "-d", "subtomo-sim", "--set", "data.snr=0"], 1, ["data.snr must be"]),
    ("calibrate per_structure=1", ["calibrate", "-d", "subtomo-proteins", "--set", "data.per_structure=1"], 1,
     ["data.per_structure must be at least 2"]),
    ("sweep wedge=95", ["sweep", "-m", "dualcontrast,spectrum", "-d", "subtomo-sim", "--set", "data.wedge=95"], 1,
     ["no cell of this sweep can run", "data.wedge must be"]),
]
METHOD_CASES = [
    ("lr_gamma=nan", [*RUN, "--set", "lr_gamma=nan"], 1, ["'lr_gamma' of dualcontrast", "finite number > 0", "nan"]),
    ("lr_gamma=0", [*RUN, "--set", "lr_gamma=0"], 1, ["'lr_gamma' of dualcontrast", "> 0 and <= 1", "got 0.0"]),
    ("lr_step_epochs=0", [*RUN, "--set", "lr_step_epochs=0"], 1,
     ["'lr_step_epochs' of dualcontrast must be a whole number >= 1, got 0"]),
    ("contrastive_weight=inf", [*RUN, "--set", "contrastive_weight=inf"], 1,
     ["'contrastive_weight' of dualcontrast must be a finite number >= 0, got inf"]),
    ("kl_weight=-1", [*RUN, "--set", "kl_weight=-1"], 1, ["'kl_weight' of dualcontrast", ">= 0", "got -1.0"]),
    ("latent_dim=0", [*RUN, "--set", "latent_dim=0"], 1, ["'latent_dim' of dualcontrast", ">= 1"]),
    ("max_rotation_degrees=inf", [*RUN, "--set", "max_rotation_degrees=inf"], 1,
     ["'max_rotation_degrees' of dualcontrast must be a finite number", "got inf"]),
    ("max_rotation_degrees=400", [*RUN, "--set", "max_rotation_degrees=400"], 1,
     ["'max_rotation_degrees' of dualcontrast must be a finite number >= 0 and <= 180, got 400.0"]),
    ("pairs=some", [*RUN, "--set", "pairs=some"], 1, ["unknown pairs 'some'"]),
    ("transform=hue on grey", [*RUN, "--set", "transform=hue"], 1, ["transform 'hue' changes colour"]),
    ("3D bin=0", [*SIM, "--set", "bin=0"], 1, ["bin must be a whole number >= 1 (1 = off), got 0"]),
    ("3D bin=3", [*SIM, "--set", "bin=3"], 1, ["bin 3 does not divide the volume side 32"]),
    ("3D lowpass_sigma=-1", [*SIM, "--set", "lowpass_sigma=-1"], 1, ["lowpass_sigma must be a number >= 0"]),
    ("3D paper networks binned", [*SIM, "--set", "networks=paper"], 1,
     ["the paper's networks take 1x32x32x32 inputs, not binned 1x16x16x16 ones"]),
    ("3D networks=huge", [*SIM, "--set", "networks=huge"], 1, ["unknown networks 'huge'"]),
    ("harmony precision=fp16", ["run", "-m", "harmony", "-d", "digits", "--set", "precision=fp16"], 1,
     ["unknown precision 'fp16'"]),
    ("harmony gamma=-1", ["run", "-m", "harmony", "-d", "digits", "--set", "gamma=-1"], 1, ["gamma must be"]),
    ("harmony max_shift_pixels=-1", ["run", "-m", "harmony", "-d", "digits", "--set", "max_shift_pixels=-1"], 1,
     ["'max_shift_pixels' of harmony must be a finite number >= 0"]),
    ("spatialvae dx_scale=0", ["run", "-m", "spatialvae", "-d", "digits", "--set", "dx_scale=0"], 1,
     ["'dx_scale' of spatialvae must be a finite number > 0"]),
    ("spatialvae encoder_layers=0", ["run", "-m", "spatialvae", "-d", "digits", "--set", "encoder_layers=0"], 1,
     ["'encoder_layers' of spatialvae must be a whole number >= 1"]),
    ("vitae cpab_steps=0", ["run", "-m", "vitae", "-d", "digits", "--set", "cpab_steps=0"], 1,
     ["'cpab_steps' of vitae must be a whole number >= 1"]),
    ("vitae beta=nan", ["run", "-m", "vitae", "-d", "digits", "--set", "beta=nan"], 1, ["'beta' of vitae"]),
    ("vitae warmup_epochs=-1", ["run", "-m", "vitae", "-d", "digits", "--set", "warmup_epochs=-1"], 1,
     ["'warmup_epochs' of vitae must be a whole number >= 0"]),
    ("vitae tess_size=4", ["run", "-m", "vitae", "-d", "digits", "--set", "tess_size=4"], 1,
     ["tess_size must look like 4x2"]),
    ("simclr-disc temperature=0", ["run", "-m", "simclr-disc", "-d", "digits", "--set", "temperature=0"], 1,
     ["'temperature' of simclr-disc must be a finite number > 0"]),
    ("simclr-gen nt_xent_weight=-1", ["run", "-m", "simclr-gen", "-d", "digits", "--set", "nt_xent_weight=-1"], 1,
     ["'nt_xent_weight' of simclr-gen", ">= 0"]),
    ("spectrum log_floor=inf", ["run", "-m", "spectrum", "-d", "digits", "--set", "log_floor=inf"], 1,
     ["'log_floor' of spectrum must be a finite number"]),
    ("hydra pose_search_epochs=1 (no drgnai needed)", ["run", "-m", "hydra", "-d", "digits", "--set",
                                                       "pose_search_epochs=1"], 1,
     ["hydra: pose_search_epochs must be 0 or 2"]),
    ("sweep lr_step_epochs=0", ["sweep", "-m", "dualcontrast,harmony", "-d", "digits", "--set", "lr_step_epochs=0"],
     1, ["no cell of this sweep can run"]),
]
CASES = CASES + DATASET_CASES + METHOD_CASES


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


class RangedData(Dataset):
    """A third-party dataset that declares its options' ranges (and fails if anything loads it)."""

    name, shape, option_defaults = "ranged", (1, 28, 28), {"share": 0.5}

    @classmethod
    def check_options(cls, options: dict) -> None:
        if not 0 < options["share"] < 1:
            raise DcbenchError(f"data.share must be between 0 and 1, got {options['share']}")

    def load(self, seed: int):
        raise AssertionError("planning must not load data")


class RangedMethod(Method):
    """A third-party method that declares its own range and checks the input shape."""

    name = "ranged-m"

    @classmethod
    def default_config(cls, preset: str, input_shape: tuple[int, ...]) -> dict:
        return {"epochs": 1, "width": 4, "ratio": 0.5}

    @classmethod
    def check_config(cls, config: dict, input_shape: tuple[int, ...]) -> None:
        if config["width"] > input_shape[-1]:
            raise DcbenchError(f"width {config['width']} is wider than the inputs ({input_shape[-1]})")

    fit = encode = save = load_state = None  # planning never builds it


class RegistersRanged:
    __name__ = "ranged"

    @dcbench.hookimpl
    def register_methods(self, register):
        register("ranged-m", RangedMethod)

    @dcbench.hookimpl
    def register_datasets(self, register):
        register("ranged", RangedData)


@pytest.mark.parametrize("overrides, fragment", [
    ({"data.share": "1.5"}, "data.share must be between 0 and 1, got 1.5"),  # Dataset.check_options
    ({"width": "29"}, "width 29 is wider than the inputs (28)"),  # Method.check_config, with the dataset's shape
    ({"ratio": "nan"}, "setting 'ratio' of ranged-m must be a finite number, got nan"),  # generic: floats finite
])
def test_third_party_plugins_declare_their_ranges_and_planning_refuses(overrides, fragment) -> None:
    from dcbench.config import RunSpec
    from dcbench.runner import plan

    registry = build_registry(extra_plugins=[RegistersRanged()], entry_points=False)
    spec = RunSpec(method="ranged-m", dataset="ranged", metrics=["dscore"], overrides=overrides)
    with pytest.raises(DcbenchError, match=re.escape(fragment)):
        plan(spec, registry)
    assert plan(RunSpec(method="ranged-m", dataset="ranged", metrics=["dscore"]), registry).config["width"] == 4


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
