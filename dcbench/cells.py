"""A cell of the benchmark grid (one method x dataset x seed at one budget) and the run
records it already has under a runs folder.

A cell is identified by what decides its numbers: method, dataset, seed, the budget label
(preset plus overrides and epochs), the metrics and the data root. `dcbench run --resume` and
`dcbench sweep` use this to find a cell's finished, failed or interrupted runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcbench.records import is_live, read_json_or_none

# What a record's provenance status means for the cell; "running" records whose process has
# died (no one holds their lock) count as interrupted.
STATES = ("finished", "failed", "interrupted", "running")


def cell_identity(method: str, dataset: str, seed: int, budget: str, metrics: list[str],
                  data_root: Path | str | None) -> dict[str, Any]:
    return {"method": method, "dataset": dataset, "seed": int(seed), "budget": budget,
            "metrics": sorted(metrics), "data_root": None if data_root is None else str(data_root)}


def identity_of_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """The cell a run folder's config.json belongs to (also for records older than the
    'cell' field); None if the config is not a dcbench run's."""
    if isinstance(config.get("cell"), dict):
        return config["cell"]
    try:
        return cell_identity(config["method"], config["dataset"], config["seed"], config["preset_label"],
                             list(config["metrics"]), config.get("data_root"))
    except (KeyError, TypeError):
        return None


@dataclass(frozen=True)
class RecordState:
    path: Path
    state: str  # one of STATES
    started_at: str
    error: str | None


@dataclass(frozen=True)
class CellRecords:
    """A cell's records, oldest first."""

    records: tuple[RecordState, ...]

    @property
    def finished(self) -> RecordState | None:
        done = [r for r in self.records if r.state == "finished"]
        return done[-1] if done else None

    @property
    def latest(self) -> RecordState | None:
        return self.records[-1] if self.records else None

    @property
    def running(self) -> RecordState | None:
        live = [r for r in self.records if r.state == "running"]
        return live[-1] if live else None


def read_state(path: Path) -> RecordState | None:
    """A run folder's state, or None if its files are missing or unreadable."""
    provenance = read_json_or_none(path / "provenance.json")
    if not isinstance(provenance, dict):
        return None
    status = provenance.get("status")
    if status == "running" and not is_live(path):
        status = "interrupted"
    if status not in STATES:
        return None
    return RecordState(path, status, str(provenance.get("started_at", "")), provenance.get("error"))


def find_records(runs_dir: Path, identity: dict[str, Any]) -> CellRecords:
    """Every record of this cell under runs_dir (runs_dir/<dataset>/<method>/<run>/)."""
    folder = Path(runs_dir) / identity["dataset"] / identity["method"]
    found = []
    for path in sorted(folder.glob("*/config.json")) if folder.is_dir() else []:
        config = read_json_or_none(path)
        if not isinstance(config, dict) or identity_of_config(config) != identity:
            continue
        state = read_state(path.parent)
        if state is not None:
            found.append(state)
    # Folder names start with a UTC stamp; started_at breaks ties within a second.
    found.sort(key=lambda r: (r.started_at, r.path.name))
    return CellRecords(tuple(found))
