"""The main job through the real command line, on the embedded digits dataset."""

from __future__ import annotations

import json
from pathlib import Path

from plugin_helpers import run_dcbench


def test_run_on_digits_writes_the_record_the_row_and_the_markdown(tmp_path: Path) -> None:
    result = run_dcbench(["run", "--method", "dualcontrast", "--dataset", "digits", "--epochs", "1", "--seed", "7",
                          "--set", "data.train_size=300", "--device", "cpu"], tmp_path)
    assert result.returncode == 0, result.stderr
    # Not a terminal: one progress line per epoch with the loss terms (a terminal gets a bar).
    assert "epoch 1/1" in result.stderr and "con_c" in result.stderr

    (run_dir,) = (tmp_path / "runs" / "digits" / "dualcontrast").iterdir()
    for name in ("config.json", "provenance.json", "checkpoint.pt", "codes.npz", "metrics.json",
                 "figures/transfer_grid.png", "figures/content_embedding.png"):
        assert (run_dir / name).is_file(), name
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["status"] == "finished" and provenance["seeds"]["seed"] == 7
    assert provenance["device"] == "cpu" and provenance["data"]["train_size"] == 300
    assert {"load_data", "train", "encode", "metrics", "figures"} <= set(provenance["phases_s"])
    env = provenance["environment"]
    assert env["torch"] and env["python"] and env["dcbench"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["method_config"]["epochs"] == 1 and config["preset"] == "quick"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"D(c|c)", "D(c|z)", "S(z)", "SAP(c)", "recon MSE"}  # digits' default metrics
    assert all(0 <= v <= 1 for v in metrics.values())

    (line,) = (tmp_path / "leaderboards" / "digits.jsonl").read_text().splitlines()
    row = json.loads(line)
    assert row["method"] == "dualcontrast" and row["seed"] == 7
    assert row["preset"] == "quick data.train_size=300 epochs=1"
    assert row["metrics"] == metrics and row["budget"]["train_size"] == 300
    assert row["spec"] == {"preset": "quick", "epochs": 1, "overrides": {"data.train_size": "300"},
                           "metrics": ["dscore", "sz", "sap", "recon"]}
    assert "figures" not in row  # only seed 0 runs are shown in the leaderboard's gallery
    markdown = (tmp_path / "leaderboards" / "digits.md").read_text()
    assert "| dualcontrast" in markdown and r"D(c\|c) ↑" in markdown
    assert markdown in result.stdout  # the run prints its leaderboard

    shown = run_dcbench(["leaderboard", "digits"], tmp_path)
    assert shown.returncode == 0 and "| dualcontrast" in shown.stdout
