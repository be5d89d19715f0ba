"""The manifest of `dcbench simulate`: which structure files to simulate, grouped into compositions
and conformations, plus optional default simulation settings. A TOML file:

    [simulation]                      # optional; names as SimulationSettings' fields
    snr = 0.1                         # `snr = false`: no noise; `wedge_tilt_degrees = false`: no wedge

    [[structure]]
    file = "models/2pyo.cif.gz"       # PDB or mmCIF, plain or gzipped; relative to the manifest's folder
    composition = "nucleosome"
    conformation = "2pyo"             # optional: the file name without .gz and .cif/.pdb
    name = "nucleosome_2pyo"          # optional: <composition>_<conformation>; names the reference map

Label ids: compositions are numbered 0, 1, ... in order of first appearance; conformations are
numbered 0, 1, ... within each composition, in order of first appearance there (the labels CSV
and references.csv carry these ids next to the names).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcbench.errors import DataError
from dcbench_plugins.subtomo.simulate import SimulationSettings

STRUCTURE_KEYS = ("file", "composition", "conformation", "name")
STRUCTURE_SUFFIXES = (".cif", ".mmcif", ".pdb", ".ent")
OPTIONAL_SETTINGS = ("snr", "wedge_tilt_degrees")  # `false` in TOML (which has no null) turns them off
_FILE_NAME_UNSAFE = re.compile(r"[/\\\x00-\x1f]")


@dataclass(frozen=True)
class ManifestEntry:
    """One structure to simulate."""

    file: Path  # resolved against the manifest's folder
    composition: str
    conformation: str
    name: str

    def as_dict(self) -> dict[str, str]:
        return {"file": str(self.file), "composition": self.composition, "conformation": self.conformation,
                "name": self.name}


@dataclass(frozen=True)
class Manifest:
    path: Path
    entries: tuple[ManifestEntry, ...]
    simulation: dict[str, Any]  # validated SimulationSettings fields, None for "off"


def default_conformation(file: Path) -> str:
    """'2pyo.cif.gz' -> '2pyo'."""
    name = file.name[:-3] if file.name.lower().endswith(".gz") else file.name
    for suffix in STRUCTURE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return name


def label_ids(pairs: Sequence[tuple[str, str]]) -> list[tuple[int, int]]:
    """(composition_id, conformation_id) of each (composition, conformation): compositions in order
    of first appearance, conformations within their composition in order of first appearance."""
    compositions: dict[str, dict[str, int]] = {}
    ids = []
    for composition, conformation in pairs:
        within = compositions.setdefault(composition, {})
        within.setdefault(conformation, len(within))
        ids.append((list(compositions).index(composition), within[conformation]))
    return ids


def read_manifest(path: str | Path) -> Manifest:
    """Parse and check a manifest; every problem is a one-line DataError naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist; give a TOML file with [[structure]] entries "
                        "(file, composition, conformation)")
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"manifest {path} is not valid TOML ({error})") from None
    unknown = sorted(set(document) - {"simulation", "structure"})
    if unknown:
        raise DataError(f"manifest {path} has unknown top-level key(s) {', '.join(unknown)}; "
                        "expected [simulation] and [[structure]]")
    structures = document.get("structure")
    if not structures:
        raise DataError(f"manifest {path} lists no structures; add [[structure]] entries with file and composition")
    if not isinstance(structures, list) or not all(isinstance(s, dict) for s in structures):
        raise DataError(f"manifest {path}: 'structure' must be an array of tables ([[structure]])")
    entries = tuple(_entry(item, number, path) for number, item in enumerate(structures, 1))
    _check_unique(entries, path)
    simulation = document.get("simulation", {})
    if not isinstance(simulation, dict):
        raise DataError(f"manifest {path}: 'simulation' must be a table ([simulation])")
    return Manifest(path, entries, check_settings(simulation, f"manifest {path} [simulation]"))


def _entry(item: Mapping[str, Any], number: int, path: Path) -> ManifestEntry:
    where = f"manifest {path} structure {number}"
    unknown = sorted(set(item) - set(STRUCTURE_KEYS))
    if unknown:
        raise DataError(f"{where} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(STRUCTURE_KEYS)}")
    for key in ("file", "composition"):
        if key not in item:
            raise DataError(f"{where} has no '{key}'; every structure needs file and composition")
    for key, value in item.items():
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: '{key}' must be a non-empty string")
    file = Path(item["file"]).expanduser()
    file = file if file.is_absolute() else path.parent / file
    if not file.is_file():
        raise DataError(f"{where}: structure file {file} does not exist (paths are relative to the manifest's folder)")
    composition = item["composition"].strip()
    conformation = item.get("conformation", default_conformation(file)).strip()
    name = item.get("name", f"{composition}_{conformation}").strip()
    # the name becomes references/<name>.mrc
    if _FILE_NAME_UNSAFE.search(name) or name.startswith("."):
        raise DataError(f"{where}: name '{name}' cannot be a file name (no slashes, control characters or "
                        "leading dot); set 'name'")
    return ManifestEntry(file, composition, conformation, name)


def _check_unique(entries: Sequence[ManifestEntry], path: Path) -> None:
    seen_pairs: dict[tuple[str, str], int] = {}
    seen_names: dict[str, int] = {}
    for number, entry in enumerate(entries, 1):
        pair = (entry.composition, entry.conformation)
        if pair in seen_pairs:
            raise DataError(f"manifest {path}: structures {seen_pairs[pair]} and {number} are both composition "
                            f"'{pair[0]}' conformation '{pair[1]}'; give each a distinct conformation")
        if entry.name in seen_names:
            raise DataError(f"manifest {path}: structures {seen_names[entry.name]} and {number} are both named "
                            f"'{entry.name}'; set distinct names")
        seen_pairs[pair] = seen_names[entry.name] = number


def check_settings(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Simulation settings by field name, type-checked against SimulationSettings' defaults;
    `False` for snr or wedge_tilt_degrees means off (None)."""
    fields = {f.name: f.default for f in dataclasses.fields(SimulationSettings)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise DataError(f"{where} has unknown setting(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    checked: dict[str, Any] = {}
    for key, value in values.items():
        default = fields[key]
        if key in OPTIONAL_SETTINGS and (value is False or value is None):
            checked[key] = None
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise DataError(f"{where}: {key} must be true or false, got {value!r}")
            checked[key] = value
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise DataError(f"{where}: {key} must be an integer, got {value!r}")
            checked[key] = value
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"{where}: {key} must be a number, got {value!r}")
            checked[key] = float(value)
    return checked


def build_settings(*layers: Mapping[str, Any]) -> SimulationSettings:
    """SimulationSettings from layers of overrides, later layers winning (e.g. manifest, then the
    command line); an invalid value is a DataError."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    try:
        return SimulationSettings(**merged)
    except (TypeError, ValueError) as error:
        raise DataError(f"invalid simulation settings: {error}") from None
