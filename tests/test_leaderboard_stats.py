"""Leaderboard statistics: bootstrap confidence intervals, significance, tied ranks, and how the
page shows them (including the dedupe of rerun rows)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dcbench import leaderboard, stats

LOW = [0.50, 0.52, 0.49, 0.51, 0.50]
HIGH = [0.80, 0.82, 0.79, 0.81, 0.80]


def test_identical_values_give_a_zero_width_interval() -> None:
    assert stats.bootstrap_mean_ci([0.5] * 5) == (0.5, 0.5)


def test_the_interval_is_of_the_mean_not_of_the_values() -> None:
    values = [i / 20 for i in range(21)]  # spread over [0, 1]: mean 0.5, standard error 0.066
    low, high = stats.bootstrap_mean_ci(values)
    assert low == pytest.approx(0.5 - 1.96 * 0.066, abs=0.015)  # about [0.37, 0.63], not about [0.03, 0.97]
    assert high == pytest.approx(0.5 + 1.96 * 0.066, abs=0.015)


def test_the_interval_contains_the_mean_is_deterministic_and_narrows_at_lower_levels() -> None:
    values = [0.61, 0.55, 0.72, 0.58, 0.66, 0.49]
    mean = sum(values) / len(values)
    low, high = stats.bootstrap_mean_ci(values)
    assert min(values) <= low < mean < high <= max(values)
    assert stats.bootstrap_mean_ci(values) == (low, high)  # same Markdown on every render
    low80, high80 = stats.bootstrap_mean_ci(values, level=0.8)
    assert low < low80 < high80 < high


def test_no_interval_without_two_values() -> None:
    assert stats.bootstrap_mean_ci([0.7]) is None
    assert stats.bootstrap_mean_ci([]) is None
    assert stats.bootstrap_mean_ci([0.7, float("nan"), None]) is None  # NaN / None: not measured


def test_significance_follows_the_direction() -> None:
    assert stats.significantly_better(HIGH, LOW, "max")
    assert not stats.significantly_better(LOW, HIGH, "max")
    assert stats.significantly_better(LOW, HIGH, "min")
    assert not stats.significantly_better(HIGH, LOW, "min")
    assert not stats.significantly_better(LOW, [v + 0.005 for v in LOW], "min")  # overlapping


def test_a_single_run_is_never_significantly_different() -> None:
    assert not stats.significantly_better([0.99], LOW, "max")
    assert not stats.significantly_better(HIGH, [0.01], "max")


def test_an_unknown_direction_is_refused() -> None:
    with pytest.raises(ValueError, match="direction"):
        stats.tied_ranks([LOW, HIGH], "up")


def test_clearly_separated_rows_rank_one_and_two_without_ties() -> None:
    assert stats.tied_ranks([LOW, HIGH], "max") == [(2, False), (1, False)]
    assert stats.tied_ranks([LOW, HIGH], "min") == [(1, False), (2, False)]


def test_overlapping_rows_share_the_first_rank() -> None:
    other = [0.51, 0.49, 0.52, 0.50, 0.50]
    assert stats.tied_ranks([LOW, other], "max") == [(1, True), (1, True)]


def test_single_seed_rows_tie_with_everything() -> None:
    assert stats.tied_ranks([[0.1], [0.9]], "max") == [(1, True), (1, True)]
    # A single run beside two separated rows: the best and the single run share rank 1.
    assert stats.tied_ranks([HIGH, LOW, [0.0]], "max") == [(1, True), (2, False), (1, True)]


def test_ranks_count_the_rows_that_are_better() -> None:
    middle = [0.65, 0.66, 0.64, 0.65, 0.66]
    close_to_high = [0.80, 0.81, 0.80, 0.82, 0.79]
    ranks = stats.tied_ranks([LOW, middle, HIGH, close_to_high], "max")
    assert ranks == [(4, False), (3, False), (1, True), (1, True)]
    assert [stats.format_rank(r) for r in ranks] == ["4", "3", "1=", "1="]


def test_rows_without_values_get_no_rank() -> None:
    ranks = stats.tied_ranks([LOW, [], [math.nan, math.nan], HIGH], "max")
    assert ranks == [(2, False), None, None, (1, False)]
    assert stats.format_rank(None) == "n/a"


def _row(method: str, seed: int, dcc: float, dcz: float | None = None, preset: str = "quick") -> dict:
    metrics = {"D(c|c)": dcc} if dcz is None else {"D(c|c)": dcc, "D(c|z)": dcz}
    return {"method": method, "dataset": "toy", "preset": preset, "seed": seed, "metrics": metrics,
            "directions": {"D(c|c)": "max", "D(c|z)": "min"}}


def _line(text: str, start: str, section: str) -> str:
    body = text.split(f"## {section}")[1] if section != "main" else text.split("## Ranks")[0]
    return next(line for line in body.splitlines() if line.startswith(start))


def test_cells_show_mean_std_and_the_bootstrap_interval() -> None:
    rows = [_row("good", s, v, 1 - v) for s, v in enumerate(HIGH)] + [_row("one", 0, 0.9, 0.2)]
    text = leaderboard.render_markdown("toy", rows, {})
    low, high = stats.bootstrap_mean_ci(HIGH)
    good = _line(text, "| good ", "main")
    assert f"0.804 ± 0.011<br>[{low:.3f}, {high:.3f}]" in good
    one = _line(text, "| one ", "main")
    assert "| 0.900 " in one and "<br>" not in one  # one run: just the value
    assert "95% confidence interval of the mean" in text and "2000 resamples" in text


def test_the_ranks_section_ranks_measured_rows_per_column_and_never_reported_ones() -> None:
    rows = ([_row("high", s, v, v) for s, v in enumerate(HIGH)] + [_row("low", s, v, v) for s, v in enumerate(LOW)]
            + [_row("single", 0, 0.3)])
    text = leaderboard.render_markdown("toy", rows, {"high": {"D(c|c)": 0.9}}, "A paper")
    assert text.index("## Ranks") < text.index("## Budgets")
    assert "1 + the number of rows significantly better" in text and "one seed" in text
    high = [c.strip() for c in _line(text, "| high ", "Ranks").split("|")[1:-1]]
    low = [c.strip() for c in _line(text, "| low ", "Ranks").split("|")[1:-1]]
    single = [c.strip() for c in _line(text, "| single ", "Ranks").split("|")[1:-1]]
    # columns: method, preset, D(c|c) max, D(c|z) min, n
    assert high == ["high", "quick", "1=", "2", "5"]
    assert low == ["low", "quick", "2", "1", "5"]
    assert single == ["single", "quick", "1=", "n/a", "1"]
    main = text.split("## Ranks")[0].splitlines()
    assert any(line.startswith("| high ") and "| reported" in line and "0.90" in line for line in main)  # shown
    ranks_section = text.split("## Ranks")[1].split("## Budgets")[0]
    assert "| reported" not in ranks_section  # but never ranked


def test_a_rerun_replaces_its_row_on_the_page_but_stays_in_the_file(tmp_path: Path) -> None:
    for row in (_row("a", 0, 0.50), _row("a", 1, 0.60), _row("a", 0, 0.90)):  # the last one reruns seed 0
        leaderboard.append_row(tmp_path, "toy", row)
    assert len((tmp_path / "toy.jsonl").read_text().splitlines()) == 3  # history kept
    text = (tmp_path / "toy.md").read_text()
    main = _line(text, "| a ", "main")
    assert "0.750 ± 0.212" in main and "| 2 " in main and "| 0,1 " in main
    assert "only its last appended row counts" in text


def test_latest_rows_keeps_the_last_of_each_cell_in_file_order() -> None:
    rows = [_row("a", 0, 0.1), _row("b", 0, 0.2), _row("a", 0, 0.3), _row("a", 0, 0.4, preset="paper")]
    latest = leaderboard.latest_rows(rows)
    assert [(r["method"], r["preset"], r["metrics"]["D(c|c)"]) for r in latest] == [
        ("b", "quick", 0.2), ("a", "quick", 0.3), ("a", "paper", 0.4)]
    assert json.dumps(rows[0]) == json.dumps(_row("a", 0, 0.1))  # the input is not modified
