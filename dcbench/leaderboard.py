"""Leaderboards: one JSON-lines file of run rows per dataset, rendered to Markdown.

Appends happen under a cross-process file lock and each line is written with one write()
call on a file opened for appending, so concurrent runs never lose or interleave rows; a failed
or short write (a full disk) is truncated away, so the file never keeps half a line.

Publication (see `append_row`): the jsonl is the board; the Markdown page is a view derived
from it. A run's row goes in at most once per run folder, and in the same locked step as its
record is marked finished (`commit`): if finishing the record fails, the line is taken back, so
a failed run adds no row. Re-rendering the page comes after, and a page that cannot be written
is a warning, not a failed run: the next render (any later run, `dcbench leaderboard`) brings it
up to date. Rows are checked when read (dcbench.board_rows): a bad line is skipped with a
warning naming the file and line, and the rest of the board still renders.

The file is history: a rerun of a (method, preset, seed) cell appends a new row, and the
Markdown counts only the last appended row of each cell.
"""

from __future__ import annotations

import errno
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from dcbench import atomic, board_rows
from dcbench.board_markdown import latest_rows, render_markdown
from dcbench.errors import DcbenchError, DcbenchWarning
from dcbench.records import figure_files, utc_now


def jsonl_path(directory: Path, dataset: str) -> Path:
    return Path(directory) / f"{dataset}.jsonl"


def markdown_path(directory: Path, dataset: str) -> Path:
    return Path(directory) / f"{dataset}.md"


def _lock(directory: Path, dataset: str) -> FileLock:
    return FileLock(str(jsonl_path(directory, dataset)) + ".lock", timeout=120)


def append_row(directory: Path, dataset: str, row: dict[str, Any],
               reported: dict[str, dict[str, float]] | None = None, reported_source: str = "", *,
               commit: Callable[[], None] | None = None, replace: bool = False) -> Path | None:
    """Append one run's row, then re-render the dataset's Markdown; returns the Markdown path, or
    None if the page could not be re-rendered (a warning says why; the row is safe in the jsonl).

    At most one row per run folder: a row whose `run` already has one (a run killed after its
    row went in, then resumed) is not written again, unless `replace` (republish: the newer line
    then replaces the older on the page). `commit` runs under the lock right after the line is on
    disk, with Ctrl-C and SIGTERM held back until it returns (the runner marks its record finished
    there); if it raises, the line is taken back and the error raised."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = jsonl_path(directory, dataset)
    line = (json.dumps(row, sort_keys=True, default=atomic.json_default) + "\n").encode("utf-8")
    with _lock(directory, dataset):
        with atomic.signals_deferred():
            size = None
            if replace or not _has_run_row(path, row.get("run")):
                size = _append_line(path, line)
            if commit is not None:
                try:
                    commit()
                except BaseException:
                    if size is not None:
                        _take_back(path, size)
                    raise
        return _render_or_warn(directory, dataset, reported or {}, reported_source)


def has_run_row(directory: Path, dataset: str, run_dir: Path) -> bool:
    """Whether the board already has a row of the run folder `run_dir`."""
    return _has_run_row(jsonl_path(directory, dataset), run_dir)


def _has_run_row(path: Path, run: Any) -> bool:
    if not run:
        return False
    target = Path(str(run)).resolve()
    return any(r.get("run") and Path(r["run"]).resolve() == target for r in board_rows.read_board(path)[0])


def _take_back(path: Path, size: int) -> None:
    """Cut the line just appended (we still hold the lock, so it is the last one)."""
    try:
        os.truncate(path, size)
    except OSError as exc:
        warnings.warn(DcbenchWarning(f"could not take back the row just appended to {path} ({_reason(exc)}); "
                                     "delete its last line by hand"), stacklevel=3)


def _append_line(path: Path, line: bytes) -> int:
    """Append one line with one write(); on any failure leave the file exactly as it was.
    Returns the file's size before, to take the line back with.

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
        return size
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    # OSError(errno.ENOSPC) alone has no strerror; spell the errno out.
    if exc.strerror:
        return exc.strerror
    return os.strerror(exc.errno) if exc.errno else str(exc)


GALLERY_SEED = 0  # the seed whose figures the leaderboard shows


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._" else "-" for ch in text).strip("-")


def publish_figures(directory: Path, row: dict[str, Any], run_dir: Path) -> None:
    """Copy a seed-0 run's figures and reports, those its figures.json lists (records.figure_files;
    a run from before that list: the files it has of those runs used to make), into
    `directory`/figures and note their paths in the row (relative to the leaderboard), so the
    Markdown can show every method side by side. A Markdown report's links to files published
    with it are rewritten to their published names."""
    if row.get("seed") != GALLERY_SEED:
        return
    prefix = f"{row['dataset']}-{_slug(row['method'])}-{_slug(row['preset'])}-seed{row['seed']}"
    files = {kind: path for kind, path in figure_files(run_dir).items()  # files inside the run folder only
             if not Path(path).is_absolute() and ".." not in Path(path).parts and (Path(run_dir) / path).is_file()}
    names = {kind: f"{prefix}-{_slug(kind)}{Path(path).suffix}" for kind, path in files.items()}
    for kind, name in names.items():
        source = Path(run_dir) / files[kind]
        data = source.read_bytes()
        if source.suffix == ".md":  # links relative to the report's folder: point them at the copies
            text = data.decode("utf-8")
            for other, other_name in names.items():
                relative = Path(files[other])
                if relative.parent == Path(files[kind]).parent:
                    text = text.replace(f"]({relative.name})", f"]({other_name})")
            data = text.encode("utf-8")
        atomic.write_bytes(Path(directory) / "figures" / name, data)
    if names:
        row["figures"] = {kind: f"figures/{name}" for kind, name in names.items()}


def republish(directory: Path, dataset: str, run_dir: Path,
              reported: dict[str, dict[str, float]] | None = None, reported_source: str = "") -> Path | None:
    """Append the latest row of the run `run_dir` again with its figures and reports published
    anew (files added to the run folder after its row was appended, e.g. by `dcbench report`).
    The metrics are the row's own; the older line stays as history. None if the board shows no
    row of that run (none, or a rerun of its cell replaced it) or the run is not the gallery seed."""
    latest = latest_row_of_run(directory, dataset, run_dir)
    if latest is None or latest.get("seed") != GALLERY_SEED:
        return None
    row = {**latest, "republished_at": utc_now()}
    publish_figures(directory, row, Path(run_dir).resolve())
    return append_row(directory, dataset, row, reported, reported_source, replace=True)


def latest_row_of_run(directory: Path, dataset: str, run_dir: Path) -> dict[str, Any] | None:
    """The row the board shows for the run's cell if it is this run's, else None: appending an
    older run's row again would push a newer rerun of the same cell off the page."""
    if not jsonl_path(directory, dataset).is_file():
        return None
    target = Path(run_dir).resolve()
    for row in latest_rows(read_rows(directory, dataset)):
        if row.get("run") and Path(str(row["run"])).resolve() == target:
            return row
    return None


def render(directory: Path, dataset: str, reported: dict[str, dict[str, float]] | None = None,
           reported_source: str = "") -> Path:
    """Re-render the dataset's Markdown from its jsonl; a DcbenchError if the page cannot be written."""
    with _lock(directory, dataset):
        return _render_locked(Path(directory), dataset, reported or {}, reported_source)


def try_render(directory: Path, dataset: str, reported: dict[str, dict[str, float]] | None = None,
               reported_source: str = "") -> Path | None:
    """render(), with a warning instead of an error: for callers whose own work is already done."""
    with _lock(directory, dataset):
        return _render_or_warn(Path(directory), dataset, reported or {}, reported_source)


def read_rows(directory: Path, dataset: str) -> list[dict[str, Any]]:
    """The board's usable rows in file order; each bad line (not JSON, torn by a crash, edited by
    hand into something rendering cannot use) is skipped with a warning naming file and line."""
    rows, bad = board_rows.read_board(jsonl_path(directory, dataset))
    for line in bad:
        warnings.warn(DcbenchWarning(str(line)), stacklevel=2)
    return rows


def _render_locked(directory: Path, dataset: str, reported: dict[str, dict[str, float]],
                   reported_source: str) -> Path:
    text = render_markdown(dataset, read_rows(directory, dataset), reported, reported_source)
    target = markdown_path(directory, dataset)
    try:
        atomic.write_text(target, text)
    except OSError as exc:
        raise DcbenchError(f"cannot write {target} ({_reason(exc)}); its rows are safe in "
                           f"{jsonl_path(directory, dataset)}: make {target} writable (a folder of that name, a full "
                           f"disk?), then run `dcbench leaderboard {dataset} --leaderboard-dir {directory}`") from exc
    return target


def _render_or_warn(directory: Path, dataset: str, reported: dict[str, dict[str, float]],
                    reported_source: str) -> Path | None:
    # The rows are committed by now: whatever goes wrong with the page must not undo them.
    try:
        return _render_locked(directory, dataset, reported, reported_source)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, DcbenchError) else f"{type(exc).__name__}: {exc}"
        warnings.warn(DcbenchWarning(f"the leaderboard page was not updated: {reason}"), stacklevel=3)
        return None


__all__ = ["GALLERY_SEED", "append_row", "has_run_row", "jsonl_path", "latest_rows",
           "latest_row_of_run", "markdown_path", "publish_figures", "read_rows", "render", "render_markdown",
           "republish", "try_render"]
