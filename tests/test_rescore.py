"""`dcbench score`: finished runs scored again from their codes and checkpoint, without retraining."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from plugin_helpers import run_dcbench

TINY = ["-d", "digits", "--set", "data.train_size=120", "--set", "data.test_size=60", "--device", "cpu"]
OWN = ["--metric", "dscore", "--metric", "sz", "--metric", "sap", "--metric", "recon"]  # digits' defaults


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with runs/ and leaderboards/: vae2 seed 0 (a trained model, a decoder) and the
    training-free spectrum, seeds 1 and 2, all on one digits board."""
    root = tmp_path_factory.mktemp("rescore")
    for args in (["-m", "vae2", "--epochs", "1"], ["-m", "spectrum", "--seed", "1"], ["-m", "spectrum", "--seed", "2"]):
        result = run_dcbench(["run", *args, *TINY], root)
        assert result.returncode == 0, result.stderr
    return root


@pytest.fixture
def work(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained folder for one test (the rows' run paths are relative to it)."""
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    return tmp_path


def run_of(work: Path, method: str, seed: int) -> Path:
    (found,) = (work / "runs" / "digits" / method).glob(f"*-seed{seed}-*")
    return found.relative_to(work)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def board_rows(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "leaderboards" / "digits.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method, seed", [("vae2", 0), ("spectrum", 1)])
def test_own_metrics_reproduce_metrics_json_exactly(work: Path, method: str, seed: int) -> None:
    run = run_of(work, method, seed)
    before = (work / run / "metrics.json").read_bytes()
    result = run_dcbench(["score", str(run), *OWN], work)
    assert result.returncode == 0, result.stderr
    assert (work / run / "metrics.json").read_bytes() == before  # same seed: same k-means, probes, pairs
    assert "(unchanged)" in result.stdout and "was " not in result.stdout and "(new)" not in result.stdout
    (entry,) = json.loads((work / run / "provenance.json").read_text())["rescored"]
    assert entry["metrics"] == ["dscore", "sz", "sap", "recon"] and entry["changed"] == {}
    assert entry["environment"]["dcbench"] and "dcbench_git_commit" in entry["environment"]


def test_a_new_metric_goes_into_metrics_provenance_and_the_board_row(work: Path) -> None:
    run = run_of(work, "vae2", 0)
    old = json.loads((work / run / "metrics.json").read_text())
    rows_before = board_rows(work)
    result = run_dcbench(["score", str(run), "--metric", "ari"], work)
    assert result.returncode == 0, result.stderr
    assert "ARI(composition)" in result.stdout and "(new)" in result.stdout
    metrics = json.loads((work / run / "metrics.json").read_text())
    assert {k: metrics[k] for k in old} == old and 0 <= metrics["ARI(composition)"] <= 1  # merged, others kept
    provenance = json.loads((work / run / "provenance.json").read_text())
    assert provenance["status"] == "finished" and provenance["rescored"][-1]["metrics"] == ["ari"]
    assert provenance["rescored"][-1]["columns"] == ["ARI(composition)", "ARI(conformation)"]
    rows = board_rows(work)
    assert len(rows) == len(rows_before) + 1  # appended again; the older line stays as history
    row = rows[-1]
    assert row["run"] == str(run) and row["metrics"]["ARI(composition)"] == metrics["ARI(composition)"]
    assert row["metrics"]["D(c|c)"] == old["D(c|c)"] and row["directions"]["ARI(composition)"] == "max"
    assert row["spec"]["metrics"] == ["dscore", "sz", "sap", "recon", "ari"] and row["rescored_at"]
    assert r"ARI(composition) ↑" in (work / "leaderboards" / "digits.md").read_text()  # re-rendered


def test_a_board_is_scored_except_the_rows_whose_run_folder_is_gone(work: Path) -> None:
    gone = run_of(work, "spectrum", 2)
    shutil.rmtree(work / gone)
    result = run_dcbench(["score", "--leaderboard", "digits", "--metric", "dscore"], work)
    assert result.returncode == 0, result.stderr
    skipped = [line for line in result.stdout.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and "seed 2" in skipped[0] and str(gone) in skipped[0] and "missing" in skipped[0]
    for method, seed in (("vae2", 0), ("spectrum", 1)):
        run = run_of(work, method, seed)
        assert f"{run}: D(c|c)" in result.stdout
        assert json.loads((work / run / "provenance.json").read_text())["rescored"][-1]["metrics"] == ["dscore"]
    assert "D(c|c) = " in result.stdout and "(unchanged)" in result.stdout


def _unfinished(run: Path) -> None:
    provenance = json.loads((run / "provenance.json").read_text())
    (run / "provenance.json").write_text(json.dumps({**provenance, "status": "interrupted"}))


REFUSALS = [  # (name, args after the run folder, how to damage the run first, words in the one line)
    ("unknown metric", ["--metric", "dscor"], None, ["unknown metric 'dscor'", "did you mean 'dscore'"]),
    ("unfinished run", ["--metric", "dscore"], _unfinished, ["not a finished run", "'interrupted'"]),
    ("no codes", ["--metric", "dscore"], lambda run: (run / "codes.npz").unlink(), ["has no codes.npz"]),
    ("no checkpoint", ["--metric", "dscore", "--metric", "sz"], lambda run: (run / "checkpoint.pt").unlink(),
     ["metric 'sz' needs the trained model", "checkpoint.pt is missing"]),
    ("not for digits", ["--metric", "fsc"], None, ["metric 'fsc' does not apply", "dataset 'digits'"]),
]


@pytest.mark.parametrize("name, args, damage, words", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_are_one_line_and_write_nothing(work: Path, name: str, args: list[str], damage, words) -> None:
    run = run_of(work, "vae2", 0)
    if damage is not None:
        damage(work / run)
    before = snapshot(work)
    result = run_dcbench(["score", str(run), *args], work)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert snapshot(work) == before


def test_a_folder_that_is_not_a_run_is_refused(work: Path) -> None:
    before = snapshot(work)
    result = run_dcbench(["score", "runs/digits", "--metric", "dscore"], work)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "is it a dcbench run folder" in result.stderr
    assert snapshot(work) == before


def test_several_run_folders_are_all_checked_before_any_is_scored(work: Path) -> None:
    good, bad = run_of(work, "vae2", 0), run_of(work, "spectrum", 1)
    _unfinished(work / bad)
    before = snapshot(work)
    result = run_dcbench(["score", str(good), str(bad), "--metric", "dscore"], work)
    assert result.returncode == 1 and "not a finished run" in result.stderr and result.stderr.count("\n") == 1
    assert snapshot(work) == before
