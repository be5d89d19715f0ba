"""`subtomo-sim`: simulated subtomograms of procedural complexes; embedded, no files needed.

The 3 x 6 pseudo-atomic complexes of `dcbench_plugins.subtomo.procedural` go through the
simulator with the paper's settings (32^3 box of 1 nm voxels, 20 Å Gaussian atoms, uniform random
rotations, shifts up to 3 voxels, CTF at -5 µm / 300 kV / Cs 1.7 mm / 10% amplitude contrast, SNR
0.1), then each volume is z-scored as in the paper's code. Labels: content = composition,
conformation = hinge angle within the composition. The data are the same for every run seed
(`simulation_seed` picks them), so seeds vary training only; the fixed split of the other volume
datasets (stratified by structure, random_state 0) puts `test_fraction` of each structure's
particles in the test split. The noise-free maps come with the data as references for the fsc
metric. Arrays are cached as .npz under dcbench's cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from dcbench import array_cache
from dcbench.api import DataBundle, Dataset, ReferenceMaps, Split
from dcbench.errors import DcbenchError
from dcbench.paths import dataset_cache
from dcbench.settings_checks import check_seed, is_number, is_whole
from dcbench_plugins.datasets.volumes import check_test_fraction, split_indices, zscore_
from dcbench_plugins.subtomo import procedural
from dcbench_plugins.subtomo.simulate import SimulationSettings, reference_maps, simulate_particles


@dataclass(frozen=True)
class StructureSet:
    """Noise-free maps (M, D, H, W) with each map's composition and conformation ids."""

    maps: np.ndarray
    composition_of: np.ndarray
    conformation_of: np.ndarray
    compositions: list[str]
    conformation_names: list[str]
    names: list[str]
    source: str


class SubtomoSim(Dataset):
    name = "subtomo-sim"
    shape = (1, 32, 32, 32)
    default_metrics = ("ari", "fsc", "dscore")
    option_defaults = {"per_structure": 100, "snr": 0.1, "wedge": 0.0, "simulation_seed": 0, "test_fraction": 0.2}

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """The simulation's ranges, while planning (SimulationSettings and the split would
        refuse them only after the run folder exists, in their own words)."""
        per_structure = options["per_structure"]
        if not is_whole(per_structure) or per_structure < 2:
            raise DcbenchError(f"data.per_structure must be at least 2 (one train and one test particle), got "
                               f"{per_structure!r}; set e.g. --set data.per_structure=100")
        snr = options["snr"]
        if not is_number(snr) or snr <= 0:
            raise DcbenchError(f"data.snr must be a finite number > 0 (signal variance / noise variance), got "
                               f"{snr!r}; set e.g. --set data.snr=0.1")
        wedge = options["wedge"]
        if not is_number(wedge) or not 0 <= wedge < 90:
            raise DcbenchError(f"data.wedge must be 0 (no missing wedge) or a tilt range in degrees above 0 and "
                               f"below 90, got {wedge!r}; set e.g. --set data.wedge=60")
        check_seed(options["simulation_seed"], "data.simulation_seed")
        check_test_fraction(options["test_fraction"])

    def settings(self) -> SimulationSettings:
        wedge = float(self.options["wedge"])
        return SimulationSettings(snr=float(self.options["snr"]), wedge_tilt_degrees=wedge if wedge > 0 else None)

    def structures(self, settings: SimulationSettings) -> StructureSet:
        """The noise-free maps to simulate from, with their labels."""
        models = procedural.complexes()
        compositions = list(dict.fromkeys(m.composition for m in models))
        conformations = list(dict.fromkeys(m.conformation for m in models))
        return StructureSet(reference_maps(models, settings),
                            np.array([compositions.index(m.composition) for m in models]),
                            np.array([conformations.index(m.conformation) for m in models]),
                            compositions, conformations, [m.name for m in models],
                            "procedural pseudo-atomic complexes (dcbench_plugins.subtomo.procedural)")

    def load(self, seed: int) -> DataBundle:
        self.check_options(self.options)  # planning did; cheap, and load() may be called directly
        settings = self.settings()
        per_structure = int(self.options["per_structure"])
        found = self.structures(settings)
        arrays = self._simulate(found.maps, per_structure, settings)
        x = arrays["x"][:, None]
        structure = arrays["structure"]
        poses = np.concatenate([arrays["quaternions"], arrays["shifts"]], axis=1).astype(np.float32)
        content, conformation = found.composition_of[structure], found.conformation_of[structure]
        train, test, how = split_indices(content, conformation, float(self.options["test_fraction"]))

        def split(idx: np.ndarray) -> Split:
            return Split(x[idx], content[idx], conformation[idx], poses[idx])

        return DataBundle(
            train=split(train), test=split(test), class_names=found.compositions,
            provenance={"source": found.source, "structures": found.names, "per_structure": per_structure,
                        "simulation_seed": int(self.options["simulation_seed"]), "simulation": settings.as_dict(),
                        "preprocessing": "per-volume z-score", "split": how,
                        "transform_params": "qw, qx, qy, qz, shift_x, shift_y, shift_z (voxels)"},
            references=ReferenceMaps(found.maps, found.composition_of, found.conformation_of, found.names,
                                     voxel=settings.voxel),
            conformation_names=found.conformation_names,
            ctf=settings.ctf_parameters() if settings.ctf else None,
        )

    def _simulate(self, maps: np.ndarray, per_structure: int, settings: SimulationSettings) -> dict[str, np.ndarray]:
        """Particles (z-scored), from the cache when the same maps and settings were simulated before."""
        seed = int(self.options["simulation_seed"])
        key = hashlib.sha256(maps.tobytes() + json.dumps([per_structure, seed, settings.as_dict()],
                                                         sort_keys=True).encode()).hexdigest()[:16]
        cache = dataset_cache(self.name) / f"particles-{key}.npz"
        keys = ("x", "structure", "quaternions", "shifts")
        cached = array_cache.load_arrays(cache, keys)
        if cached is not None:
            return cached
        particles = simulate_particles(maps, per_structure, seed, settings)
        zscore_(particles.volumes, lambda i: f"simulated particle {i}")
        arrays = {"x": particles.volumes, "structure": particles.structure,
                  "quaternions": particles.quaternions, "shifts": particles.shifts}
        try:
            array_cache.save_arrays(cache, arrays)
        except OSError:
            pass  # an unwritable cache only costs the next run a re-simulation
        return arrays
