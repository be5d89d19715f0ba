"""Leaderboards: one JSON-lines file of run rows per dataset, rendered to Markdown.

Appends happen under a cross-process file lock and each line is written with one write()
call on a file opened for appending, so concurrent runs never lose or interleave rows; a failed
or short write (a full disk) is truncated away, so the file never keeps half a line. The
Markdown is re-rendered under the same lock and replaced atomically.

The file is history: a rerun of a (method, preset, seed) cell appends a new row, and the
Markdown counts only the last appended row of each cell.
"""

from __future__ import annotations

import errno
import json
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

from filelock import FileLock

from dcbench import atomic, stats
from dcbench.records import utc_now

ARROWS = {"max": "↑", "min": "↓"}
ROW_KEYS = ("method", "preset", "seed", "metrics")  # what rendering needs of every row


def jsonl_path(directory: Path, dataset: str) -> Path:
    return Path(directory) / f"{dataset}.jsonl"


def markdown_path(directory: Path, dataset: str) -> Path:
    return Path(directory) / f"{dataset}.md"


def _lock(directory: Path, dataset: str) -> FileLock:
    return FileLock(str(jsonl_path(directory, dataset)) + ".lock", timeout=120)


def append_row(directory: Path, dataset: str, row: dict[str, Any],
               reported: dict[str, dict[str, float]] | None = None, reported_source: str = "") -> Path:
    """Append one run's row and re-render the dataset's Markdown; returns the Markdown path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, sort_keys=True, default=atomic.json_default) + "\n").encode("utf-8")
    with _lock(directory, dataset):
        _append_line(jsonl_path(directory, dataset), line)
        return _render_locked(directory, dataset, reported or {}, reported_source)


def _append_line(path: Path, line: bytes) -> None:
    """Append one line with one write(); on any failure leave the file exactly as it was.

    Called under the lock, so the size read first is still the end of the file when we write.
    A write that fails part-way (ENOSPC on a full disk) or writes fewer bytes than asked would
    leave half a line, which would also swallow the next appended row into one invalid line:
    truncate back to the old size and raise instead.
    """
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # an old torn line (a crash, a kill): end it so this row stays whole
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(errno.EIO, f"short write: {written} of {len(line)} bytes")
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, size)
                undone = "the file is unchanged"
            except OSError as truncate_exc:
                undone = f"truncating it back failed ({_reason(truncate_exc)}), so it may end in a partial line"
            raise OSError(exc.errno or errno.EIO,
                          f"could not append the run's row to {path}: {_reason(exc)}; {undone}. "
                          "Free disk space there, or choose another --leaderboard-dir, and run again") from exc
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    # OSError(errno.ENOSPC) alone has no strerror; spell the errno out.
    if exc.strerror:
        return exc.strerror
    return os.strerror(exc.errno) if exc.errno else str(exc)


# kind -> file in the run folder; a seed-0 row links each one its run has, in this order
FIGURE_FILES = {"transfer grid": "figures/transfer_grid.png", "embedding": "figures/content_embedding.png",
                "montage": "figures/volume_montage.png", "cluster averages": "figures/fsc_averages.png",
                "classification report": "classification_report.md", "confusion matrices": "classification_report.png"}
GALLERY_SEED = 0  # the seed whose figures the leaderboard shows
GALLERY_COLUMNS = 3


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._" else "-" for ch in text).strip("-")


def publish_figures(directory: Path, row: dict[str, Any], run_dir: Path) -> None:
    """Copy a seed-0 run's figures and reports (FIGURE_FILES) into `directory`/figures and note
    their paths in the row (relative to the leaderboard), so the Markdown can show every method
    side by side. A Markdown report's links to files published with it are rewritten to their
    published names."""
    if row.get("seed") != GALLERY_SEED:
        return
    prefix = f"{row['dataset']}-{_slug(row['method'])}-{_slug(row['preset'])}-seed{row['seed']}"
    names = {kind: f"{prefix}-{_slug(kind)}{Path(path).suffix}" for kind, path in FIGURE_FILES.items()
             if (Path(run_dir) / path).exists()}
    for kind, name in names.items():
        source = Path(run_dir) / FIGURE_FILES[kind]
        data = source.read_bytes()
        if source.suffix == ".md":  # links relative to the report's folder: point them at the copies
            text = data.decode("utf-8")
            for other, other_name in names.items():
                relative = Path(FIGURE_FILES[other])
                if relative.parent == Path(FIGURE_FILES[kind]).parent:
                    text = text.replace(f"]({relative.name})", f"]({other_name})")
            data = text.encode("utf-8")
        atomic.write_bytes(Path(directory) / "figures" / name, data)
    if names:
        row["figures"] = {kind: f"figures/{name}" for kind, name in names.items()}


def republish(directory: Path, dataset: str, run_dir: Path,
              reported: dict[str, dict[str, float]] | None = None, reported_source: str = "") -> Path | None:
    """Append the latest row of the run `run_dir` again with its figures and reports published
    anew (files added to the run folder after its row was appended, e.g. by `dcbench report`).
    The metrics are the row's own; the older line stays as history. None if the board has no row
    of that run or the run is not the gallery seed."""
    target = Path(run_dir).resolve()
    rows = [r for r in read_rows(directory, dataset) if Path(str(r.get("run", ""))).resolve() == target]
    if not rows or rows[-1].get("seed") != GALLERY_SEED:
        return None
    row = {**rows[-1], "republished_at": utc_now()}
    publish_figures(directory, row, target)
    return append_row(directory, dataset, row, reported, reported_source)


def render(directory: Path, dataset: str, reported: dict[str, dict[str, float]] | None = None,
           reported_source: str = "") -> Path:
    with _lock(directory, dataset):
        return _render_locked(Path(directory), dataset, reported or {}, reported_source)


def read_rows(directory: Path, dataset: str) -> list[dict[str, Any]]:
    """All rows; a line that is not valid JSON (a crash from an old version) or not a run's row
    (edited by hand) is skipped."""
    path = jsonl_path(directory, dataset)
    if not path.exists():
        return []
    rows = []
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and all(key in row for key in ROW_KEYS) and isinstance(row["metrics"], dict):
            rows.append(row)
    return rows


def _render_locked(directory: Path, dataset: str, reported: dict[str, dict[str, float]],
                   reported_source: str) -> Path:
    text = render_markdown(dataset, read_rows(directory, dataset), reported, reported_source)
    target = markdown_path(directory, dataset)
    atomic.write_text(target, text)
    return target


def _cell(text: str) -> str:
    """Escape '|' (as in D(c|c)) so it does not split a Markdown table cell."""
    return text.replace("|", "\\|")


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
    from tabulate import tabulate

    rows = latest_rows(rows)
    directions: dict[str, str] = {}
    for row in rows:
        directions.update(row.get("directions", {}))
    columns = list(directions)
    groups = _group(rows)
    methods = sorted({m for m, _ in groups} | set(reported))
    titles = [f"{_cell(c)} {ARROWS.get(directions.get(c, ''), '')}".strip() for c in columns]
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
        tabulate(table, headers=header, tablefmt="github", disable_numparse=True) if table else "(no runs yet)",
        "",
    ]
    if groups:
        lines += ["## Ranks", "",
                  f"Per column, rank = 1 + the number of rows significantly better: the {stats.LEVEL:.0%} "
                  "percentile-bootstrap interval of the difference of the two rows' means over seeds "
                  f"({stats.RESAMPLES} resamples) lies entirely on the better side of 0. "
                  "\"=\" marks rows that share a rank because no test could separate them; a row with one "
                  "seed cannot be separated from anything, so it ranks 1 (1= beside other rows).",
                  "", tabulate(_ranks(groups, columns, directions), headers=["method", "preset", *titles, "n"],
                               tablefmt="github", disable_numparse=True), ""]
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
        lines += ["## Budgets", "", tabulate(budgets, headers=headers, tablefmt="github", disable_numparse=True), ""]
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
    links = [f"[{kind}]({figures[kind]})" for kind in FIGURE_FILES if kind in figures]
    if members[-1].get("generative") is False:
        links.insert(0, "no decoder")
    return " · ".join(links)


def _gallery(groups: OrderedDict[tuple[str, str], list[dict[str, Any]]]) -> str:
    """A Markdown table of the transfer grids, GALLERY_COLUMNS per line."""
    cells = []
    for (method, preset), members in groups.items():
        path = _latest_figures(members).get("transfer grid")
        if path:
            cells.append(f"**{method}** ({_cell(preset)})<br>![{method} transfer grid]({path})")
        elif members[-1].get("generative") is False:
            cells.append(f"**{method}** ({_cell(preset)})<br>no decoder: no transfer grid")
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
        times = sorted(m.get("train_seconds", float("nan")) for m in members)
        median = times[len(times) // 2]
        out.append([method, preset, budget.get("epochs", "?"), budget.get("train_size", "?"),
                    budget.get("batch_size", "?"), budget.get("lr", "?"),
                    "?" if math.isnan(median) else f"{median:.0f}", _network_input(budget)])
    return out


NOT_RECORDED = "raw (not recorded)"
CALIBRATION_NOTE = ("Rows with preset *reference* are calibration, computed from this dataset by `dcbench calibrate`: "
                    "*labels (ceiling)* scores the true labels as codes, *shuffled labels (floor)* the same labels "
                    "shuffled over the particles. They are ranked like methods: read every result between them. ")


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
