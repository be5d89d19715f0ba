"""`mrc`: subtomograms from MRC files, with labels from a CSV or a RELION STAR file.

`data.path` (or --data-root) is one of:
- a folder of .mrc / .map / .mrcs files, read in name order; each file holds one 3D volume or a
  volume stack (4D data: mrcfile's volume stack, ispg 401), all of one cubic box: 32^3, or another
  box that is rescaled to 32^3 by Fourier cropping/padding (rescale.py; `data.resample=off` refuses it);
- one such file (typically a .mrcs volume stack);
- a folder written by `dcbench simulate`: labels.csv (its `file` column names each particle as
  `N@particles.mrcs` or a per-particle file), references.csv + references/ (the noise-free maps,
  returned as the bundle's references) and simulation.json (its settings.ctf, when true, becomes
  the bundle's CTF; settings.voxel the references' voxel size).

Labels (required: benchmarks score against them): `data.labels`, else labels.csv in the folder.
See volume_labels.py for the columns read. Rows that name files choose the volumes (other files
in the folder are not used); otherwise rows follow the volumes' order, or their `index` column.
`data.references` names a references folder for data without one. Volumes are z-scored per volume
unless `data.zscore=false`; the split is fixed and stratified (volumes.split_indices).
Files are memory-mapped (mrcfile.mmap) and copied volume by volume. The voxel size (Å) is
simulation.json's settings.voxel, else the first volume file's header, else the STAR file's pixel
size; rescaled volumes and the references get voxel * box / 32, and the provenance's `box` says so.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcbench.api import DataBundle, Dataset, ReferenceMaps
from dcbench.errors import DataError, DcbenchError
from dcbench_plugins.datasets.rescale import BoxChange, check_resample, same_voxel
from dcbench_plugins.datasets.volume_labels import LabelTable, read_labels
from dcbench_plugins.datasets.volumes import (
    BOX,
    RESAMPLE_HINT,
    check_test_fraction,
    count_volumes,
    find_references_csv,
    make_bundle,
    option_path,
    read_into,
    read_references,
    zscore_,
)

MRC_SUFFIXES = (".mrc", ".mrcs", ".map")
LABELS_NAME = "labels.csv"
SIMULATION_NAME = "simulation.json"
CTF_KEYS = ("defocus_um", "voltage_kv", "cs_mm", "amplitude_contrast")
NO_VOLUMES_HINT = (f"put the {BOX}^3 volumes there, or point --set data.path at the folder (or .mrcs stack) that "
                   "holds them")
LABELS_HINT = ("give labels with --set data.labels=FILE: a CSV with columns file (or index) and composition "
               "[, conformation], or a RELION STAR file with _rlnImageName and _rlnClassNumber")


@dataclass(frozen=True)
class VolumeRef:
    """One volume: a file and its 0-based volume in it (None: the file's only volume)."""

    path: Path
    volume: int | None = None

    def describe(self) -> str:
        return str(self.path) if self.volume is None else f"{self.path} volume {self.volume + 1} (1-based)"

    def key(self) -> tuple[Path, int]:
        return self.path.resolve(), self.volume or 0


def list_mrc_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MRC_SUFFIXES)


def inventory(files: Sequence[Path], resample: str = "off") -> list[VolumeRef]:
    """Every volume of each file, in order (opens each header; data stays on disk)."""
    refs: list[VolumeRef] = []
    for path in files:
        n = count_volumes(path, resample)
        refs.extend([VolumeRef(path)] if n == 1 else [VolumeRef(path, i) for i in range(n)])
    return refs


def parse_entry(entry: str) -> tuple[str, int | None]:
    """RELION's `000003@stack.mrcs` -> ('stack.mrcs', 2); a plain name -> (name, None)."""
    number, at, name = entry.partition("@")
    if at and number.strip().isdigit():
        return name.strip(), int(number) - 1
    return entry.strip(), None


def refs_from_files(table: LabelTable, bases: list[Path]) -> list[VolumeRef]:
    """The volume each label row names; a missing file is a DataError naming the row."""
    assert table.files is not None
    refs = []
    for row, entry in enumerate(table.files):
        name, volume = parse_entry(entry)
        if volume is not None and volume < 0:
            raise DataError(f"{table.source} row {row + 2}: '{entry}' counts volumes from 1")
        candidates = [Path(name)] if Path(name).is_absolute() else [base / name for base in bases]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            looked = ", ".join(str(b) for b in bases)
            raise DataError(f"{table.source} row {row + 2} names {name}, which does not exist (looked in {looked})")
        refs.append(VolumeRef(path, volume))
    return refs


def refs_by_position(table: LabelTable, volumes: list[VolumeRef], where: Path) -> list[VolumeRef]:
    """Label rows matched to volumes by their `index` column, else by order."""
    if table.indices is not None:
        too_big = np.flatnonzero(table.indices >= len(volumes))
        if too_big.size:
            row = int(too_big[0])
            raise DataError(f"{table.source} row {row + 2}: index {int(table.indices[row])} is past the "
                            f"{len(volumes)} volumes in {where} (indices are 0-based)")
        return [volumes[i] for i in table.indices]
    if len(table) != len(volumes):
        raise DataError(f"{table.source} has {len(table)} label rows but {where} holds {len(volumes)} volumes; "
                        "give one row per volume in order, or name each volume in a file (or index) column")
    return volumes


def check_unique(refs: list[VolumeRef], table: LabelTable) -> None:
    seen: dict[tuple[Path, int], int] = {}
    for row, ref in enumerate(refs):
        first = seen.setdefault(ref.key(), row)
        if first != row:
            raise DataError(f"{table.source} rows {first + 2} and {row + 2} both label {ref.describe()}")


def check_same_scale(first: tuple[Path, BoxChange], other: tuple[Path, BoxChange]) -> None:
    """Every file has one box, and (where it is rescaled) one voxel size: a mix has no one scale."""
    (path, change), (other_path, other_change) = first, other
    if change.box != other_change.box:
        (odd, odd_box), (usual, usual_box) = (((path, change.box), (other_path, other_change.box))
                                              if other_change.box == BOX else
                                              ((other_path, other_change.box), (path, change.box)))
        raise DataError(f"{odd} holds {odd_box}x{odd_box}x{odd_box} volumes but the 3D methods take {BOX}^3 and "
                        f"{usual} holds {usual_box}^3 ones; dcbench rescales one box, not a mix: {RESAMPLE_HINT}")
    if change.rescaled and not same_voxel(change.voxel, other_change.voxel):
        raise DataError(f"{other_path} has {other_change.voxel:g} Å voxels but {path} has {change.voxel:g} Å ones; "
                        "give volumes of one voxel size (or fix the headers: relion_image_handler --angpix)")


def read_volumes(refs: list[VolumeRef], resample: str = "off") -> tuple[np.ndarray, BoxChange]:
    """(N, 1, BOX, BOX, BOX) float32, opening each file once, and the files' box and header voxel
    size (of the first file; every file must share its box, see check_same_scale)."""
    out = np.empty((len(refs), 1, BOX, BOX, BOX), dtype=np.float32)
    by_file: dict[Path, list[tuple[int, int | None]]] = {}
    for position, ref in enumerate(refs):
        by_file.setdefault(ref.path, []).append((position, ref.volume))
    first: tuple[Path, BoxChange] | None = None
    for path, picks in by_file.items():
        change = read_into(out, path, picks, resample)
        first = first or (path, change)
        check_same_scale(first, (path, change))
    assert first is not None  # a label table has rows, so there is a volume
    return out, first[1]


def read_simulation(folder: Path) -> dict[str, Any] | None:
    """simulation.json's settings, or None when the folder has none."""
    path = folder / SIMULATION_NAME
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8")).get("settings")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise DataError(f"{path} is not readable JSON with a 'settings' object ({error})") from None
    if not isinstance(settings, dict):
        raise DataError(f"{path} has no 'settings' object")
    return settings


def settings_voxel(settings: dict[str, Any] | None) -> float | None:
    """simulation.json's voxel size (Å), or None."""
    voxel = settings.get("voxel") if settings else None
    return float(voxel) if isinstance(voxel, (int, float)) and not isinstance(voxel, bool) and voxel > 0 else None


def ctf_from(settings: dict[str, Any] | None, folder: Path) -> dict[str, float] | None:
    if not settings or not settings.get("ctf"):
        return None
    missing = [key for key in CTF_KEYS if not isinstance(settings.get(key), (int, float))]
    if missing:
        raise DataError(f"{folder / SIMULATION_NAME} says the particles carry a CTF but gives no "
                        f"{', '.join(missing)}")
    return {key: float(settings[key]) for key in CTF_KEYS}


class MRCSubtomograms(Dataset):
    name = "mrc"
    shape = (1, BOX, BOX, BOX)
    default_metrics = ("ari", "fsc", "dscore")
    # path: folder or stack file (default: --data-root); labels: CSV or STAR (default: labels.csv in
    # the folder); references: folder with references.csv (default: the data folder's own, if any)
    # resample: auto (volumes of another cubic box are rescaled to 32^3 by Fourier cropping/padding,
    # with a notice), fourier (the same, pinned), off (another box is an error)
    option_defaults = {"path": None, "labels": None, "references": None, "test_fraction": 0.2, "zscore": True,
                       "resample": "auto"}

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """While planning: the split's fraction and the z-scoring switch (files are load()'s)."""
        check_test_fraction(options["test_fraction"])
        check_resample(options["resample"])
        if not isinstance(options["zscore"], bool):
            raise DcbenchError(f"data.zscore must be true or false, got {options['zscore']!r}; set "
                               "--set data.zscore=false to keep the values as stored")

    def _source(self) -> Path:
        source = option_path(self.options, "path") or (Path(self.data_root) if self.data_root is not None else None)
        if source is None:
            raise DataError("dataset 'mrc' needs its volumes: pass --set data.path=FOLDER_OR_STACK (a folder of "
                            ".mrc files, a .mrcs volume stack, or a `dcbench simulate` folder)")
        if not source.exists():
            raise DataError(f"{source} does not exist; pass a folder of .mrc files or a .mrcs stack as data.path")
        return source

    def _labels(self, source: Path, folder: Path) -> LabelTable:
        path = option_path(self.options, "labels")
        if path is None and source.is_dir() and (folder / LABELS_NAME).is_file():
            path = folder / LABELS_NAME
        if path is None:
            if source.is_dir() and not list_mrc_files(source):
                raise DataError(f"{source} holds no .mrc, .mrcs or .map files and no {LABELS_NAME}; {NO_VOLUMES_HINT}")
            raise DataError(f"{source} has no labels, and benchmarks score against them; {LABELS_HINT}")
        return read_labels(path)

    def _refs(self, source: Path, folder: Path, table: LabelTable) -> tuple[list[VolumeRef], str]:
        if table.files is not None:
            bases = list(dict.fromkeys([table.source.parent, folder, folder / "particles"]))
            return refs_from_files(table, bases), f"named by the file column of {table.source}"
        files = list_mrc_files(source) if source.is_dir() else [source]
        if not files:
            raise DataError(f"{source} holds no .mrc, .mrcs or .map files; {NO_VOLUMES_HINT}")
        volumes = inventory(files, str(self.options["resample"]))
        how = "by the index column" if table.indices is not None else "in order"
        return refs_by_position(table, volumes, source), f"all volumes of {source}, matched to labels {how}"

    def _references(self, folder: Path, table: LabelTable, settings: dict[str, Any] | None, particles: BoxChange
                    ) -> tuple[ReferenceMaps | None, str | None]:
        where = option_path(self.options, "references")
        if where is None and find_references_csv(folder) is not None:
            where = folder
        if where is None:
            return None, None
        # the particles' voxel at 32^3 when they were rescaled; otherwise as before rescaling existed:
        # simulation.json's, else the first map's header
        voxel = particles.new_voxel if particles.rescaled else settings_voxel(settings)
        maps, csv = read_references(where, table, voxel, str(self.options["resample"]), particles)
        return maps, str(csv)

    def load(self, seed: int) -> DataBundle:
        source = self._source()
        folder = source if source.is_dir() else source.parent
        table = self._labels(source, folder)
        refs, chosen = self._refs(source, folder, table)
        check_unique(refs, table)
        x, stored = read_volumes(refs, str(self.options["resample"]))
        settings = read_simulation(folder) if source.is_dir() else None
        voxel = settings_voxel(settings) or stored.voxel or getattr(table, "pixel_size", None)
        change = BoxChange(stored.box, voxel, BOX, str(self.options["resample"]))
        if change.rescaled:
            print(change.notice(self.name), file=sys.stderr)
        zscore = bool(self.options["zscore"])
        if zscore:
            zscore_(x, lambda i: refs[i].describe())
        references, references_csv = self._references(folder, table, settings, change)
        steps = ([f"{change.method} from {change.box}^3 to {BOX}^3"] if change.rescaled else []) + (
            ["per-volume z-score (mean 0, std 1)"] if zscore else [])
        provenance = {
            "source": str(source), "labels": str(table.source), "volumes": chosen, "n_volumes": len(refs),
            "n_files": len({ref.path for ref in refs}), "box": change.record(),
            "preprocessing": ", then ".join(steps) if steps else "none (values as stored)",
            "references": references_csv, "simulation_settings": settings,
            "pixel_size": change.new_voxel,  # Å per voxel as the methods see it (exports without reference maps)
        }
        return make_bundle(x, table, float(self.options["test_fraction"]), provenance, references,
                           ctf_from(settings, folder))
