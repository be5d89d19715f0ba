"""Leaderboard rows, rendering, and concurrent appends."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
from pathlib import Path

import pytest

from dcbench import leaderboard
from dcbench.errors import DcbenchWarning


def _row(method: str, seed: int, dcc: float, dcz: float, preset: str = "quick") -> dict:
    return {"method": method, "dataset": "toy", "preset": preset, "seed": seed,
            "metrics": {"D(c|c)": dcc, "D(c|z)": dcz}, "directions": {"D(c|c)": "max", "D(c|z)": "min"},
            "budget": {"epochs": 5, "train_size": 100, "batch_size": 10, "lr": 0.001}, "train_seconds": 1.0}


def test_rendering_groups_by_method_and_preset_with_mean_std_and_reported_rows() -> None:
    rows = [_row("a", 0, 0.8, 0.3), _row("a", 1, 0.9, 0.1), _row("a", 0, 0.5, 0.5, preset="paper"),
            _row("b", 0, 0.7, 0.2)]
    text = leaderboard.render_markdown("toy", rows, {"a": {"D(c|c)": 0.89, "D(c|z)": 0.31}}, "Some paper")
    assert r"D(c\|c) ↑" in text and r"D(c\|z) ↓" in text
    main_table = text.split("## Ranks")[0]
    table = [line for line in main_table.splitlines() if line.startswith("| a ") or line.startswith("| b ")]
    assert len(table) == 4
    quick = next(line for line in table if "| quick" in line and line.startswith("| a "))
    assert "0.850 ± 0.071" in quick and "0.200 ± 0.141" in quick and "| 2 " in quick and "0,1" in quick
    reported = next(line for line in table if "reported" in line)
    assert "0.89" in reported and "0.31" in reported
    assert "Some paper" in text


def _append_many(args: tuple[str, int, int]) -> None:
    directory, worker, count = args
    for i in range(count):
        leaderboard.append_row(Path(directory), "toy", _row(f"m{worker}", i, 0.5, 0.5))


def test_concurrent_appends_lose_no_row(tmp_path: Path) -> None:
    workers, per_worker = 8, 50
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_append_many, [(str(tmp_path), w, per_worker) for w in range(workers)])
    lines = (tmp_path / "toy.jsonl").read_text().splitlines()
    assert len(lines) == workers * per_worker
    rows = [json.loads(line) for line in lines]  # every line is whole JSON
    assert {(r["method"], r["seed"]) for r in rows} == {(f"m{w}", i) for w in range(workers)
                                                         for i in range(per_worker)}
    text = (tmp_path / "toy.md").read_text()
    assert all(f"| m{w} " in text for w in range(workers))
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_a_corrupt_line_is_skipped_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "toy.jsonl").write_text('{"truncated": \n')
    with pytest.warns(DcbenchWarning, match="toy.jsonl:1: skipped"):
        leaderboard.append_row(tmp_path, "toy", _row("a", 0, 0.9, 0.1))
        assert len(leaderboard.read_rows(tmp_path, "toy")) == 1


def test_a_torn_last_line_does_not_swallow_the_next_row(tmp_path: Path) -> None:
    (tmp_path / "toy.jsonl").write_text('{"truncated": ')  # a crash mid-line: no newline at the end
    with pytest.warns(DcbenchWarning, match="toy.jsonl:1: skipped"):
        leaderboard.append_row(tmp_path, "toy", _row("a", 0, 0.9, 0.1))
        assert [r["method"] for r in leaderboard.read_rows(tmp_path, "toy")] == ["a"]


def test_a_failed_append_leaves_no_half_line_and_says_what_to_do(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    leaderboard.append_row(tmp_path, "toy", _row("a", 0, 0.9, 0.1))
    jsonl, markdown = (tmp_path / "toy.jsonl").read_bytes(), (tmp_path / "toy.md").read_bytes()
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:  # half the line reaches the disk, then ENOSPC
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(leaderboard.os, "write", disk_full)
    with pytest.raises(OSError, match="toy.jsonl.*--leaderboard-dir") as caught:
        leaderboard.append_row(tmp_path, "toy", _row("a", 1, 0.8, 0.2))
    assert caught.value.errno == errno.ENOSPC and "Free disk space" in str(caught.value)
    assert (tmp_path / "toy.jsonl").read_bytes() == jsonl
    assert (tmp_path / "toy.md").read_bytes() == markdown

    monkeypatch.setattr(leaderboard.os, "write", lambda fd, data: real_write(fd, data[:10]))  # a short write
    with pytest.raises(OSError, match="short write"):
        leaderboard.append_row(tmp_path, "toy", _row("a", 1, 0.8, 0.2))
    assert (tmp_path / "toy.jsonl").read_bytes() == jsonl
    monkeypatch.undo()
    leaderboard.append_row(tmp_path, "toy", _row("a", 1, 0.8, 0.2))  # and the next append is whole
    assert [r["seed"] for r in leaderboard.read_rows(tmp_path, "toy")] == [0, 1]


def test_seed_zero_figures_are_published_and_shown_side_by_side(tmp_path: Path) -> None:
    figures = tmp_path / "run" / "figures"
    figures.mkdir(parents=True)
    (figures / "transfer_grid.png").write_bytes(b"grid")
    (figures / "content_embedding.png").write_bytes(b"embedding")
    board = tmp_path / "boards"
    for method, generative, seed in (("gen", True, 0), ("gen", True, 1), ("disc", False, 0)):
        row = {"method": method, "dataset": "toy", "preset": "quick epochs=2", "seed": seed, "generative": generative,
               "metrics": {"D(c|c)": 0.5}, "directions": {"D(c|c)": "max"}}
        leaderboard.publish_figures(board, row, figures.parent if generative else tmp_path / "nothing")
        assert ("figures" in row) == (seed == 0 and generative)
        leaderboard.append_row(board, "toy", row)
    published = board / "figures" / "toy-gen-quick-epochs-2-seed0-transfer-grid.png"
    assert published.read_bytes() == b"grid"
    markdown = (board / "toy.md").read_text()
    assert "![gen transfer grid](figures/toy-gen-quick-epochs-2-seed0-transfer-grid.png)" in markdown
    assert "no decoder: no transfer grid" in markdown and "| no decoder" in markdown


def test_budgets_say_what_the_networks_saw_on_boards_with_volume_runs() -> None:
    plain = leaderboard.render_markdown("toy", [_row("a", 0, 0.8, 0.3)], {}, "")
    assert "networks; input" not in plain  # image boards keep their columns
    new = _row("b", 0, 0.7, 0.2)
    new["budget"].update(networks="small", lowpass_sigma=1.5, bin=2)
    raw = _row("c", 0, 0.6, 0.2, preset="paper")
    raw["budget"].update(networks="paper", lowpass_sigma=0.0, bin=1)
    own = _row("d", 0, 0.6, 0.2)
    own["budget"].update(lowpass_sigma=1.5, bin=2)
    text = leaderboard.render_markdown("toy", [_row("a", 0, 0.8, 0.3), new, raw, own], {}, "")
    budgets = text.split("## Budgets")[1]
    assert "networks; input" in budgets
    assert "small; low-pass 1.5 voxels, bin 2" in next(line for line in budgets.splitlines() if line.startswith("| b "))
    assert "paper; raw" in next(line for line in budgets.splitlines() if line.startswith("| c "))
    assert "own; low-pass 1.5 voxels, bin 2" in next(line for line in budgets.splitlines() if line.startswith("| d "))
    assert "raw (not recorded)" in next(line for line in budgets.splitlines() if line.startswith("| a "))


def test_every_re_render_from_the_command_line_gets_the_papers_numbers() -> None:
    # `dcbench leaderboard` and `dcbench report --leaderboard-dir` both render through this;
    # a render without the reported rows would drop them from the page.
    from dcbench.cli import reported_numbers

    reported, source = reported_numbers("mnist")
    assert reported["dualcontrast"]["D(c|z)"] == 0.31 and "Table 2" in source
    assert reported_numbers("no-such-board") == ({}, "")
