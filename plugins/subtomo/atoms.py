"""Atoms of a structure file (PDB or mmCIF, plain or gzipped) for the density maps, read with gemmi.

Only the first model is read, waters are skipped and of alternative conformations only the first
is kept (a map of both would double count those atoms). Each atom weighs its atomic number, so a
hydrogen weighs 1; an atom whose element gemmi cannot tell weighs 6, like a carbon.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcbench.errors import DataError

UNKNOWN_ELEMENT_WEIGHT = 6.0
HINT = "give a PDB or mmCIF model file (plain or .gz)"


@dataclass(frozen=True)
class AtomTable:
    """The atoms of a model's first chain set, one row each (waters skipped), with what
    rigid-body edits select by: chain name and residue number."""

    coords: np.ndarray  # (N, 3) float64, Å
    weights: np.ndarray  # (N,) float64, atomic numbers
    chain: np.ndarray  # (N,) str
    residue: np.ndarray  # (N,) int, the author's residue number
    atom_name: np.ndarray  # (N,) str, e.g. "CA"


def read_atoms(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(coords (N, 3) float64 in Å, weights (N,) float64 = atomic numbers) of the first model."""
    table = read_atom_table(path)
    return table.coords, table.weights


def read_atom_table(path: str | Path) -> AtomTable:
    """Every atom of the first model (waters aside) with its chain and residue number."""
    import gemmi  # imported here: only `dcbench simulate` needs it

    path = Path(path)
    if not path.is_file():
        raise DataError(f"structure file {path} does not exist; {HINT} or fix the path in the manifest")
    try:
        structure = gemmi.read_structure(str(path))
    except Exception as error:  # gemmi raises RuntimeError, ValueError or OSError on bad input
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"cannot read structure file {path} ({message}); {HINT}") from None
    if len(structure) == 0:
        raise DataError(f"structure file {path} has no atoms; {HINT}")
    structure.remove_alternative_conformations()
    coords, weights, chains, residues, names = [], [], [], [], []
    for chain in structure[0]:
        for residue in chain:
            if residue.is_water():
                continue
            for atom in residue:
                coords.append(atom.pos.tolist())
                number = atom.element.atomic_number
                weights.append(float(number) if number > 0 else UNKNOWN_ELEMENT_WEIGHT)
                chains.append(chain.name)
                residues.append(residue.seqid.num)
                names.append(atom.name)
    if not coords:
        raise DataError(f"structure file {path} has no atoms (waters aside) in its first model; {HINT}")
    xyz = np.asarray(coords, dtype=np.float64)
    if not np.isfinite(xyz).all():
        raise DataError(f"structure file {path} has atoms with non-finite coordinates; {HINT}")
    return AtomTable(xyz, np.asarray(weights, dtype=np.float64), np.asarray(chains), np.asarray(residues),
                     np.asarray(names))
