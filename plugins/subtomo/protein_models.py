"""The real-protein models behind `subtomo-proteins`: four compositions x six conformations, from
the deposited atomic models in the shared structures folder (public PDB entries) plus documented
rigid-body motions of their chains or domains (dcbench_plugins.subtomo.motions).

Compositions follow the DualContrast paper's as far as the available models allow (its
nucleosome, spike pre-fusion and post-fusion; the 20S proteasome stands in for its fatty acid
synthase). Conformations, subtle to obvious:

- nucleosome (1kx5): fully wrapped, then one DNA end unwrapped (the terminal base pairs swung
  away from the histone core about the superhelix axis through the first unwrapped base pair),
  then both ends;
- spike pre-fusion: four deposited states (6vxx closed, 6zge closed uncleavable, 6xr8 full
  length, 6vyb one RBD up), then two and three RBDs up: 6vyb's up-swing of its RBD (a rigid
  motion fitted between its up and down protomers) carried to the other protomers by the
  trimer's symmetry;
- spike post-fusion (6xra): straight, then bent by 5-30 degrees at a hinge 55% along the rod;
- 20S proteasome (3j9i): as deposited, the alpha-subunits tilted outward (an iris-like gate
  opening) by 6, 12 and 20 degrees, the alpha rings twisted 15 degrees about the barrel axis, and
  the alpha rings moved 8 Å out along the axis.

Only `scripts/build_protein_maps.py` calls this (it needs gemmi and the structure files); the
dataset ships the resulting maps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from dcbench_plugins.subtomo import motions
from dcbench_plugins.subtomo.atoms import AtomTable, read_atom_table


@dataclass(frozen=True)
class ProteinModel:
    name: str  # "<composition>/<conformation>"
    composition: str
    conformation: str
    pdb_id: str  # the deposited entry it comes from
    description: str  # what it is, and the motion applied if any
    coords: np.ndarray
    weights: np.ndarray


# residue ranges (author numbering)
SPIKE_RBD = (319, 541)
SPIKE_CORE = (700, 1100)  # S2, for superposing protomers
NUCLEOSOME_DNA_CHAINS = ("I", "J")
NUCLEOSOME_DNA_END = 73  # 1kx5's 147 bp numbered -73 .. 73 on each strand (I i pairs with J -i)
PROTEASOME_ALPHA_LENGTH = 224  # 3j9i: alpha chains model 224 residues, beta chains 203


def moved(table: AtomTable, mask: np.ndarray, motion: motions.RigidMotion) -> np.ndarray:
    coords = table.coords.copy()
    coords[mask] = motion.apply(coords[mask])
    return coords


def _ca(table: AtomTable, mask: np.ndarray) -> dict[int, np.ndarray]:
    pick = mask & (table.atom_name == "CA")
    return {int(r): c for r, c in zip(table.residue[pick], table.coords[pick], strict=True)}


def _matched(first: dict[int, np.ndarray], second: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    common = sorted(set(first) & set(second))
    return np.array([first[r] for r in common]), np.array([second[r] for r in common])


def _in_range(table: AtomTable, chain: str, span: tuple[int, int]) -> np.ndarray:
    return (table.chain == chain) & (table.residue >= span[0]) & (table.residue <= span[1])


# --- nucleosome -------------------------------------------------------------------------------

def unwrap_dna(table: AtomTable, base_pairs: int, degrees: float, ends: tuple[int, ...]) -> np.ndarray:
    """Coordinates with the last `base_pairs` bp of each DNA end in `ends` (+1: strand I's
    positive end, -1: the other) swung `degrees` away from the histone core, about the
    superhelix axis (the disc's normal) through the first unwrapped base pair."""
    centre, axes = motions.principal_axes(table.coords, table.weights)
    normal = axes[2]  # the nucleosome is a disc: its smallest spread is along the superhelix axis
    strand_i, strand_j = (table.chain == c for c in NUCLEOSOME_DNA_CHAINS)
    coords = table.coords.copy()
    boundary = NUCLEOSOME_DNA_END - base_pairs
    for end in ends:
        segment = (strand_i & (end * table.residue > boundary)) | (strand_j & (-end * table.residue > boundary))
        pair = (strand_i & (table.residue == end * boundary)) | (strand_j & (table.residue == -end * boundary))
        pivot = table.coords[pair].mean(0)
        # of the two senses, the one that takes the segment away from the core
        options = [motions.rotation_about(normal, sign * degrees, pivot) for sign in (1, -1)]
        distance = [np.linalg.norm(m.apply(table.coords[segment]).mean(0) - centre) for m in options]
        coords[segment] = options[int(np.argmax(distance))].apply(table.coords[segment])
    return coords


# --- spike ------------------------------------------------------------------------------------

def _trimer_axis(table: AtomTable, chains: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(centre, unit axis) of a trimer: the axis through the protomers' S2 cores' centroid,
    pointing towards the RBDs."""
    cores = [table.coords[_in_range(table, c, SPIKE_CORE)].mean(0) for c in chains]
    heads = [table.coords[_in_range(table, c, SPIKE_RBD)].mean(0) for c in chains]
    centre = np.mean(cores, axis=0)
    normal = np.cross(cores[1] - cores[0], cores[2] - cores[0])
    normal /= np.linalg.norm(normal)
    return centre, normal if np.dot(np.mean(heads, axis=0) - centre, normal) > 0 else -normal


def rbds_up(table: AtomTable, count: int) -> np.ndarray:
    """6vyb with `count` RBDs up (count >= 1): its up RBD's motion, fitted between its up protomer
    and a down one, carried onto the down protomers by the trimer's symmetry."""
    chains = sorted({str(c) for c in table.chain[np.isin(table.residue, SPIKE_CORE)]} & {"A", "B", "C"})
    centre, axis = _trimer_axis(table, chains)
    height = {c: np.dot(table.coords[_in_range(table, c, SPIKE_RBD)].mean(0) - centre, axis) for c in chains}
    up = max(chains, key=height.__getitem__)
    down = [c for c in chains if c != up]
    coords = table.coords.copy()
    for chain in down[:count - 1]:
        # the symmetry operator taking the up protomer's S2 core onto this one's
        frame = motions.superpose(*_matched(_ca(table, _in_range(table, up, SPIKE_CORE)),
                                            _ca(table, _in_range(table, chain, SPIKE_CORE))))
        mine, theirs = _matched(_ca(table, _in_range(table, chain, SPIKE_RBD)),
                                _ca(table, _in_range(table, up, SPIKE_RBD)))
        target = frame.apply(theirs)  # the up RBD as it would sit on this protomer
        rbd = _in_range(table, chain, SPIKE_RBD)
        coords[rbd] = motions.superpose(mine, target).apply(table.coords[rbd])
    return coords


# --- post-fusion spike ----------------------------------------------------------------------

def bend_rod(table: AtomTable, degrees: float, hinge_fraction: float = 0.55) -> np.ndarray:
    """The rod bent by `degrees` at `hinge_fraction` of its length: the residues beyond the hinge
    plane (by their CA) rotate as one body about an axis across the rod through the hinge."""
    if degrees == 0:
        return table.coords.copy()
    centre, axes = motions.principal_axes(table.coords, table.weights)
    along = (table.coords - centre) @ axes[0]
    low, high = np.percentile(along, [1, 99])
    hinge = low + hinge_fraction * (high - low)
    keys = np.char.add(table.chain.astype(str), table.residue.astype(str))
    ca = table.atom_name == "CA"
    beyond = set(keys[ca & (along > hinge)])
    mask = np.isin(keys, list(beyond)) | (~np.isin(keys, keys[ca]) & (along > hinge))  # ligands by position
    pivot = centre + hinge * axes[0]
    return moved(table, mask, motions.rotation_about(axes[1], degrees, pivot))


# --- 20S proteasome ---------------------------------------------------------------------------

def _proteasome_frame(table: AtomTable) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(centre, barrel axis, {alpha chain: its atoms' mask})."""
    centre, axes = motions.principal_axes(table.coords, table.weights)
    # seven-fold barrel: two equal spreads across, the axis is the odd one out
    values = [np.var((table.coords - centre) @ a) for a in axes]
    odd = int(np.argmax([abs(values[i] - np.mean([values[j] for j in range(3) if j != i])) for i in range(3)]))
    alpha = {}
    for chain in np.unique(table.chain):
        mask = table.chain == chain
        if len(np.unique(table.residue[mask])) >= PROTEASOME_ALPHA_LENGTH:
            alpha[str(chain)] = mask
    return centre, axes[odd], alpha


def open_gate(table: AtomTable, degrees: float) -> np.ndarray:
    """Each alpha subunit tilted `degrees` outward about the tangential axis through its contact
    with the beta ring (the alpha subunit's centroid brought axially to the ring's inner face)."""
    centre, axis, alpha = _proteasome_frame(table)
    coords = table.coords.copy()
    for mask in alpha.values():
        mine = table.coords[mask].mean(0)
        heights = (table.coords[mask] - centre) @ axis
        side = np.sign(heights.mean())
        interface = side * np.percentile(np.abs(heights), 10)  # the subunit's face towards the beta ring
        radial = mine - centre - heights.mean() * axis
        inner = centre + interface * axis + radial
        tangent = np.cross(axis, radial / np.linalg.norm(radial))
        options = [motions.rotation_about(tangent, sign * degrees, inner) for sign in (1, -1)]
        # outward: the subunit's far (gate) end moves away from the axis
        spread = [np.linalg.norm(np.cross(m.apply(mine[None])[0] - centre, axis)) for m in options]
        coords[mask] = options[int(np.argmax(spread))].apply(table.coords[mask])
    return coords


def twist_alpha_rings(table: AtomTable, degrees: float) -> np.ndarray:
    centre, axis, alpha = _proteasome_frame(table)
    coords = table.coords.copy()
    for mask in alpha.values():
        sense = np.sign(np.dot(table.coords[mask].mean(0) - centre, axis))  # the rings turn in opposite senses
        coords[mask] = motions.rotation_about(axis, sense * degrees, centre).apply(table.coords[mask])
    return coords


def expand_alpha_rings(table: AtomTable, angstrom: float) -> np.ndarray:
    centre, axis, alpha = _proteasome_frame(table)
    coords = table.coords.copy()
    for mask in alpha.values():
        sense = np.sign(np.dot(table.coords[mask].mean(0) - centre, axis))
        coords[mask] = motions.translation(sense * angstrom * axis).apply(table.coords[mask])
    return coords


# --- the catalogue ----------------------------------------------------------------------------

Edit = Callable[[AtomTable], np.ndarray]
CATALOGUE: tuple[tuple[str, str, str, str, Edit | None], ...] = (
    # composition, conformation, PDB file, description, edit of the deposited coordinates
    ("nucleosome", "wrapped", "1kx5", "nucleosome core particle, 147 bp fully wrapped (X-ray, 1.9 Å)", None),
    ("nucleosome", "unwrap-10bp-25deg", "1kx5", "one DNA end's last 10 bp swung 25° off the core",
     lambda t: unwrap_dna(t, 10, 25, (1,))),
    ("nucleosome", "unwrap-20bp-40deg", "1kx5", "one DNA end's last 20 bp swung 40° off the core",
     lambda t: unwrap_dna(t, 20, 40, (1,))),
    ("nucleosome", "unwrap-both-20bp-40deg", "1kx5", "both DNA ends' last 20 bp swung 40° off the core",
     lambda t: unwrap_dna(t, 20, 40, (1, -1))),
    ("nucleosome", "unwrap-30bp-60deg", "1kx5", "one DNA end's last 30 bp swung 60° off the core",
     lambda t: unwrap_dna(t, 30, 60, (1,))),
    ("nucleosome", "unwrap-both-30bp-60deg", "1kx5", "both DNA ends' last 30 bp swung 60° off the core",
     lambda t: unwrap_dna(t, 30, 60, (1, -1))),
    ("spike-prefusion", "6vxx-closed", "6vxx", "SARS-CoV-2 spike ectodomain, closed, 3 RBDs down (cryo-EM)", None),
    ("spike-prefusion", "6zge-closed", "6zge", "SARS-CoV-2 spike, uncleavable furin site, closed (cryo-EM)", None),
    ("spike-prefusion", "6xr8-full-length", "6xr8", "SARS-CoV-2 full-length spike, pre-fusion (cryo-EM)", None),
    ("spike-prefusion", "6vyb-1-rbd-up", "6vyb", "SARS-CoV-2 spike ectodomain, one RBD up (cryo-EM)", None),
    ("spike-prefusion", "2-rbds-up", "6vyb", "6vyb with a second RBD up (its up motion, by the trimer's symmetry)",
     lambda t: rbds_up(t, 2)),
    ("spike-prefusion", "3-rbds-up", "6vyb", "6vyb with all three RBDs up (its up motion, by the trimer's symmetry)",
     lambda t: rbds_up(t, 3)),
    ("spike-postfusion", "straight", "6xra", "SARS-CoV-2 spike, post-fusion S2 trimer (cryo-EM, partial model)", None),
    *(("spike-postfusion", f"bent-{degrees}deg", "6xra", f"post-fusion rod bent {degrees}° at 55% of its length",
        partial(bend_rod, degrees=degrees)) for degrees in (5, 10, 15, 20, 30)),
    ("proteasome-20s", "deposited", "3j9i",
     "Thermoplasma acidophilum 20S proteasome, alpha7 beta7 beta7 alpha7 (cryo-EM)", None),
    *(("proteasome-20s", f"gate-open-{degrees}deg", "3j9i", f"alpha subunits tilted {degrees}° outward (gate opening)",
        partial(open_gate, degrees=degrees)) for degrees in (6, 12, 20)),
    ("proteasome-20s", "alpha-twist-15deg", "3j9i", "alpha rings twisted 15° about the barrel axis",
     lambda t: twist_alpha_rings(t, 15)),
    ("proteasome-20s", "alpha-out-8A", "3j9i", "alpha rings moved 8 Å out along the barrel axis",
     lambda t: expand_alpha_rings(t, 8)),
)


def superpose_entry(table: AtomTable, reference: AtomTable) -> AtomTable:
    """`table` moved onto `reference` (another entry of the same complex, in its own frame) by
    the CA atoms both model, matched by chain and residue number, so their maps share a frame."""
    def keyed(t: AtomTable) -> dict[tuple[str, int], np.ndarray]:
        ca = t.atom_name == "CA"
        return {(str(c), int(r)): x for c, r, x in zip(t.chain[ca], t.residue[ca], t.coords[ca], strict=True)}

    mine, theirs = keyed(table), keyed(reference)
    common = sorted(set(mine) & set(theirs))
    fit = motions.superpose(np.array([mine[k] for k in common]), np.array([theirs[k] for k in common]))
    return dataclasses.replace(table, coords=fit.apply(table.coords))


def build_models(structures: Path) -> list[ProteinModel]:
    """Every conformation of the catalogue, reading each structure file once; entries of a
    composition after its first are superposed onto the first."""
    tables: dict[str, AtomTable] = {}
    first_entry: dict[str, str] = {}
    models = []
    for composition, conformation, pdb_id, description, edit in CATALOGUE:
        first = first_entry.setdefault(composition, pdb_id)
        if pdb_id not in tables:
            table = read_atom_table(Path(structures) / f"{pdb_id}.pdb.gz")
            tables[pdb_id] = table if first == pdb_id else superpose_entry(table, tables[first])
        table = tables[pdb_id]
        coords = table.coords if edit is None else edit(table)
        models.append(ProteinModel(f"{composition}/{conformation}", composition, conformation, pdb_id, description,
                                   coords, table.weights))
    return models
