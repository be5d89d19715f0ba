"""`dcbench calibrate`: the labels' ceiling and the shuffled floor are computed from the data by
the dataset's own metrics, land on the leaderboard as marked rows, and bad input fails first."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
from click.testing import CliRunner

import dcbench.registry
from dcbench import leaderboard, reproduce
from dcbench.api import DataBundle, MetricInput, Split
from dcbench.calibration import plan, reference_codes, run_calibration
from dcbench.cli import cli
from dcbench.errors import DcbenchError
from dcbench.registry import get_registry
from dcbench.runner import load_data
from dcbench_plugins.metrics.fsc import FSC

# 3 compositions x 6 conformations x 4 particles, half of them test: 12 test particles per
# composition, enough for k = 6 conformation clusters in each.
TINY = ("data.per_structure=4", "data.test_fraction=0.5")


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pytest.MonkeyPatch]:
    """What conftest's isolation does, for module-scoped fixtures, plus a cheap fsc budget."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DCBENCH_PLUGINS", "")
        patch.setenv("DCBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setattr(dcbench.registry, "_default", None)
        patch.setattr(FSC, "settings", MappingProxyType({**FSC.settings, "max_particles": 6, "iterations": 1,
                                                         "step_degrees": 60.0}))
        yield patch


@pytest.fixture(scope="module")
def calibrated(isolated: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One `dcbench calibrate` through the command line, seed 0, on the tiny set."""
    root = tmp_path_factory.mktemp("calibrate")
    args = ["calibrate", "-d", "subtomo-sim", "--seeds", "0", "--runs-dir", str(root / "runs"),
            "--leaderboard-dir", str(root / "boards")]
    for item in TINY:
        args += ["--set", item]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root, result.output


def rows_by_kind(root: Path) -> dict[str, dict]:
    rows = leaderboard.read_rows(root / "boards", "subtomo-sim")
    return {row["calibration"]: row for row in rows}


def test_the_ceiling_recovers_the_labels_and_the_floor_sits_at_chance(calibrated) -> None:
    rows = rows_by_kind(calibrated[0])
    ceiling, floor = rows["ceiling"]["metrics"], rows["floor"]["metrics"]
    assert ceiling["ARI(composition)"] == pytest.approx(1.0) and ceiling["ARI(conformation)"] == pytest.approx(1.0)
    assert abs(floor["ARI(composition)"]) < 0.2 and abs(floor["ARI(conformation)"]) < 0.2
    # pure clusters average to better maps than clusters of random members
    assert ceiling["AUC-FSC(mean)"] > floor["AUC-FSC(mean)"] > 0
    assert set(ceiling) == {"ARI(composition)", "ARI(conformation)", "AUC-FSC(mean)", "AUC-FSC(min)"}  # no dscore


def test_rows_are_marked_point_to_their_runs_and_render(calibrated) -> None:
    root, output = calibrated
    rows = rows_by_kind(root)
    assert set(rows) == {"ceiling", "floor"}
    for kind, row in rows.items():
        assert row["method"] == {"ceiling": "labels (ceiling)", "floor": "shuffled labels (floor)"}[kind]
        assert row["preset"] == "reference data.per_structure=4 data.test_fraction=0.5" and row["seed"] == 0
        assert row["directions"]["ARI(composition)"] == "max" and "git_commit" in row and row["dcbench"]
        run = Path(row["run"])
        assert json.loads((run / "metrics.json").read_text()) == row["metrics"]
        provenance = json.loads((run / "provenance.json").read_text())
        assert provenance["status"] == "finished" and provenance["data"]["test_size"] == 36
        with np.load(run / "codes.npz") as codes:
            assert codes["test_content"].shape == (36, 3 + 6) and codes["test_transformation"].shape == (36, 0)
    assert "labels (ceiling): ARI(composition) 1.000" in output  # progress, then the board
    markdown = (root / "boards" / "subtomo-sim.md").read_text()
    ranks = markdown.split("## Ranks")[1]
    assert "| labels (ceiling)" in ranks and "| shuffled labels (floor)" in ranks
    assert "| shuffled labels (floor)" in markdown.split("## Ranks")[0]  # rows without a budget render
    # `dcbench reproduce` has no method to rerun for them: it leaves them out, and says so if asked for them
    assert reproduce.cells_from_rows(leaderboard.read_rows(root / "boards", "subtomo-sim")) == []
    with pytest.raises(DcbenchError, match="calibration rows, .* `dcbench calibrate -d subtomo-sim`"):
        reproduce.load_cells(root / "boards", "subtomo-sim", methods=["labels (ceiling)"])


def test_the_numbers_come_from_the_data(isolated: pytest.MonkeyPatch, calibrated) -> None:
    """Nothing is stored: the same labels on cleaner particles (SNR 10 instead of 0.1) score a
    better AUC-FSC, through the same planning, loading and codes as the command."""
    registry = get_registry()
    p = plan("subtomo-sim", [0], [*TINY, "data.snr=10.0"], registry)
    data = load_data(p.dataset_cls, p.data_settings, None, 0)
    train, test = reference_codes("ceiling", data, seed=0)
    clean = FSC().compute(MetricInput(train, test, data, None, 0))  # type: ignore[arg-type]
    noisy = rows_by_kind(calibrated[0])["ceiling"]["metrics"]
    assert clean["AUC-FSC(mean)"] > noisy["AUC-FSC(mean)"] + 0.05


def test_the_floor_keeps_the_cluster_sizes_and_pairs_but_shuffles_membership() -> None:
    content = np.repeat([0, 1, 2], 20)
    conformation = np.tile(np.arange(4), 15)
    split = Split(np.zeros((60, 1, 4, 4, 4), np.float32), content, conformation)
    data = DataBundle(split, split)
    _, ceiling = reference_codes("ceiling", data, seed=0)
    _, floor = reference_codes("floor", data, seed=0)
    assert np.array_equal(ceiling.content[:, :3].argmax(1), content)
    assert np.allclose(ceiling.content[:, 3:].max(1), 0.1)  # conformation one-hots at a tenth of the scale
    rows = lambda codes: sorted(map(tuple, codes.content))  # noqa: E731
    assert rows(floor) == rows(ceiling)  # the same (composition, conformation) pairs, reassigned
    assert (floor.content[:, :3].argmax(1) != content).mean() > 0.4
    _, again = reference_codes("floor", data, seed=0)
    assert np.array_equal(again.content, floor.content)  # seeded


@pytest.mark.parametrize(("dataset", "seeds", "settings", "message"), [
    ("subtomo-simm", "0", [], "unknown dataset 'subtomo-simm'"),
    ("digits", "0", [], "'digits' has no default metric that labels calibrate .* have one: .*subtomo-sim"),
    ("subtomo-sim", "2-1", [], "runs backwards"),
    ("subtomo-sim", "0", ["lr=1"], "unknown setting for calibrate 'lr'"),
    ("subtomo-sim", "0", ["data.snr=loud"], "expects a float"),
])
def test_bad_input_fails_in_one_line_before_any_work(tmp_path: Path, dataset: str, seeds: str, settings: list[str],
                                                     message: str) -> None:
    with pytest.raises(DcbenchError, match=message):
        run_calibration(dataset, seeds, settings, None, tmp_path / "runs", tmp_path / "boards")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "boards").exists()
