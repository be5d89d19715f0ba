"""A leaderboard's Markdown page, rendered from its rows (dcbench.leaderboard reads and writes them).

Every table cell goes through `_cell`, so text from a row (a method name, a preset label with
a `--set data.path=x|y`, a figure path) can never add or end a column.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from dcbench import board_rows, stats

ARROWS = {"max": "↑", "min": "↓"}
# The order in which a seed-0 row links the figures and reports its run listed (a row's "figures",
# kind -> published file; see leaderboard.publish_figures); kinds not named here come after, in
# the row's order. The exports (3D runs): the test particles' classes as STAR, the class averages
# as one MRC stack.
FIGURE_ORDER = ("transfer grid", "embedding", "montage", "cluster averages", "classification report",
                "confusion matrices", "classes STAR", "class averages MRC")
GALLERY_COLUMNS = 3


def _cell(value: Any) -> str:
    """A table cell's text: '|' (as in D(c|c), or a `--set data.path=x|y` in a preset label)
    escaped and line breaks made spaces, so no cell can split its row or end it early."""
    text = str(value).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return text.replace("|", "\\|")


def _table(rows: list[list[Any]], headers: list[str]) -> str:
    """A GitHub Markdown table with every cell escaped (_cell)."""
    from tabulate import tabulate

    return tabulate([[_cell(v) for v in row] for row in rows], headers=[_cell(h) for h in headers],
                    tablefmt="github", disable_numparse=True)


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _format(values: list[float]) -> str:
    """'mean ± std<br>[low, high]' (the bootstrap CI of the mean), just the value for one run,
    'n/a' for none."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    mean, std = _mean_std(values)
    if math.isnan(std):
        return f"{mean:.3f}"
    interval = stats.bootstrap_mean_ci(values)
    ci = "" if interval is None else f"<br>[{interval[0]:.3f}, {interval[1]:.3f}]"
    return f"{mean:.3f} ± {std:.3f}{ci}"


def _values(members: list[dict[str, Any]], column: str) -> list[float]:
    return [m["metrics"][column] for m in members if m["metrics"].get(column) is not None]


def latest_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, preset, seed): the last appended, so a rerun replaces the row it
    reruns on the page while the older line stays in the jsonl as history. File order is kept
    (a replaced row moves to its rerun's place, so 'latest' stays last)."""
    latest: dict[tuple[str, str, Any], dict[str, Any]] = {}
    for row in rows:
        key = (row["method"], row["preset"], row.get("seed"))
        latest.pop(key, None)
        latest[key] = row
    return list(latest.values())


def render_markdown(dataset: str, rows: list[dict[str, Any]], reported: dict[str, dict[str, float]],
                    reported_source: str = "") -> str:
    """The leaderboard page: one line per (method, preset) with mean ± std, the bootstrap CI of the
    mean and n over seeds, the paper's reported numbers as separate rows labelled 'reported', and
    the ranks of the measured rows with statistical ties marked."""
    rows = latest_rows(rows)
    directions: dict[str, str] = {}
    for row in rows:
        directions.update(row.get("directions", {}))
    columns = list(directions)
    groups = _group(rows)
    methods = sorted({m for m, _ in groups} | set(reported))
    titles = [f"{c} {ARROWS.get(directions.get(c, ''), '')}".strip() for c in columns]
    header = ["method", "preset", *titles, "n", "seeds", "figures (seed 0)"]
    table = []
    for method in methods:
        for (name, preset), members in groups.items():
            if name != method:
                continue
            cells = [_format(_values(members, c)) for c in columns]
            seeds = ",".join(str(s) for s in sorted({m["seed"] for m in members}))
            table.append([method, preset, *cells, len(members), seeds, _figure_links(members)])
        if method in reported:
            cells = [f"{reported[method][c]:.2f}" if c in reported[method] else "" for c in columns]
            table.append([method, "reported", *cells, "", "", ""])
    lines = [
        f"# Leaderboard: {dataset}",
        "",
        "Rendered by dcbench from `" + f"{dataset}.jsonl" + "`; do not edit by hand. Each measured cell is "
        "the mean ± sample std over seeds of real runs, then in brackets the "
        f"{stats.LEVEL:.0%} confidence interval of the mean (percentile bootstrap over the seeds, "
        f"{stats.RESAMPLES} resamples, drawn deterministically so a re-render gives the same numbers); "
        "a row with one run shows just its value. "
        "n counts the runs; ↑ higher is better, ↓ lower is better.",
        "If a (method, preset, seed) was run more than once, only its last appended row counts here; "
        "the older lines stay in the jsonl as history.",
        "The preset column names the training budget (preset plus any overrides; see Budgets below). "
        + CALIBRATION_NOTE * any(row.get("calibration") for row in rows) +
        "Rows labelled *reported* are numbers published in the paper, not reruns, and are not ranked"
        + (f" ({reported_source})." if reported_source else "."),
        "",
        _table(table, header) if table else "(no runs yet)",
        "",
    ]
    if groups:
        lines += ["## Ranks", "",
                  f"Per column, rank = 1 + the number of rows significantly better: the {stats.LEVEL:.0%} "
                  "percentile-bootstrap interval of the difference of the two rows' means over seeds "
                  f"({stats.RESAMPLES} resamples) lies entirely on the better side of 0. "
                  "\"=\" marks rows that share a rank because no test could separate them; a row with one "
                  "seed cannot be separated from anything, so it ranks 1 (1= beside other rows).",
                  "", _table(_ranks(groups, columns, directions), ["method", "preset", *titles, "n"]), ""]
    gallery = _gallery(groups)
    if gallery:
        lines += ["## Transfer grids", "",
                  "Seed 0 of each row. Cell (row i, column j) decodes the content code of the top image j "
                  "with the transformation code of the left image i: content should stay constant down a "
                  "column and the transformation along a row.", "", gallery, ""]
    budgets = _budgets(groups)
    if budgets:
        headers = ["method", "preset", "epochs", "train images", "batch", "lr", "median train time (s)"]
        if any(row[-1] != NOT_RECORDED for row in budgets):  # boards with volume runs that record it
            headers.append("networks; input")
        else:
            budgets = [row[:-1] for row in budgets]
        lines += ["## Budgets", "", _table(budgets, headers), ""]
    return "\n".join(lines)


def _ranks(groups: OrderedDict[tuple[str, str], list[dict[str, Any]]], columns: list[str],
           directions: dict[str, str]) -> list[list[Any]]:
    """One line per measured (method, preset): its rank in each column, '=' for a tie."""
    keys = list(groups)
    by_column = []
    for column in columns:
        direction = directions.get(column)
        values = [_values(groups[key], column) for key in keys]
        if direction in stats.DIRECTIONS:
            by_column.append([stats.format_rank(r) for r in stats.tied_ranks(values, direction)])
        else:  # no direction recorded: nothing to rank by
            by_column.append(["n/a"] * len(keys))
    return [[method, preset, *(ranks[i] for ranks in by_column), len(groups[(method, preset)])]
            for i, (method, preset) in enumerate(keys)]


def _latest_figures(members: list[dict[str, Any]]) -> dict[str, str]:
    with_figures = [m for m in members if m.get("figures")]
    return with_figures[-1]["figures"] if with_figures else {}


def _figure_links(members: list[dict[str, Any]]) -> str:
    figures = _latest_figures(members)
    kinds = [kind for kind in FIGURE_ORDER if kind in figures] + [kind for kind in figures if kind not in FIGURE_ORDER]
    links = [f"[{kind}]({figures[kind]})" for kind in kinds]
    if members[-1].get("generative") is False:
        links.insert(0, "no decoder")
    return " · ".join(links)


def _gallery(groups: OrderedDict[tuple[str, str], list[dict[str, Any]]]) -> str:
    """A Markdown table of the transfer grids, GALLERY_COLUMNS per line."""
    cells = []
    for (method, preset), members in groups.items():
        path = _latest_figures(members).get("transfer grid")
        if path:
            cells.append(_cell(f"**{method}** ({preset})<br>![{method} transfer grid]({path})"))
        elif members[-1].get("generative") is False:
            cells.append(_cell(f"**{method}** ({preset})<br>no decoder: no transfer grid"))
    if not cells:
        return ""
    cells += [""] * (-len(cells) % GALLERY_COLUMNS)
    rows = [cells[i:i + GALLERY_COLUMNS] for i in range(0, len(cells), GALLERY_COLUMNS)]
    lines = ["| " + " | ".join([" "] * GALLERY_COLUMNS) + " |", "|" + "---|" * GALLERY_COLUMNS]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _group(rows: list[dict[str, Any]]) -> OrderedDict[tuple[str, str], list[dict[str, Any]]]:
    """Rows by (method, preset), in sorted order: one leaderboard line each."""
    groups: OrderedDict[tuple[str, str], list[dict[str, Any]]] = OrderedDict()
    for row in sorted(rows, key=lambda r: (r["method"], r["preset"])):
        groups.setdefault((row["method"], row["preset"]), []).append(row)
    return groups


def _budgets(groups: OrderedDict[tuple[str, str], list[dict[str, Any]]]) -> list[list[Any]]:
    out = []
    for (method, preset), members in groups.items():
        if members[-1].get("calibration"):  # `dcbench calibrate` rows trained nothing
            continue
        budget = members[-1].get("budget", {})
        times = sorted(t for m in members if board_rows.is_number(t := m.get("train_seconds")) and not math.isnan(t))
        settings = [_setting(budget, key) for key in ("epochs", "train_size", "batch_size", "lr")]
        out.append([method, preset, *settings,
                    f"{times[len(times) // 2]:.0f}" if times else "?", _network_input(budget)])
    return out


NOT_RECORDED = "raw (not recorded)"
CALIBRATION_NOTE = ("Rows with preset *reference* are calibration, computed from this dataset by `dcbench calibrate`: "
                    "*labels (ceiling)* scores the true labels as codes, *shuffled labels (floor)* the same labels "
                    "shuffled over the particles. They are ranked like methods: read every result between them. ")


def _setting(budget: dict[str, Any], key: str) -> Any:
    """A budget cell: '?' when unrecorded, 'n/a' for a setting the method does not have (None:
    a training-free method has no batch size or learning rate)."""
    value = budget.get(key, "?")
    return "n/a" if value is None else value


def _network_input(budget: dict[str, Any]) -> str:
    """'small; low-pass 1.5 voxels, bin 2' for rows that record what the networks saw. Rows from
    before dcbench recorded it come from methods that always saw the raw inputs (the column is
    shown only on boards with a recorded row, i.e. volume boards)."""
    if "bin" not in budget:
        return NOT_RECORDED
    sigma, factor = float(budget.get("lowpass_sigma", 0)), int(budget["bin"])
    seen = [f"low-pass {sigma:g} voxels"] if sigma > 0 else []
    seen += [f"bin {factor}"] if factor > 1 else []
    networks = budget.get("networks", "own")  # methods with one set of networks record none
    return f"{networks}; {', '.join(seen) or 'raw'}"
