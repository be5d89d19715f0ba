"""The `hydra` method: an adapter that runs Hydra's external `drgnai` program.

These tests run in CI, where Hydra is not installed, so the adapter runs against
tests/standins/drgnai_standin.py, a STAND-IN that checks what dcbench hands it and writes outputs
in Hydra's layout (see its docstring). The same end-to-end checks against the real program are in
tests/test_hydra_real.py (opt-in: pytest --real-hydra, after `dcbench hydra setup`).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from plugin_helpers import run_dcbench

from dcbench.api import Codes, DataBundle, MetricInput, ReferenceMaps, Split
from dcbench.errors import DcbenchError
from dcbench.runner import transductive_split
from dcbench_plugins.hydra import convert, program
from dcbench_plugins.hydra.method import Hydra
from dcbench_plugins.subtomo import physics

STANDIN = Path(__file__).parent / "standins" / "drgnai_standin.py"
CTF = {"defocus_um": -5.0, "voltage_kv": 300.0, "cs_mm": 1.7, "amplitude_contrast": 0.1}


def standin_exe(folder: Path) -> Path:
    """An executable `drgnai` in `folder` that runs the stand-in with this test's Python."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "drgnai"
    exe.write_text(f"#!{sys.executable}\n# STAND-IN for Hydra's drgnai, tests only: {STANDIN}\n"
                   f"import runpy\nrunpy.run_path({str(STANDIN)!r}, run_name='__main__')\n")
    exe.chmod(0o755)
    return exe


def one_error_line(result) -> str:
    """The run's one error line, the last on stderr (progress lines per epoch may come before it)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("hydra on ")]
    assert result.returncode != 0 and len(errors) == 1 and errors[0] == lines[-1], result.stderr
    assert errors[0].startswith("error: ") and "Traceback" not in result.stderr
    return errors[0]


def only_run(runs: Path, dataset: str) -> Path:
    (run_dir,) = (runs / dataset / "hydra").iterdir()
    return run_dir


# ----------------------------------------------------------------------------- conversion


def test_conversion_writes_z_sums_as_an_mrc_image_stack_and_cryodrgn_ctf_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    volumes = rng.normal(size=(5, 1, 8, 8, 8)).astype(np.float32)
    written = convert.write_inputs(volumes, tmp_path / "v", 10.0, CTF)
    assert (written.count, written.box) == (5, 8)
    with mrcfile.open(written.particles) as mrc:
        assert mrc.is_image_stack() and mrc.data.shape == (5, 8, 8) and mrc.data.dtype == np.float32
        assert float(mrc.voxel_size.x) == pytest.approx(10.0)
        np.testing.assert_allclose(mrc.data, volumes[:, 0].sum(axis=1), rtol=1e-5, atol=1e-5)  # summed along z
    with open(written.ctf, "rb") as handle:
        table = pickle.load(handle)
    assert table.dtype == np.float32 and table.shape == (5, 9)
    # box, Å/px, defocus U and V in Å (underfocus positive), angle, kV, Cs, amplitude contrast, phase shift
    np.testing.assert_allclose(table, np.tile([8, 10.0, 50000, 50000, 0, 300, 1.7, 0.1, 0], (5, 1)), rtol=1e-6)

    images = rng.random((3, 1, 6, 6)).astype(np.float32)  # 2D images pass through; no CTF: a flat one
    flat = convert.write_inputs(images, tmp_path / "i", 1.0, None)
    with mrcfile.open(flat.particles) as mrc:
        np.testing.assert_array_equal(mrc.data, images[:, 0])
    with open(flat.ctf, "rb") as handle:
        np.testing.assert_array_equal(pickle.load(handle)[0], np.float32([6, 1, 0, 0, 0, 300, 0, 1, 0]))
    with pytest.raises(ValueError, match="even size"):
        convert.write_inputs(rng.random((2, 1, 5, 5)).astype(np.float32), tmp_path / "odd", 1.0, None)


def cryodrgn_ctf_2d(row: np.ndarray, box: int) -> np.ndarray:
    """cryoDRGN's published 2D CTF formula evaluated from one row of its 9-column pickle, on the
    fft2 grid: gamma = 2 pi (-df lambda s^2 / 2 + Cs lambda^3 s^4 / 4) - phase shift,
    CTF = sqrt(1 - w^2) sin(gamma) - w cos(gamma); df in Å, positive for underfocus."""
    _, apix, dfu, dfv, _, kv, cs, w, phase = (float(v) for v in row)
    assert dfu == dfv
    volts = kv * 1e3
    wavelength = 12.2639 / math.sqrt(volts + 0.97845e-6 * volts**2)
    f = np.fft.fftfreq(box, d=apix)
    s2 = f[:, None] ** 2 + f[None, :] ** 2
    gamma = 2 * np.pi * (-0.5 * dfu * wavelength * s2 + 0.25 * cs * 1e7 * wavelength**3 * s2**2) - np.radians(phase)
    return np.sqrt(1 - w * w) * np.sin(gamma) - w * np.cos(gamma)


def test_the_ctf_pickle_describes_the_ctf_that_summed_subtomograms_carry() -> None:
    """Units and signs: dcbench's 3D CTF (µm, negative underfocus) summed along z equals
    cryoDRGN's 2D CTF computed from the pickle's columns applied to the plain sum."""
    volume = np.random.default_rng(1).normal(size=(16, 16, 16))
    ctf_volume = physics.apply_ctf(volume, voxel=10.0, **CTF)
    row = convert.ctf_table(1, 16, 10.0, CTF)[0]
    expected = np.fft.ifft2(np.fft.fft2(volume.sum(axis=0)) * cryodrgn_ctf_2d(row, 16)).real
    np.testing.assert_allclose(ctf_volume.sum(axis=0), expected, atol=2e-3 * np.abs(expected).max())
    wrong_sign = np.fft.ifft2(np.fft.fft2(volume.sum(axis=0)) * cryodrgn_ctf_2d(row * [1, 1, -1, -1, 1, 1, 1, 1, 1],
                                                                                16)).real
    assert not np.allclose(ctf_volume.sum(axis=0), wrong_sign, atol=0.1 * np.abs(expected).max())


# ----------------------------------------------------------------------------- the program


def test_find_drgnai_takes_the_program_an_environment_or_its_python_and_says_how_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_root = tmp_path / "env"
    exe = standin_exe(env_root / "bin")
    (env_root / "bin" / "python3.10").write_text("")
    monkeypatch.delenv(program.ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    for setting in (str(exe), str(env_root), str(env_root / "bin"), str(env_root / "bin" / "python3.10")):
        assert program.find_drgnai(setting) == exe.resolve()
    with pytest.raises(DcbenchError) as missing:
        program.find_drgnai("")
    message = str(missing.value)
    assert "\n" not in message and "neither on PATH nor set up by dcbench" in message
    assert "dcbench hydra setup --source" in message
    assert program.ENV_VAR in message and "--set exe" in message
    monkeypatch.setenv(program.ENV_VAR, str(env_root))
    assert program.find_drgnai("") == exe.resolve()
    monkeypatch.setenv(program.ENV_VAR, str(tmp_path / "no-such-env"))
    with pytest.raises(DcbenchError, match=f"no-such-env \\(from \\${program.ENV_VAR}\\) is not an executable"):
        program.find_drgnai("")
    monkeypatch.setenv("PATH", str(env_root / "bin"))
    monkeypatch.delenv(program.ENV_VAR)
    assert program.find_drgnai("") == exe  # on PATH


def test_configs_yaml_keys_are_replaced_or_appended_and_the_last_epoch_is_always_written(tmp_path: Path) -> None:
    configs = tmp_path / "configs.yaml"
    configs.write_text("particles: /p.mrcs\nseed: 7\nquick_config:\n  capture_setup: spa\nind:\n- 1\n- 2\n"
                       "outdir: /o\n")
    program.set_configs(configs, {"seed": "3", "n_classes": "4", "quick_config": "null", "ind": "5"})
    assert configs.read_text() == "particles: /p.mrcs\noutdir: /o\nseed: 3\nn_classes: 4\nquick_config: null\nind: 5\n"
    assert program.heavy_interval(130, 5) == 3 and 129 % 3 == 0  # the paper's 130 epochs
    assert program.heavy_interval(11, 5) == 5 and program.heavy_interval(8, 5) == 1
    assert program.heavy_interval(1, 5) == 1
    assert program.parse_assignments("z_dim=8 lr=1.0e-4") == {"z_dim": "8", "lr": "1.0e-4"}
    with pytest.raises(DcbenchError, match="key=value"):
        program.parse_assignments("z_dim")


def test_settings_hydra_cannot_run_with_are_refused() -> None:
    from dcbench_plugins.hydra.method import check_settings

    good = Hydra.default_config("quick", (1, 32, 32, 32))
    check_settings(good)
    for change, fragment in (({"pose_search_epochs": 1}, "pose_search_epochs"), ({"n_classes": 1}, "n_classes"),
                             ({"pose_search_epochs": 99}, "pose_search_epochs"), ({"ctf": "maybe"}, "ctf must be")):
        with pytest.raises(DcbenchError, match=fragment):
            check_settings({**good, **change})
    paper = Hydra.default_config("paper", (1, 32, 32, 32))
    assert (paper["epochs"], paper["pose_search_epochs"], paper["n_classes"]) == (130, 30, 0)
    assert Hydra.supports((1, 32, 32, 32)) is None and Hydra.supports((1, 28, 28)) is None
    assert "single-channel" in Hydra.supports((3, 64, 64)) and "even" in Hydra.supports((1, 27, 27))


# ----------------------------------------------------------------------------- metrics and runner


class RefusesNewInputs:
    generative = False
    conformation_code = "content"  # as Method declares it (ari reads it)

    def encode(self, x: np.ndarray) -> Codes:
        raise AssertionError("a metric encoded inputs a transductive method never saw")


def test_metrics_report_not_applicable_for_zero_width_codes_and_score_assignments() -> None:
    from sklearn.metrics import adjusted_rand_score

    from dcbench.metric_contract import score_metrics
    from dcbench_plugins.metrics.ari import ARI
    from dcbench_plugins.metrics.dscore import DScore
    from dcbench_plugins.metrics.fsc import FSC
    from dcbench_plugins.metrics.recon import Recon
    from dcbench_plugins.metrics.sap import SAP
    from dcbench_plugins.metrics.sz import SZ

    rng = np.random.default_rng(0)
    composition = np.repeat(np.arange(3), 20)
    conformation = np.tile(np.arange(2), 30)
    x = rng.random((60, 1, 8, 8, 8)).astype(np.float32)
    maps = rng.random((3, 8, 8, 8)).astype(np.float32)
    data = DataBundle(Split(x, composition, conformation), Split(x, composition, conformation),
                      references=ReferenceMaps(maps, np.arange(3)))
    assigned = np.where(rng.random(60) < 0.8, composition, (composition + 1) % 3)
    empty = np.zeros((60, 0), np.float32)
    codes = Codes(empty, empty, assigned)
    inputs = MetricInput(codes, codes, data, RefusesNewInputs(), seed=0)
    ari = ARI().compute(inputs)
    assert ari["ARI(composition)"] == pytest.approx(adjusted_rand_score(composition, assigned))
    assert 0.2 < ari["ARI(composition)"] < 1 and math.isnan(ari["ARI(conformation)"])
    for metric in (DScore(), SAP(), SZ(), Recon()):  # through the contract, as a run scores them
        scores = score_metrics([metric], inputs).scores
        assert scores and all(math.isnan(v) for v in scores.values()), (metric.name, scores)
    no_assignments = MetricInput(Codes(empty, empty), Codes(empty, empty), data, RefusesNewInputs(), seed=0)
    scoring = score_metrics([ARI(), FSC()], no_assignments)
    assert all(math.isnan(v) for v in scoring.scores.values()) and set(scoring.not_applicable) == {"ari", "fsc"}
    with pytest.raises(ValueError, match="lengths"):
        Codes(empty, empty, assigned[:5])
    # fsc averages each assigned class; one class for three compositions leaves two empty clusters, scored 0
    few = DataBundle(data.train, Split(x[:12], np.arange(12) % 3), references=data.references)
    one_class = Codes(empty[:12], empty[:12], np.full(12, 5))
    fsc = FSC().compute(MetricInput(one_class, one_class, few, RefusesNewInputs(), seed=0))
    assert fsc["AUC-FSC(min)"] == 0 and 0 < fsc["AUC-FSC(mean)"] < 0.5 / 3


def test_a_transductive_fit_sees_train_then_test_inputs_without_labels() -> None:
    train = Split(np.zeros((4, 1, 2, 2), np.float32), np.arange(4))
    test = Split(np.ones((2, 1, 2, 2), np.float32), np.arange(2))
    both = transductive_split(DataBundle(train, test))
    np.testing.assert_array_equal(both.x, np.concatenate([train.x, test.x]))
    assert (both.content == -1).all() and both.conformation is None and Hydra.transductive


# ----------------------------------------------------------------------------- end to end


def test_hydra_runs_end_to_end_on_subtomo_sim_through_the_standin(tmp_path: Path) -> None:
    exe = standin_exe(tmp_path / "bin")
    env = dict(os.environ, DRGNAI_STANDIN_EXPECT_CLASSES="3", **{program.ENV_VAR: str(exe)})
    result = run_dcbench(["run", "-m", "hydra", "-d", "subtomo-sim", "--epochs", "11", "--seed", "0",
                          "--set", "data.per_structure=3", "--set", "pose_search_epochs=2"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    run_dir = only_run(tmp_path / "runs", "subtomo-sim")
    # one progress line per Hydra epoch, with the loss parsed from OUT/out/training.log
    assert "epoch 11/11: loss 0.08333" in result.stderr
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["status"] == "finished"
    assert [h["epoch"] for h in provenance["loss_history"]] == list(range(11))
    assert provenance["loss_history"][3]["loss"] == pytest.approx(1 / 5, abs=1e-6)

    work = run_dir / "hydra"
    log = (work / "drgnai.log").read_text()
    assert "drgnai setup" in log and "--reconstruction-type het" in log and "drgnai train" in log
    assert "drgnai stand-in: 54 particles, 3 classes, 2 pose-search + 9 SGD epochs" in log
    configs = (work / "experiment" / "configs.yaml").read_text()
    assert "n_classes: 3\n" in configs and "seed: 0\n" in configs and "log_heavy_interval: 5\n" in configs
    adapter = json.loads((work / "adapter.json").read_text())
    assert adapter["hydra_epoch"] == 10 and adapter["p_classes"].endswith("p_classes.10.pkl")  # not .5 (text order)

    codes = np.load(run_dir / "codes.npz")
    n_train, n_test = len(codes["train_labels"]), len(codes["test_labels"])
    assert n_train + n_test == 54 and codes["test_content"].shape == (n_test, 0)
    # the stand-in puts particle i in class (i + epoch) % K; train particles come first
    np.testing.assert_array_equal(codes["train_assignments"], (np.arange(n_train) + 10) % 3)
    np.testing.assert_array_equal(codes["test_assignments"], (n_train + np.arange(n_test) + 10) % 3)

    from sklearn.metrics import adjusted_rand_score

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["ARI(composition)"] == pytest.approx(adjusted_rand_score(codes["test_labels"],
                                                                            codes["test_assignments"]))
    assert math.isnan(metrics["ARI(conformation)"]) and math.isnan(metrics["D(c|c)"]) and math.isnan(metrics["D(c|z)"])
    assert 0 <= metrics["AUC-FSC(min)"] <= metrics["AUC-FSC(mean)"] <= 0.5  # averages of Hydra's classes
    figures = {p.name for p in (run_dir / "figures").iterdir()}
    assert {"volume_montage.png", "fsc_averages.png"} <= figures and "content_embedding.png" not in figures

    (row,) = [json.loads(line) for line in (tmp_path / "leaderboards" / "subtomo-sim.jsonl").read_text().splitlines()]
    assert row["method"] == "hydra" and row["metrics"]["ARI(composition)"] == pytest.approx(metrics["ARI(composition)"])
    assert row["preset"] == "quick data.per_structure=3 epochs=11 pose_search_epochs=2"  # $DCBENCH_HYDRA_EXE: no label
    assert row["budget"]["train_size"] == 54  # Hydra trained on the train and test particles
    board = (tmp_path / "leaderboards" / "subtomo-sim.md").read_text()
    line = next(line for line in board.splitlines() if line.startswith("| hydra"))
    cells = [cell.strip() for cell in line.split("|")[3:9]]  # ARI x2, AUC-FSC x2, D(c|c), D(c|z)
    assert cells[0] == f"{metrics['ARI(composition)']:.3f}" and cells[1] == "n/a" and cells[4:] == ["n/a", "n/a"]
    assert "no decoder" in line

    method = Hydra(Hydra.default_config("quick", (1, 32, 32, 32)) | {"exe": str(exe)}, (1, 32, 32, 32), "cpu", 0)
    method.load_state(run_dir / "checkpoint.pt")
    np.testing.assert_array_equal(method.assignments, (np.arange(54) + 10) % 3)
    with pytest.raises(DcbenchError, match="transductive"):
        method.encode(np.zeros((1, 1, 32, 32, 32), np.float32))


def digits_run(tmp_path: Path, env: dict[str, str], *extra: str):
    exe = standin_exe(tmp_path / "bin")
    return run_dcbench(["run", "-m", "hydra", "-d", "digits", "--epochs", "3", "--set", "data.train_size=40",
                        "--set", "data.test_size=20", "--set", f"exe={exe}", *extra], tmp_path, env)


def test_a_failing_program_fails_the_run_in_one_line_naming_its_log(tmp_path: Path) -> None:
    result = digits_run(tmp_path, dict(os.environ, DRGNAI_STANDIN_FAIL_AT="1"))
    line = one_error_line(result)
    run_dir = only_run(tmp_path / "runs", "digits")
    log = run_dir / "hydra" / "drgnai.log"
    shown = str(log.relative_to(tmp_path))  # as the runs folder was given: relative to where dcbench ran
    assert "drgnai train failed (exit status 1): RuntimeError: stand-in failure" in line
    assert line.endswith(f"full log: {shown}") and "RuntimeError: stand-in failure" in log.read_text()
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["status"] == "failed" and shown in provenance["error"]
    assert [h["epoch"] for h in provenance["loss_history"]] == [0, 1]  # progress up to the failure
    assert not (tmp_path / "leaderboards" / "digits.jsonl").exists()


def test_a_nan_loss_stops_the_program_and_fails_the_run(tmp_path: Path) -> None:
    started = time.monotonic()
    result = digits_run(tmp_path, dict(os.environ, DRGNAI_STANDIN_NAN_AT="1"))
    assert "loss term 'loss' became nan in epoch 2" in one_error_line(result)
    assert time.monotonic() - started < 40  # the stand-in would sleep 60 s: dcbench stopped it
    pid = int((only_run(tmp_path / "runs", "digits") / "hydra" / "experiment" / "out" / "standin.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone, not left running


def test_a_missing_program_is_one_line_before_any_work(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path / "empty"))
    env.pop(program.ENV_VAR, None)
    result = run_dcbench(["run", "-m", "hydra", "-d", "digits"], tmp_path, env)
    line = one_error_line(result)
    assert "drgnai" in line and "dcbench hydra setup --source" in line and program.ENV_VAR in line
    env[program.ENV_VAR] = str(tmp_path / "missing" / "drgnai")
    assert f"(from ${program.ENV_VAR}) is not an executable" in one_error_line(
        run_dcbench(["run", "-m", "hydra", "-d", "digits"], tmp_path, env))
    assert not (tmp_path / "runs").exists()


def test_a_malicious_p_classes_pickle_is_refused_and_nothing_in_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = digits_run(tmp_path, dict(os.environ, DRGNAI_STANDIN_EVIL=str(marker)))
    line = one_error_line(result)
    assert "refused to load" in line and "p_classes.2.pkl" in line and "mkdir" in line
    assert not marker.exists()
    provenance = json.loads((only_run(tmp_path / "runs", "digits") / "provenance.json").read_text())
    assert provenance["status"] == "failed"


def alive(pid: int) -> bool:
    """Running, not gone and not a zombie waiting for a reaper (an orphan's new parent may not reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_killed_dcbench_takes_the_program_down_with_it(tmp_path: Path) -> None:
    # SIGKILL gives dcbench no chance to stop drgnai, which runs in its own session: the kernel must.
    exe = standin_exe(tmp_path / "bin")
    env = dict(os.environ, DRGNAI_STANDIN_SLEEP="60")
    args = ["run", "-m", "hydra", "-d", "digits", "--epochs", "3", "--set", "data.train_size=40",
            "--set", "data.test_size=20", "--set", f"exe={exe}"]
    dcbench = subprocess.Popen([sys.executable, "-m", "dcbench.cli", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid_file = tmp_path / "runs" / "digits" / "hydra"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(pid_file.glob("*/hydra/experiment/out/standin.pid")):
        time.sleep(0.2)
    (found,) = pid_file.glob("*/hydra/experiment/out/standin.pid")
    time.sleep(0.2)  # the pid is written before the first pause
    pid = int(found.read_text())
    dcbench.kill()
    dcbench.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    pytest.fail("drgnai kept running after dcbench was killed")
