"""RunRecord owns what a run keeps: loss history, setup, estimate and phase times go in through
its methods and come out through its accessors, and each change is on disk at once."""

from __future__ import annotations

import json
from pathlib import Path

from dcbench.records import RunRecord


def on_disk(record: RunRecord) -> dict:
    return json.loads((record.path / "provenance.json").read_text())


def test_a_resumed_run_replaces_the_epochs_it_repeats(tmp_path: Path) -> None:
    record = RunRecord.create(tmp_path, "m", "d", 0, {"method": "m"})
    for epoch in range(3):
        record.add_epoch(epoch, {"loss": float(epoch)})
    record.add_epoch(1, {"loss": 9.0})  # resumed after the checkpoint of epoch 0
    assert record.loss_history == [{"epoch": 0, "loss": 0.0}, {"epoch": 1, "loss": 9.0}]
    assert on_disk(record)["loss_history"] == record.loss_history
    record.release()


def test_setup_estimate_and_phase_times_are_recorded_and_read_back(tmp_path: Path) -> None:
    record = RunRecord.create(tmp_path, "m", "d", 0, {"method": "m"})
    record.note_setup({"dcbench": "0.1.0", "dcbench_git_commit": "abc"}, "cpu", {"train_size": 4})
    record.note_estimate({"steps_per_epoch": 3}, 12.345)
    with record.phase("train"):
        pass
    record.add_phase_seconds("train", 2.0)
    saved = on_disk(record)
    assert record.environment["dcbench_git_commit"] == "abc" and saved["device"] == "cpu"
    assert saved["data"] == {"train_size": 4} and saved["estimated_train_s"] == 12.3
    assert saved["estimate"] == {"steps_per_epoch": 3}
    assert 2.0 <= record.phase_seconds("train") < 3.0 and record.phase_seconds("never") == 0.0
    record.environment["dcbench"] = "changed"  # a copy: the record is changed through its methods only
    assert record.environment["dcbench"] == "0.1.0"
    record.release()


def test_run_settings_go_to_json_and_back_unchanged() -> None:
    from dcbench.config import RunSpec

    spec = RunSpec(method="vae2", dataset="digits", seed=3, preset="paper", epochs=2, metrics=["dscore", "sap"],
                   overrides={"lr": "0.01", "data.train_size": "50"}, runs_dir=Path("elsewhere"))
    settings = json.loads(json.dumps(spec.settings()))
    assert RunSpec.from_settings(settings, runs_dir=Path("elsewhere")) == spec
    assert "runs_dir" not in settings and "device" not in settings  # where it ran is not what it is
