"""`dcbench reproduce`: rows of a leaderboard back into the runs that made them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from plugin_helpers import run_dcbench

from dcbench.config import preset_label
from dcbench.errors import DcbenchError
from dcbench.reproduce import cells_from_rows, command_line, spec_from_label


def test_a_preset_label_reads_back_into_the_settings_that_made_it() -> None:
    overrides = {"data.train_size": "20000", "lr": "0.0005"}
    label = preset_label("quick", overrides, 10)
    assert spec_from_label(label) == {"preset": "quick", "epochs": 10, "overrides": overrides, "metrics": []}
    assert spec_from_label("paper") == {"preset": "paper", "epochs": None, "overrides": {}, "metrics": []}
    with pytest.raises(DcbenchError, match="unknown preset"):
        spec_from_label("fast epochs=3")


def test_cells_are_distinct_filtered_and_use_recorded_specs() -> None:
    spec = {"preset": "quick", "epochs": 2, "overrides": {"lr": "0.01"}, "metrics": ["dscore"]}
    rows = [
        {"method": "b", "dataset": "d", "seed": 1, "preset": "quick epochs=2 lr=0.01", "spec": spec},
        {"method": "b", "dataset": "d", "seed": 1, "preset": "quick epochs=2 lr=0.01", "spec": spec},  # a rerun
        {"method": "a", "dataset": "d", "seed": 0, "preset": "quick epochs=5"},  # an old row, no spec
        {"method": "a", "dataset": "d", "seed": 0, "preset": "paper"},
    ]
    cells = cells_from_rows(rows)
    assert [(c.method, c.label, c.seed) for c in cells] == [("a", "paper", 0), ("a", "quick epochs=5", 0),
                                                            ("b", "quick epochs=2 lr=0.01", 1)]
    assert command_line(cells[2]) == ("dcbench run --method b --dataset d --seed 1 --preset quick --epochs 2 "
                                      "--set lr=0.01 --metric dscore")
    assert [c.label for c in cells_from_rows(rows, presets=["paper"])] == ["paper"]
    assert [c.method for c in cells_from_rows(rows, methods=["b"])] == ["b"]


def test_reproduce_reruns_a_row_and_gets_the_same_numbers(tmp_path: Path) -> None:
    args = ["--method", "dualcontrast", "--dataset", "digits", "--epochs", "1", "--seed", "3", "--device", "cpu",
            "--set", "data.train_size=200", "--metric", "dscore"]
    assert run_dcbench(["run", *args], tmp_path).returncode == 0
    dry = run_dcbench(["reproduce", "digits", "--dry-run"], tmp_path)
    assert dry.returncode == 0
    assert dry.stdout.strip() == ("dcbench run --method dualcontrast --dataset digits --seed 3 --preset quick "
                                  "--epochs 1 --set data.train_size=200 --metric dscore")
    again = run_dcbench(["reproduce", "digits", "--device", "cpu"], tmp_path)
    assert again.returncode == 0, again.stderr
    (original,) = [json.loads(line) for line in (tmp_path / "leaderboards" / "digits.jsonl").read_text().splitlines()]
    (rerun,) = [json.loads(line) for line in
                (tmp_path / "leaderboards-reproduced" / "digits.jsonl").read_text().splitlines()]
    assert rerun["preset"] == original["preset"] and rerun["metrics"] == original["metrics"]  # deterministic on CPU
    missing = run_dcbench(["reproduce", "digits", "--preset", "paper", "--dry-run"], tmp_path)
    assert missing.returncode == 1 and "its presets are: quick data.train_size=200 epochs=1" in missing.stderr
