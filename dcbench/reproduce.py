"""Rerun the rows of a leaderboard with the settings they were recorded with.

Each row carries its `spec` (preset, epochs, `--set` overrides, metric names). Rows written
before specs were recorded are read back from their preset label, which the runner builds
deterministically from the same settings ("quick data.train_size=20000 epochs=10").

A leaderboard may come from someone else, and a row's settings can name a program to run (the
hydra method's `exe`): every row is planned before any runs, the programs outside dcbench that
the runs would start are shown, and they run only with --allow-external.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcbench import leaderboard
from dcbench.config import PRESETS, RunSpec
from dcbench.errors import DcbenchError
from dcbench.registry import Registry


@dataclass(frozen=True)
class Cell:
    """One row to rerun: its settings as a RunSpec (RunSpec.settings() shape; where to run comes
    later, in run_spec) and its preset label as the board shows it."""

    spec: RunSpec
    label: str

    @property
    def method(self) -> str:
        return self.spec.method

    @property
    def seed(self) -> int:
        return self.spec.seed


def spec_from_label(label: str) -> dict[str, Any]:
    """Invert config.preset_label: 'quick a=1 epochs=10' -> preset, epochs and overrides."""
    preset, *changes = label.split()
    if preset not in PRESETS:
        raise DcbenchError(f"cannot read the settings of leaderboard preset '{label}': unknown preset '{preset}'")
    overrides: dict[str, str] = {}
    for change in changes:
        key, sep, value = change.partition("=")
        if not sep:
            raise DcbenchError(f"cannot read the settings of leaderboard preset '{label}' ('{change}')")
        overrides[key] = value
    epochs = overrides.pop("epochs", None)
    return {"preset": preset, "epochs": None if epochs is None else int(epochs), "overrides": overrides,
            "metrics": []}


def cells_from_rows(rows: list[dict[str, Any]], presets: list[str] | None = None,
                    methods: list[str] | None = None) -> list[Cell]:
    """The distinct (method, preset label, seed) cells of a leaderboard, optionally filtered;
    a cell run more than once is rerun as its newest row (the one the page shows). Calibration
    rows (`dcbench calibrate`) are not runs of a method and are left out."""
    cells: dict[tuple[str, str, int], Cell] = {}
    for row in leaderboard.latest_rows(rows):
        if not _selected(row, presets, methods):
            continue
        if row.get("calibration"):  # no method to rerun: `dcbench calibrate` recomputes these rows
            continue
        settings = {"method": row["method"], "dataset": row["dataset"], "seed": row["seed"],
                    **(row.get("spec") or spec_from_label(row["preset"]))}
        cell = Cell(RunSpec.from_settings(settings), row["preset"])
        cells.setdefault((cell.method, cell.label, cell.seed), cell)
    return [cells[key] for key in sorted(cells)]


def _selected(row: dict[str, Any], presets: list[str] | None, methods: list[str] | None) -> bool:
    return not (presets and row["preset"] not in presets or methods and row["method"] not in methods)


def load_cells(leaderboard_dir: Path, dataset: str, presets: list[str] | None = None,
               methods: list[str] | None = None) -> list[Cell]:
    rows = leaderboard.read_rows(leaderboard_dir, dataset)
    if not rows:
        raise DcbenchError(f"no leaderboard rows for '{dataset}' in {leaderboard_dir}; "
                           "see `dcbench leaderboard` for the ones there are")
    cells = cells_from_rows(rows, presets, methods)
    if not cells and any(r.get("calibration") and _selected(r, presets, methods) for r in rows):
        raise DcbenchError(f"the rows of '{dataset}' that match are calibration rows, which no method made; "
                           f"recompute them with `dcbench calibrate -d {dataset}`")
    if not cells:
        available = sorted({r["preset"] for r in rows})
        raise DcbenchError(f"no rows of '{dataset}' match the filters; its presets are: " + "; ".join(available))
    return cells


def run_spec(cell: Cell, runs_dir: Path, leaderboard_dir: Path | None, device: str,
             data_root: Path | None) -> RunSpec:
    return dataclasses.replace(cell.spec, device=device, data_root=data_root, runs_dir=runs_dir,
                               leaderboard_dir=leaderboard_dir)


@dataclass(frozen=True)
class PlannedRun:
    cell: Cell
    spec: RunSpec
    programs: tuple[str, ...]  # programs outside dcbench the run would start


def plan_runs(cells: list[Cell], runs_dir: Path, leaderboard_dir: Path | None, device: str,
              data_root: Path | None, registry: Registry) -> list[PlannedRun]:
    """Plan every row's run before any runs, so that a row that cannot be rerun (a setting out
    of range, a method that is gone) stops the command before anything is written."""
    from dcbench.runner import plan

    planned = []
    for cell in cells:
        spec = run_spec(cell, runs_dir, leaderboard_dir, device, data_root)
        try:
            p = plan(spec, registry)
        except DcbenchError as exc:
            raise DcbenchError(f"cannot rerun the row of {_row_name(cell)}: {exc}") from None
        planned.append(PlannedRun(cell, spec, tuple(p.method_cls.external_programs(p.config))))
    return planned


def check_external(planned: list[PlannedRun], allowed: bool) -> None:
    """Refuse runs that would start programs outside dcbench unless the user allowed them."""
    external = [f"{_row_name(run.cell)}: {program}" for run in planned for program in run.programs]
    if external and not allowed:
        raise DcbenchError(f"{len(external)} of these runs would start programs outside dcbench ("
                           + "; ".join(external) + "); check that you trust them, then rerun with --allow-external")


def dry_run_lines(planned: list[PlannedRun]) -> list[str]:
    """The equivalent `dcbench run` commands, each followed by the external programs it would start."""
    lines = []
    for run in planned:
        lines.append(command_line(run.cell))
        lines += [f"#   runs the external program {program} (needs --allow-external)" for program in run.programs]
    return lines


def _row_name(cell: Cell) -> str:
    return f"{cell.method}, seed {cell.seed}, preset '{cell.label}'"


def command_line(cell: Cell) -> str:
    """The equivalent `dcbench run` command, for --dry-run and the docs."""
    spec = cell.spec
    parts = ["dcbench run", f"--method {spec.method}", f"--dataset {spec.dataset}", f"--seed {spec.seed}",
             f"--preset {spec.preset}"]
    if spec.epochs is not None:
        parts.append(f"--epochs {spec.epochs}")
    parts += [f"--set {k}={v}" for k, v in sorted(spec.overrides.items())]
    parts += [f"--metric {m}" for m in spec.metrics]
    return " ".join(parts)
