"""The embedded `subtomo-sim` dataset: procedural complexes through the simulator."""

from __future__ import annotations

import numpy as np
import pytest

from dcbench_plugins.datasets.subtomo_sim import SubtomoSim
from dcbench_plugins.subtomo import procedural


def test_procedural_complexes_are_three_compositions_of_six_hinge_conformations() -> None:
    models = procedural.complexes()
    assert len(models) == 18
    assert len({m.composition for m in models}) == 3 and len({m.conformation for m in models}) == 6
    first, last = models[0], models[5]  # the same composition at 0 and 75 degrees
    assert first.composition == last.composition and len(first.coords) == len(last.coords)
    moved = np.linalg.norm(first.coords - last.coords, axis=1)
    assert moved.min() == 0.0 and moved.max() > 40.0  # the fixed domains stay, the moving ones swing
    # everything fits a 32^3 box of 1 nm after a 3-voxel shift in any direction
    for m in models:
        centred = m.coords - np.average(m.coords, axis=0, weights=m.weights)
        assert np.linalg.norm(centred, axis=1).max() + 30 * np.sqrt(3) < 160


def test_subtomo_sim_loads_labelled_zscored_volumes_with_references() -> None:
    bundle = SubtomoSim(per_structure=5).load(seed=0)
    train, test = bundle.train, bundle.test
    assert train.x.shape[1:] == (1, 32, 32, 32) and len(train) + len(test) == 90
    assert len(test) == 18  # one test particle per structure (stratified, 20%)
    assert set(np.unique(train.content)) == {0, 1, 2} and set(np.unique(train.conformation)) == set(range(6))
    flat = train.x.reshape(len(train), -1)
    np.testing.assert_allclose(flat.mean(1), 0, atol=1e-4)
    np.testing.assert_allclose(flat.std(1), 1, atol=1e-3)
    assert train.transform_params.shape == (len(train), 7)
    np.testing.assert_allclose(np.linalg.norm(train.transform_params[:, :4], axis=1), 1, atol=1e-5)
    refs = bundle.references
    assert refs.maps.shape == (18, 32, 32, 32) and list(refs.content) == [0] * 6 + [1] * 6 + [2] * 6
    assert bundle.ctf == {"defocus_um": -5.0, "voltage_kv": 300.0, "cs_mm": 1.7, "amplitude_contrast": 0.1}
    assert bundle.class_names == ["hinged-dimer", "clamp", "lidded-barrel"]


def test_subtomo_sim_is_the_same_for_every_run_seed_and_changes_with_the_simulation_seed() -> None:
    a = SubtomoSim(per_structure=3).load(seed=0)
    b = SubtomoSim(per_structure=3).load(seed=7)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    c = SubtomoSim(per_structure=3, simulation_seed=1).load(seed=0)
    assert not np.array_equal(a.train.x, c.train.x)
    np.testing.assert_array_equal(a.train.content, c.train.content)


def test_subtomo_sim_rejects_unknown_options() -> None:
    with pytest.raises(ValueError, match="no option"):
        SubtomoSim(per_structures=3)


def test_a_3d_run_on_subtomo_sim_scores_ari_and_draws_volume_figures(tmp_path) -> None:
    import json

    from click.testing import CliRunner

    from dcbench.cli import cli

    result = CliRunner().invoke(cli, [
        "run", "--method", "vae2", "--dataset", "subtomo-sim", "--epochs", "1", "--metric", "ari", "--metric", "fsc",
        "--set", "data.per_structure=3", "--set", "batch_size=16", "--runs-dir", str(tmp_path / "runs"),
        "--leaderboard-dir", str(tmp_path / "boards")])
    assert result.exit_code == 0, result.output
    run_dir = next((tmp_path / "runs" / "subtomo-sim" / "vae2").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"ARI(composition)", "ARI(conformation)", "AUC-FSC(mean)", "AUC-FSC(min)"}
    assert 0 <= metrics["AUC-FSC(min)"] <= metrics["AUC-FSC(mean)"] <= 0.5
    assert -1 <= metrics["ARI(composition)"] <= 1  # conformation is n/a: one test particle per structure
    for name in ("volume_montage.png", "transfer_grid.png", "content_embedding.png", "fsc_averages.png"):
        assert (run_dir / "figures" / name).stat().st_size > 0
    board = (tmp_path / "boards" / "subtomo-sim.md").read_text()
    assert "vae2" in board and "ARI(composition)" in board and "data.per_structure=3" in board
