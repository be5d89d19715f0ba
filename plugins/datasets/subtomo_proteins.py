"""`subtomo-proteins`: simulated subtomograms of four real proteins x six conformations each;
embedded, no files needed.

The maps ship with dcbench (data/subtomo_proteins.npz, 24 x 32^3 float32, built by
scripts/build_protein_maps.py with the simulator's core from public PDB entries; what each map is
lies beside it in subtomo_proteins.json and in docs/subtomograms.md):

- nucleosome (1kx5): wrapped, and DNA ends unwrapped by rigid-body motions;
- spike pre-fusion: 6vxx, 6zge, 6xr8, 6vyb (one RBD up), and two and three RBDs up;
- spike post-fusion (6xra): straight and bent at a hinge;
- 20S proteasome (3j9i), in place of the paper's fatty acid synthase: as deposited, its alpha
  subunits tilted outward (gate opening), its alpha rings twisted or moved out.

Particles are simulated from these maps exactly as `subtomo-sim` simulates its procedural
complexes (same options, settings, z-scoring, split and cache). Labels: content = composition;
conformation = the map's index (each composition's six conformations have their own ids, so the
names say which is which).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dcbench.errors import DataError
from dcbench_plugins.datasets.subtomo_sim import StructureSet, SubtomoSim
from dcbench_plugins.subtomo.simulate import SimulationSettings

DATA_DIR = Path(__file__).resolve().parent / "data"
MAPS_FILE = "subtomo_proteins.npz"
METADATA_FILE = "subtomo_proteins.json"


def map_difference(volume: np.ndarray, reference: np.ndarray) -> float:
    """||volume - reference|| / ||reference||: how far a conformation's map is from its
    composition's first (0: identical)."""
    return float(np.linalg.norm(volume - reference) / np.linalg.norm(reference))


def shipped_maps() -> tuple[np.ndarray, dict]:
    """(maps (24, 32, 32, 32) float32, metadata) as shipped."""
    try:
        with np.load(DATA_DIR / MAPS_FILE, allow_pickle=False) as archive:
            maps = archive["maps"]
        metadata = json.loads((DATA_DIR / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, KeyError, ValueError) as error:
        raise DataError(f"the shipped protein maps in {DATA_DIR} cannot be read ({error}); reinstall dcbench, "
                        "or rebuild them with scripts/build_protein_maps.py") from None
    if len(maps) != len(metadata["maps"]):
        raise DataError(f"{DATA_DIR / MAPS_FILE} holds {len(maps)} maps but {METADATA_FILE} describes "
                        f"{len(metadata['maps'])}; rebuild them with scripts/build_protein_maps.py")
    return maps, metadata


class SubtomoProteins(SubtomoSim):
    name = "subtomo-proteins"
    option_defaults = {"per_structure": 75, "snr": 0.1, "wedge": 0.0, "simulation_seed": 0, "test_fraction": 0.2}

    def structures(self, settings: SimulationSettings) -> StructureSet:
        maps, metadata = shipped_maps()
        built = metadata["settings"]
        if (built["box"], built["voxel"], built["resolution"]) != (settings.box, settings.voxel, settings.resolution):
            raise DataError(f"the shipped protein maps are {built['box']}^3 at {built['voxel']} Å and "
                            f"{built['resolution']} Å resolution, not the simulation's; rebuild them with "
                            "scripts/build_protein_maps.py")
        entries = metadata["maps"]
        compositions = list(metadata["compositions"])
        names = [e["name"] for e in entries]
        return StructureSet(maps, np.array([compositions.index(e["composition"]) for e in entries]),
                            np.arange(len(entries)), compositions, names, names,
                            "real proteins (PDB " + ", ".join(dict.fromkeys(e["pdb_id"] for e in entries))
                            + "), maps shipped with dcbench (scripts/build_protein_maps.py)")
