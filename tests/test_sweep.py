"""`dcbench sweep`: cell expansion, overwrite rules, broken plugins, retries, executors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from plugin_helpers import dcbench_env, run_dcbench, write_distribution

from dcbench import atomic, sweep
from dcbench.config import RunSpec
from dcbench.errors import DcbenchError
from dcbench.registry import build_registry
from dcbench.runner import cell_of, plan

TINY = ["--epochs", "1", "--set", "data.train_size=120", "--set", "data.test_size=60", "--metric", "dscore",
        "--device", "cpu"]


@pytest.mark.parametrize("text, seeds", [("0", [0]), ("0-4", [0, 1, 2, 3, 4]), ("0,3,7-8", [0, 3, 7, 8]),
                                         ("2,0-2", [2, 0, 1])])
def test_seed_ranges(text: str, seeds: list[int]) -> None:
    assert sweep.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["a", "1-", "4-2", "1..3", ""])
def test_bad_seed_ranges_say_what_to_write(text: str) -> None:
    with pytest.raises(DcbenchError, match="--seeds"):
        sweep.parse_seeds(text)


def test_names_split_on_commas_and_repeats() -> None:
    assert sweep.split_names(("vae2,dualcontrast", "vae2", " harmony ")) == ["vae2", "dualcontrast", "harmony"]


# ----------------------------------------------------------------------------- overwrite rules
def fake_record(runs: Path, method: str, seed: int, status: str, stamp: str) -> Path:
    """A run folder as the runner leaves it, without training anything."""
    registry = build_registry(entry_points=False)
    spec = RunSpec(method=method, dataset="digits", seed=seed, metrics=["dscore"], epochs=1, runs_dir=runs)
    path = runs / "digits" / method / f"{stamp}-seed{seed}-abcdef"
    path.mkdir(parents=True)
    atomic.write_json(path / "config.json", {"cell": cell_of(spec, plan(spec, registry))})
    atomic.write_json(path / "provenance.json", {"status": status, "started_at": stamp})
    if status == "finished":
        atomic.write_json(path / "metrics.json", {"D(c|c)": 0.5})
    return path


def plan_for(runs: Path, overwrite: str) -> dict[int, sweep.Cell]:
    template = RunSpec(method="", dataset="", metrics=["dscore"], epochs=1, runs_dir=runs)
    registry = build_registry(entry_points=False)
    cells = sweep.plan_cells(["vae2"], ["digits"], [0, 1, 2, 3], template, overwrite, registry)
    return {cell.spec.seed: cell for cell in cells}


def test_overwrite_rules_decide_each_cell_from_its_records(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    fake_record(runs, "vae2", 0, "finished", "2026-01-01T00:00:00Z")
    fake_record(runs, "vae2", 0, "failed", "2026-01-02T00:00:00Z")  # a later failed rerun: still finished once
    killed = fake_record(runs, "vae2", 1, "running", "2026-01-01T00:00:00Z")  # no live process holds it
    failed = fake_record(runs, "vae2", 2, "failed", "2026-01-01T00:00:00Z")

    default = plan_for(runs, "only-missing")
    assert [default[s].action for s in range(4)] == ["skip", "continue", "continue", "run"]
    assert default[1].continue_run == killed and default[2].continue_run == failed
    assert "interrupted" in default[1].reason
    assert [c.action for c in plan_for(runs, "always").values()] == ["run"] * 4
    assert [c.action for c in plan_for(runs, "never").values()] == ["skip", "skip", "skip", "run"]


def test_each_cell_is_planned_once_and_a_retry_finds_its_failed_attempt_without_planning_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dcbench.runner

    runs = tmp_path / "runs"
    calls: list[str] = []
    real_plan = dcbench.runner.plan
    monkeypatch.setattr(dcbench.runner, "plan", lambda spec, registry: calls.append(spec.method) or
                        real_plan(spec, registry))
    cell = plan_for(runs, "only-missing")[3]
    assert cell.action == "run" and cell.identity is not None and len(calls) == 4  # one plan per cell
    failed = fake_record(runs, "vae2", 3, "failed", "2026-01-03T00:00:00Z")  # its first attempt failed
    calls.clear()
    assert sweep._unfinished_run(cell) == failed and calls == []


def test_a_cell_running_in_a_live_process_is_left_alone(tmp_path: Path) -> None:
    from filelock import FileLock

    from dcbench.records import LOCK_NAME

    runs = tmp_path / "runs"
    live = fake_record(runs, "vae2", 0, "running", "2026-01-01T00:00:00Z")
    with FileLock(str(live / LOCK_NAME)):  # another process's run, as far as the sweep can tell
        for rule in sweep.OVERWRITE_RULES:
            cell = plan_for(runs, rule)[0]
            assert cell.action == "skip" and "running in another process" in cell.reason


def test_unknown_overwrite_rule_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DcbenchError, match="only-missing, always, never"):
        plan_for(tmp_path, "sometimes")


# ----------------------------------------------------------------------------- real sweeps
BROKEN = """
import dcbench
from dcbench.api import Method


class BoomAtRunTime(Method):
    name = "boom-run"

    @classmethod
    def default_config(cls, preset, input_shape):
        return {"epochs": 1}

    def fit(self, train, on_epoch):
        raise RuntimeError("kaboom while training")

    def encode(self, x):
        raise NotImplementedError

    def save(self, path):
        raise NotImplementedError

    def load_state(self, path):
        raise NotImplementedError


@dcbench.hookimpl
def register_methods(register):
    register("boom-run", BoomAtRunTime)
    register("boom-import", "boom_module_that_does_not_exist:Method")
"""


def test_broken_plugins_are_reported_and_the_rest_of_the_sweep_goes_on(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    write_distribution(site, "dcbench-broken", "0.1", "broken", "dcbench_broken", BROKEN)
    write_distribution(site, "dcbench-crashes", "0.2", "crashes", "dcbench_crashes",
                       "raise RuntimeError('this plugin crashes at import')\n")
    env = dcbench_env(site, plugins="broken,crashes")
    result = run_dcbench(["sweep", "-m", "vae2,boom-import,boom-run,crash-method", "-d", "digits", "--jobs", "2",
                          "--retries", "1", *TINY], tmp_path, env)
    assert result.returncode == 1
    assert "plugin 'crashes' (0.2) failed to import" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: 3 of 4 cells failed or were refused")
    (summary,) = (tmp_path / "runs" / "sweeps").glob("*/summary.json")
    cells = {c["method"]: c for c in json.loads(summary.read_text())["cells"]}
    assert cells["vae2"]["status"] == "finished" and cells["vae2"]["attempts"] == 1
    assert cells["boom-import"]["status"] == "refused" and "failed to load" in cells["boom-import"]["error"]
    assert cells["crash-method"]["status"] == "refused" and "unknown method" in cells["crash-method"]["error"]
    assert cells["boom-run"]["status"] == "failed" and cells["boom-run"]["attempts"] == 2  # retried once
    assert "kaboom while training" in cells["boom-run"]["error"]
    # The retry continued the failed run's folder instead of starting another.
    (boom_run,) = (tmp_path / "runs" / "digits" / "boom-run").iterdir()
    assert len(json.loads((boom_run / "provenance.json").read_text())["attempts"]) == 2
    rows = (tmp_path / "leaderboards" / "digits.jsonl").read_text().splitlines()
    assert [json.loads(row)["method"] for row in rows] == ["vae2"]
    (log,) = (tmp_path / "runs" / "sweeps").glob("*/logs/*boom-run*.log")
    assert log.read_text().count("kaboom while training") >= 2  # the traceback of each attempt is kept
    table = result.stdout
    assert "finished" in table and "refused" in table and "failed" in table


def test_sweep_through_submitit_runs_each_cell_once_then_skips_them(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    args = ["sweep", "-m", "vae2", "-d", "digits", "--seeds", "0-1", "--executor", "slurm",
            "--executor-option", "cluster=local", "--executor-option", "poll=0.5", "--jobs", "2", *TINY]
    first = run_dcbench(args, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "submitit's local executor" in first.stderr
    (folder,) = (tmp_path / "runs" / "sweeps").iterdir()
    assert list((folder / "submitit").iterdir())  # the jobs went through submitit
    cells = json.loads((folder / "summary.json").read_text())["cells"]
    assert [c["status"] for c in cells] == ["finished", "finished"]
    runs = sorted((tmp_path / "runs" / "digits" / "vae2").iterdir())
    assert len(runs) == 2 and all(json.loads((r / "provenance.json").read_text())["status"] == "finished"
                                  for r in runs)
    assert len((tmp_path / "leaderboards" / "digits.jsonl").read_text().splitlines()) == 2

    dry = run_dcbench([*args, "--dry-run"], tmp_path)
    assert dry.returncode == 0 and dry.stdout.count("finished before") == 2
    assert len(list((tmp_path / "runs" / "sweeps").iterdir())) == 1  # a dry run writes nothing

    again = run_dcbench(args, tmp_path)  # default --overwrite only-missing: nothing left to run
    assert again.returncode == 0, again.stderr
    assert "2 cells, 0 to run" in again.stderr and again.stdout.count("skipped") == 2
    assert len(list((tmp_path / "runs" / "digits" / "vae2").iterdir())) == 2


def test_executor_options_are_checked(tmp_path: Path) -> None:
    result = run_dcbench(["sweep", "-m", "vae2", "-d", "digits", "--executor-option", "partitoin=gpu", "--dry-run"],
                         tmp_path)
    assert result.returncode == 1 and "unknown option of executor 'local' 'partitoin'" in result.stderr
    result = run_dcbench(["sweep", "-m", "vae2", "-d", "digits", "--executor", "ray", "--dry-run"], tmp_path)
    assert result.returncode == 1 and "unknown executor 'ray'" in result.stderr
