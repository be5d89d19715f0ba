"""What a leaderboard row must hold, and reading a board's jsonl file line by line.

Rows are checked when they are read, not only when they are written: a line edited by hand,
written by another version or torn by a crash must cost that one line, never the whole board
(every later run appends to the same file, so one bad line would otherwise break them all).
The checks cover every key that rendering, `dcbench reproduce` and `republish` read; other
keys are kept as they are, so that rows of newer versions still show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DIRECTIONS = ("max", "min")
# Budget entries shown in the Budgets table; None: the method has no such setting.
BUDGET_NUMBERS = ("epochs", "train_size", "batch_size", "lr")
OPTIONAL_TEXT = ("dataset", "run", "finished_at", "republished_at", "calibration", "dcbench", "git_commit")


@dataclass(frozen=True)
class BadLine:
    """A line of a board that is not a usable row, and why (1-based line number)."""

    path: Path
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: skipped a line that is not a usable row ({self.problem}); fix or delete it"


def read_board(path: Path) -> tuple[list[dict[str, Any]], list[BadLine]]:
    """The usable rows of a jsonl board in file order, and its bad lines; blank lines are ignored.
    Split on bytes, so that a line torn inside a multi-byte character costs only that line."""
    path = Path(path)
    if not path.exists():
        return [], []
    rows: list[dict[str, Any]] = []
    bad: list[BadLine] = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            bad.append(BadLine(path, number, "not UTF-8 text"))
            continue
        except (json.JSONDecodeError, RecursionError) as exc:
            bad.append(BadLine(path, number, f"not valid JSON: {getattr(exc, 'msg', type(exc).__name__)}"))
            continue
        problem = row_problem(row)
        if problem is None:
            rows.append(row)
        else:
            bad.append(BadLine(path, number, problem))
    return rows, bad


def row_problem(row: Any) -> str | None:
    """None for a usable run row, else what is wrong with it, as a short phrase."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    checks = (_names, _seed, _metrics, _directions, _budget, _optional, _figures, _spec)
    for check in checks:
        problem = check(row)
        if problem:
            return problem
    return None


def is_number(value: Any) -> bool:
    """An int or float; JSON's true/false load as bools, which Python counts as ints."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:39] + "…"


def _names(row: dict[str, Any]) -> str | None:
    for key in ("method", "preset"):
        if key not in row:
            return f"no '{key}'"
        if not isinstance(row[key], str) or not row[key].strip():  # `reproduce` splits the preset label
            return f"'{key}' is {_shown(row[key])}, not a name"
    return None


def _seed(row: dict[str, Any]) -> str | None:
    if "seed" not in row:
        return "no 'seed'"
    if not isinstance(row["seed"], int) or isinstance(row["seed"], bool):
        return f"'seed' is {_shown(row['seed'])}, not a whole number"
    return None


def _metrics(row: dict[str, Any]) -> str | None:
    metrics = row.get("metrics")
    if not isinstance(metrics, dict):
        return "no 'metrics' object" if "metrics" not in row else f"'metrics' is {_shown(metrics)}, not an object"
    for column, value in metrics.items():
        if value is not None and not is_number(value):  # null / NaN: not applicable
            return f"metric '{column}' is {_shown(value)}, not a number"
    return None


def _directions(row: dict[str, Any]) -> str | None:
    directions = row.get("directions", {})
    if not isinstance(directions, dict):
        return f"'directions' is {_shown(directions)}, not an object"
    for column, direction in directions.items():
        if direction not in DIRECTIONS:
            return f"direction of '{column}' is {_shown(direction)}, not \"max\" or \"min\""
    return None


def _budget(row: dict[str, Any]) -> str | None:
    budget = row.get("budget", {})
    if not isinstance(budget, dict):
        return f"'budget' is {_shown(budget)}, not an object"
    for key in BUDGET_NUMBERS:
        if budget.get(key) is not None and not is_number(budget[key]):
            return f"budget '{key}' is {_shown(budget[key])}, not a number"
    if "lowpass_sigma" in budget and not is_number(budget["lowpass_sigma"]):
        return f"budget 'lowpass_sigma' is {_shown(budget['lowpass_sigma'])}, not a number"
    if "bin" in budget and (not isinstance(budget["bin"], int) or isinstance(budget["bin"], bool)):
        return f"budget 'bin' is {_shown(budget['bin'])}, not a whole number"
    if "networks" in budget and not isinstance(budget["networks"], str):
        return f"budget 'networks' is {_shown(budget['networks'])}, not text"
    return None


def _optional(row: dict[str, Any]) -> str | None:
    if row.get("train_seconds") is not None and not is_number(row["train_seconds"]):
        return f"'train_seconds' is {_shown(row['train_seconds'])}, not a number"
    if row.get("generative") is not None and not isinstance(row["generative"], bool):
        return f"'generative' is {_shown(row['generative'])}, not true or false"
    for key in OPTIONAL_TEXT:
        if row.get(key) is not None and not isinstance(row[key], str):
            return f"'{key}' is {_shown(row[key])}, not text"
    return None


def _figures(row: dict[str, Any]) -> str | None:
    figures = row.get("figures", {})
    if not isinstance(figures, dict) or not all(isinstance(v, str) for v in figures.values()):
        return f"'figures' is {_shown(figures)}, not an object of file paths"
    return None


def _spec(row: dict[str, Any]) -> str | None:
    """What `dcbench reproduce` reads back to rerun the row (rows without one use the label)."""
    spec = row.get("spec")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        return f"'spec' is {_shown(spec)}, not an object"
    if not isinstance(spec.get("preset"), str):
        return f"spec 'preset' is {_shown(spec.get('preset'))}, not a name"
    if "epochs" not in spec:
        return "spec has no 'epochs'"
    epochs = spec["epochs"]
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool)):
        return f"spec 'epochs' is {_shown(epochs)}, not a whole number or null"
    overrides = spec.get("overrides")
    if not isinstance(overrides, dict) or not all(isinstance(v, str) for v in overrides.values()):
        return f"spec 'overrides' is {_shown(overrides)}, not an object of settings"
    metrics = spec.get("metrics", [])
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        return f"spec 'metrics' is {_shown(metrics)}, not a list of names"
    return None
