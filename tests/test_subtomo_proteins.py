"""The embedded `subtomo-proteins` dataset: real atomic models' maps, shipped, through the simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dcbench_plugins.datasets.subtomo_proteins import SubtomoProteins, map_difference, shipped_maps
from dcbench_plugins.subtomo import motions

STRUCTURES = Path(__file__).resolve().parents[2] / "shared" / "structures"


def test_shipped_maps_have_the_documented_shape_voxel_and_entries() -> None:
    maps, metadata = shipped_maps()
    assert maps.shape == (24, 32, 32, 32) and maps.dtype == np.float32
    assert metadata["settings"] == {"box": 32, "voxel": 10.0, "resolution": 20.0}
    assert metadata["compositions"] == ["nucleosome", "spike-prefusion", "spike-postfusion", "proteasome-20s"]
    entries = metadata["maps"]
    for composition in metadata["compositions"]:
        assert sum(e["composition"] == composition for e in entries) == 6
    assert {e["pdb_id"] for e in entries} == {"1kx5", "6vxx", "6zge", "6xr8", "6vyb", "6xra", "3j9i"}
    assert all(e["description"] for e in entries)
    # every map is a positive density inside the box: nothing on its faces (the 217 Å post-fusion rod
    # comes within 3 voxels of them, so the simulator's shifts crop its tips in some particles)
    assert (maps.min(axis=(1, 2, 3)) >= 0).all()
    faces = np.stack([np.abs(maps[:, [0, -1]]).max((1, 2, 3)), np.abs(maps[:, :, [0, -1]]).max((1, 2, 3)),
                      np.abs(maps[:, :, :, [0, -1]]).max((1, 2, 3))]).max(0)
    assert (faces < 0.01 * maps.max(axis=(1, 2, 3))).all()


def test_conformations_differ_from_their_composition_by_the_documented_amounts() -> None:
    maps, metadata = shipped_maps()
    entries = metadata["maps"]
    first: dict[str, int] = {}
    for index, entry in enumerate(entries):
        base = first.setdefault(entry["composition"], index)
        measured = map_difference(maps[index], maps[base])
        assert measured == pytest.approx(entry["map_difference"], abs=1e-3), entry["name"]
        if index != base:  # each conformation is visibly different at 20 Å, from subtle (~0.1) to obvious
            assert 0.08 < measured < 1.0, entry["name"]
    # within each composition: from subtle to obvious, as the paper's conformations span
    for composition in metadata["compositions"]:
        spread = [e["map_difference"] for e in entries if e["composition"] == composition][1:]
        assert min(spread) < 0.3 and max(spread) > 0.35, composition


@pytest.mark.skipif(not STRUCTURES.is_dir(), reason="needs ../shared/structures (the PDB models)")
def test_shipped_maps_are_what_the_build_script_makes_from_the_models() -> None:
    from dcbench_plugins.subtomo.protein_models import build_models
    from dcbench_plugins.subtomo.simulate import SimulationSettings, reference_maps

    maps, metadata = shipped_maps()
    models = build_models(STRUCTURES)
    assert [m.name for m in models] == [e["name"] for e in metadata["maps"]]
    rebuilt = reference_maps(models, SimulationSettings())
    np.testing.assert_allclose(rebuilt, maps, atol=1e-4 * float(maps.max()))


def test_rigid_motions_superpose_and_interpolate() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(40, 3)) * 10
    motion = motions.rotation_about(np.array([1.0, 2.0, 3.0]), 40, np.array([5.0, 0.0, 0.0]))
    moved = motion.apply(points)
    assert motions.rmsd(motions.superpose(points, moved).apply(points), moved) < 1e-9
    half = motion.fraction(0.5)
    assert motions.rmsd(half.apply(half.apply(points)), moved) < 1e-9


def test_subtomo_proteins_loads_four_compositions_of_six_conformations() -> None:
    bundle = SubtomoProteins(per_structure=5).load(seed=0)
    train, test = bundle.train, bundle.test
    assert train.x.shape[1:] == (1, 32, 32, 32) and len(train) + len(test) == 120
    assert bundle.class_names == ["nucleosome", "spike-prefusion", "spike-postfusion", "proteasome-20s"]
    assert set(np.unique(train.content)) == {0, 1, 2, 3}
    for composition in range(4):  # six conformations in each composition, ids of their own
        assert len(np.unique(train.conformation[train.content == composition])) == 6
    assert bundle.conformation_names[7] == "spike-prefusion/6zge-closed"
    flat = test.x.reshape(len(test), -1)
    np.testing.assert_allclose(flat.std(1), 1, atol=1e-3)
    assert bundle.references.maps.shape == (24, 32, 32, 32) and bundle.references.voxel == 10.0
    assert "1kx5" in bundle.provenance["source"]
