"""Output that cannot be written (an unwritable folder, a full disk) fails cleanly: one line, a
non-zero exit, records intact, nothing half-written, and --resume finishes the run later."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

import dcbench.torchkit
from dcbench.cli import main

ARGS = ["run", "-m", "vae2", "-d", "digits", "--epochs", "2", "--set", "data.train_size=120", "--set",
        "data.test_size=60", "--metric", "dscore", "--device", "cpu"]


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, args: list[str]) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.argv", ["dcbench", *args])
    with pytest.raises(SystemExit) as caught:
        main()
    out, err = capsys.readouterr()
    return caught.value.code, out, err


def run_ok(monkeypatch, capsys, args: list[str]) -> tuple[str, str]:
    monkeypatch.setattr("sys.argv", ["dcbench", *args])
    main()
    out, err = capsys.readouterr()
    return out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and "epoch" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def leftovers(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob(".*.tmp")]


@pytest.mark.parametrize("option", ["--runs-dir", "--leaderboard-dir"])
def test_an_output_folder_blocked_by_a_file_fails_before_any_work(tmp_path, monkeypatch, capsys, option) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("a file, not a folder")
    status, _, err = run_cli(monkeypatch, capsys, [*ARGS, option, "blocker/out"])
    assert status == 1
    line = error_line(err)
    assert "cannot write to blocker/out" in line and f"choose another {option}" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "leaderboards").exists()  # nothing started


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders anyway")
def test_a_read_only_runs_folder_fails_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir(mode=0o555)
    status, _, err = run_cli(monkeypatch, capsys, ARGS)
    assert status == 1 and "Permission denied" in error_line(err)
    assert not list((tmp_path / "runs").iterdir())


def test_a_full_disk_at_the_checkpoint_keeps_the_record_and_resume_finishes(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    board = tmp_path / "leaderboards"
    board.mkdir()
    (board / "digits.jsonl").write_text('{"earlier": "row"}\n')

    def disk_full(self, path: Path) -> None:
        path.write_bytes(b"half a checkp")  # what a full disk leaves: a partial temporary file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    with monkeypatch.context() as patch:
        patch.setattr(dcbench.torchkit.TorchMethod, "save", disk_full)
        status, _, err = run_cli(monkeypatch, capsys, ARGS)
    assert status == 1
    line = error_line(err)
    assert "No space left on device" in line and "free some space" in line and "--resume" in line
    (run_dir,) = (tmp_path / "runs" / "digits" / "vae2").iterdir()
    record = json.loads((run_dir / "provenance.json").read_text())
    assert record["status"] == "failed" and record["phase"] == "checkpoint" and "No space left" in record["error"]
    assert len(record["loss_history"]) == 2  # the training it did is on record
    assert not (run_dir / "checkpoint.pt").exists() and not (run_dir / "metrics.json").exists()
    assert (run_dir / "train_state.pt").exists()  # the last epoch's state survived
    assert (board / "digits.jsonl").read_text() == '{"earlier": "row"}\n'  # no row for a failed run
    assert not leftovers(tmp_path / "runs", board)

    out, err = run_ok(monkeypatch, capsys, [*ARGS, "--resume"])  # space freed: finish the same run
    assert f"continued the unfinished run {run_dir.relative_to(tmp_path)}" in out
    assert "epoch" not in err  # both epochs were checkpointed: none is trained again
    record = json.loads((run_dir / "provenance.json").read_text())
    assert record["status"] == "finished" and len(record["attempts"]) == 2
    assert [h["epoch"] for h in record["loss_history"]] == [0, 1]
    assert (run_dir / "checkpoint.pt").exists()
    assert len((board / "digits.jsonl").read_text().splitlines()) == 2
