"""`dcbench simulate`'s output folder: structures in, particles, labels and reference maps out.

    particles.mrcs            one MRC volume stack (float32, voxel size in the header), or with
    particles/000000.mrc ...  per-particle files, one MRC each
    labels.csv                one row per particle: its file (`000001@particles.mrcs`, RELION style,
                              1-based; or `particles/000000.mrc`), structure, composition[_id],
                              conformation[_id] and true pose qw, qx, qy, qz, shift_x, shift_y, shift_z
    references/<name>.mrc     each structure's noise-free map without CTF, in the particles' frame
    references.csv            file, structure, composition[_id], conformation[_id] of each map
    simulation.json           settings, seed, structures, the SNR and pose conventions, versions

The folder is built in a hidden temporary sibling and renamed into place when complete, so a reader
(or an interrupted run) never sees half of one; an old folder is replaced only after the new one is
complete. Particles stream chunk by chunk into a memory-mapped stack, so memory stays bounded.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np

from dcbench import __version__, atomic
from dcbench.errors import DataError, DcbenchError
from dcbench_plugins.subtomo.atoms import read_atoms
from dcbench_plugins.subtomo.manifest import label_ids
from dcbench_plugins.subtomo.simulate import Particles, SimulationSettings, iter_particles, reference_maps

STACK_NAME = "particles.mrcs"
PARTICLE_FOLDER = "particles"
LABEL_COLUMNS = ("index", "file", "structure", "composition", "composition_id", "conformation", "conformation_id",
                 "qw", "qx", "qy", "qz", "shift_x", "shift_y", "shift_z")
REFERENCE_COLUMNS = ("file", "structure", "composition", "composition_id", "conformation", "conformation_id")
SNR_DEFINITION = "var(signal)/var(noise) per particle over the box, signal = CTF-filtered particle"
ROTATION_CONVENTION = ("particle(p) = map(R^T (p - t)), R from (qw,qx,qy,qz), t in voxels along x,y,z; "
                       "arrays [z,y,x]; rotation about the box centre")


@dataclass
class Structure:
    """A structure ready to simulate: its atoms and labels."""

    name: str
    composition: str
    conformation: str
    coords: np.ndarray
    weights: np.ndarray
    composition_id: int = 0
    conformation_id: int = 0
    file: Path | None = None

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "composition": self.composition, "composition_id": self.composition_id,
                "conformation": self.conformation, "conformation_id": self.conformation_id,
                "file": None if self.file is None else str(self.file), "atoms": len(self.coords),
                "reference": f"references/{self.name}.mrc"}


def load_structures(items: Sequence[Any]) -> list[Structure]:
    """Structures from manifest entries (file, composition, conformation, name: atoms read from the
    file) or AtomicModel-like objects (name, composition, conformation, coords, weights), with
    label ids as manifest.label_ids numbers them."""
    if not items:
        raise DataError("no structures to simulate")
    structures = []
    for item in items:
        if hasattr(item, "coords"):
            weights = getattr(item, "weights", None)
            weights = np.ones(len(item.coords)) if weights is None else np.asarray(weights, dtype=np.float64)
            structures.append(Structure(item.name, item.composition, item.conformation,
                                        np.asarray(item.coords, dtype=np.float64), weights))
        else:
            coords, weights = read_atoms(item.file)
            structures.append(Structure(item.name, item.composition, item.conformation, coords, weights,
                                        file=Path(item.file)))
    names = [s.name for s in structures]
    pairs = [(s.composition, s.conformation) for s in structures]
    if len(set(names)) < len(names) or len(set(pairs)) < len(pairs):
        raise DataError("structures need distinct names and distinct (composition, conformation) pairs")
    for structure, (composition_id, conformation_id) in zip(structures, label_ids(pairs)):
        structure.composition_id, structure.conformation_id = composition_id, conformation_id
    return structures


def simulate_to_folder(structures: Sequence[Any], out: str | Path, per_structure: int = 1000, seed: int = 0,
                       settings: SimulationSettings | None = None, per_particle_files: bool = False,
                       overwrite: bool = False, progress: bool = True, manifest: Path | None = None) -> Path:
    """Simulate `per_structure` particles of each structure into the folder `out` (layout in the
    module docstring) and return its path. Same inputs and seed, same bytes."""
    settings = settings or SimulationSettings()
    if per_structure < 1:
        raise DcbenchError(f"need at least one particle per structure, got {per_structure}")
    out = Path(out).expanduser().absolute()
    check_target(out, overwrite)
    # the folder is built beside `out` and renamed into place: check that we can, before any work
    atomic.ensure_writable_folder(out.parent if out.exists() else out, "--out")
    loaded = load_structures(structures)
    maps = reference_maps(loaded, settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    building.chmod(0o777 & ~atomic.current_umask())  # mkdtemp's 0700 would stay with the finished folder
    try:
        write_references(building, loaded, maps, settings.voxel)
        write_particles(building, loaded, maps, per_structure, seed, settings, per_particle_files, progress)
        metadata = simulation_record(loaded, per_structure, seed, settings, per_particle_files, manifest)
        text = json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"
        (building / "simulation.json").write_text(text, encoding="utf-8")
        replace_folder(building, out, overwrite)
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return out


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder unless overwriting; checked before any work."""
    if out.exists() and not out.is_dir():
        raise DcbenchError(f"output {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DcbenchError(f"output folder {out} exists and is not empty; pass --overwrite to replace it "
                           "or choose another --out")


def replace_folder(building: Path, out: Path, overwrite: bool) -> None:
    """Move the complete folder into place; an old one is moved aside first and deleted last."""
    check_target(out, overwrite)  # again: another process may have written there meanwhile
    if not out.exists():
        os.rename(building, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / "previous")
    try:
        os.rename(building, out)
    except OSError:
        os.rename(old / "previous", out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_mrc(path: Path, volume: np.ndarray, voxel: float) -> None:
    with mrcfile.new(path, data=np.ascontiguousarray(volume, dtype=np.float32)) as mrc:
        mrc.voxel_size = voxel


def write_references(folder: Path, structures: Sequence[Structure], maps: np.ndarray, voxel: float) -> None:
    (folder / "references").mkdir()
    with open(folder / "references.csv", "w", newline="", encoding="utf-8") as handle:
        table = csv.writer(handle, lineterminator="\n")
        table.writerow(REFERENCE_COLUMNS)
        for structure, volume in zip(structures, maps):
            write_mrc(folder / "references" / f"{structure.name}.mrc", volume, voxel)
            table.writerow([f"references/{structure.name}.mrc", structure.name, structure.composition,
                            structure.composition_id, structure.conformation, structure.conformation_id])


class StackWriter:
    """Particles into one memory-mapped MRC volume stack, with the header statistics kept on the
    fly (mrcfile would otherwise re-read the whole stack to compute them)."""

    def __init__(self, path: Path, total: int, box: int, voxel: float) -> None:
        self.mrc = mrcfile.new_mmap(path, shape=(total, box, box, box), mrc_mode=2)
        self.mrc.voxel_size = voxel
        self.low, self.high, self.total, self.squares, self.count = np.inf, -np.inf, 0.0, 0.0, 0

    def write(self, start: int, volumes: np.ndarray) -> None:
        self.mrc.data[start:start + len(volumes)] = volumes
        # float32 sums within a volume, float64 across volumes: exact enough, 7x faster than float64 copies
        flat = volumes.reshape(len(volumes), -1)
        self.low, self.high = min(self.low, float(flat.min())), max(self.high, float(flat.max()))
        self.total += float(flat.sum(axis=1, dtype=np.float64).sum())
        self.squares += float(np.einsum("ij,ij->i", flat, flat).astype(np.float64).sum())
        self.count += flat.size

    def close(self) -> None:
        if self.count:  # else (a failed run) the folder is discarded anyway
            mean = self.total / self.count
            header = self.mrc.header
            header.dmin, header.dmax, header.dmean = self.low, self.high, mean
            header.rms = np.sqrt(max(self.squares / self.count - mean * mean, 0.0))
        self.mrc.close()


def particle_file(index: int, total: int, per_particle_files: bool) -> str:
    if per_particle_files:
        return f"{PARTICLE_FOLDER}/{index:0{max(6, len(str(total - 1)))}d}.mrc"
    return f"{index + 1:0{max(6, len(str(total)))}d}@{STACK_NAME}"


def label_rows(chunk: Particles, start: int, total: int, structures: Sequence[Structure],
               per_particle_files: bool) -> list[list[Any]]:
    rows = []
    for offset, (which, q, t) in enumerate(zip(chunk.structure, chunk.quaternions, chunk.shifts)):
        s = structures[int(which)]
        # repr: the shortest text that reads back as the same float, so poses are exact
        rows.append([start + offset, particle_file(start + offset, total, per_particle_files), s.name,
                     s.composition, s.composition_id, s.conformation, s.conformation_id,
                     *(repr(float(v)) for v in q), *(repr(float(v)) for v in t)])
    return rows


def write_particles(folder: Path, structures: Sequence[Structure], maps: np.ndarray, per_structure: int,
                    seed: int, settings: SimulationSettings, per_particle_files: bool, progress: bool) -> None:
    from tqdm import tqdm

    total = len(structures) * per_structure
    stack = None
    if per_particle_files:
        (folder / PARTICLE_FOLDER).mkdir()
    else:
        stack = StackWriter(folder / STACK_NAME, total, settings.box, settings.voxel)
    try:
        with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as handle, \
                tqdm(total=total, unit="particle", desc="simulate", disable=not progress) as bar:
            table = csv.writer(handle, lineterminator="\n")
            table.writerow(LABEL_COLUMNS)
            start = 0
            for chunk in iter_particles(maps, per_structure, seed, settings):
                if stack is not None:
                    stack.write(start, chunk.volumes)
                else:
                    for offset, volume in enumerate(chunk.volumes):
                        write_mrc(folder / particle_file(start + offset, total, True), volume, settings.voxel)
                table.writerows(label_rows(chunk, start, total, structures, per_particle_files))
                start += len(chunk.volumes)
                bar.update(len(chunk.volumes))
    finally:
        if stack is not None:
            stack.close()


def simulation_record(structures: Sequence[Structure], per_structure: int, seed: int, settings: SimulationSettings,
                      per_particle_files: bool, manifest: Path | None) -> dict[str, Any]:
    """simulation.json: everything needed to read the folder and to make it again."""
    import gemmi
    import torch

    return {
        "settings": settings.as_dict(),
        "seed": seed,
        "per_structure": per_structure,
        "particles": len(structures) * per_structure,
        "particles_file": f"{PARTICLE_FOLDER}/" if per_particle_files else STACK_NAME,
        "manifest": None if manifest is None else str(manifest),
        "structures": [s.record() for s in structures],
        "label_ids": "composition_id: 0, 1, ... in order of first appearance; conformation_id: 0, 1, ... within "
                     "each composition, in order of first appearance",
        "snr_definition": SNR_DEFINITION,
        "rotation_convention": ROTATION_CONVENTION,
        "quaternion": "(qw, qx, qy, qz), unit, qw >= 0",
        "references": "noise-free density maps without CTF, in the particles' frame (identity pose), centred "
                      "on each structure's weighted centre of mass",
        "units": {"voxel": "Å", "resolution": "Å", "shift": "voxels", "defocus": "µm (negative = underfocus)",
                  "voltage": "kV", "cs": "mm"},
        "dcbench": __version__,
        "versions": {"numpy": np.__version__, "torch": torch.__version__, "gemmi": gemmi.__version__,
                     "mrcfile": mrcfile.__version__},
    }
