"""dcbench.exports: a 3D run's classes as RELION STAR files and the fsc metric's class averages as
an MRC stack in its run folder, linked from the board for seed 0; none for 2D runs."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from click.testing import CliRunner

from dcbench import exports
from dcbench.api import Codes, DataBundle, MetricInput, ReferenceMaps, Split
from dcbench.cli import cli
from dcbench.clustering import kmeans
from dcbench.runner import subsample
from dcbench_plugins.datasets.subtomo_sim import SubtomoSim
from dcbench_plugins.datasets.volume_labels import read_labels
from dcbench_plugins.metrics.fsc import FSC


def run_cli(tmp_path: Path, *args: str) -> Path:
    result = CliRunner().invoke(cli, ["run", "--method", "spectrum", *args, "--runs-dir", str(tmp_path / "runs"),
                                      "--leaderboard-dir", str(tmp_path / "boards")])
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in (tmp_path / "runs").glob("*/spectrum/*") if p.is_dir()]
    return run_dir


def test_a_3d_run_exports_its_classes_and_averages_and_the_board_links_them(tmp_path: Path) -> None:
    run_dir = run_cli(tmp_path, "--dataset", "subtomo-sim", "--set", "data.per_structure=3",
                      "--metric", "ari", "--metric", "fsc")
    codes = np.load(run_dir / "codes.npz")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    k = len(np.unique(codes["test_labels"]))

    test = starfile.read(run_dir / exports.TEST_STAR, always_dict=True)
    particles = test["particles"]
    assert len(particles) == len(codes["test_labels"]) and "rlnImageName" not in particles  # no files behind
    np.testing.assert_array_equal(particles["rlnImageId"], np.arange(1, len(particles) + 1))
    classes = particles["rlnClassNumber"].to_numpy()
    np.testing.assert_array_equal(classes, kmeans(codes["test_content"], k, 0) + 1)  # 1-based, ari's clusters
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(codes["test_labels"], classes) == pytest.approx(metrics["ARI(composition)"])
    optics = test["optics"]
    assert optics["rlnImagePixelSize"].tolist() == [10.0] and optics["rlnImageDimensionality"].tolist() == [3]
    train = starfile.read(run_dir / exports.TRAIN_STAR, always_dict=True)["particles"]
    assert len(train) == len(codes["train_labels"]) and set(train["rlnClassNumber"]) <= set(range(1, k + 1))

    # the fsc metric's averages, computed again on the same data and codes
    data = SubtomoSim(per_structure=3).load(seed=0)
    fsc = FSC()
    scores = fsc.compute(MetricInput(Codes(codes["train_content"], codes["train_transformation"]),
                                     Codes(codes["test_content"], codes["test_transformation"]), data, None, 0))
    assert scores["AUC-FSC(mean)"] == pytest.approx(metrics["AUC-FSC(mean)"])  # exposing them changed no number
    with mrcfile.open(run_dir / exports.AVERAGES_MRC) as handle:
        assert handle.is_volume_stack() and handle.data.shape == (k, 32, 32, 32)
        assert float(handle.voxel_size.x) == pytest.approx(data.references.voxel)
        for cluster, average in fsc.cluster_averages.items():
            np.testing.assert_allclose(handle.data[cluster], average, atol=1e-5)

    # read back as labels of the mrc dataset: the classes, the pixel size
    table = read_labels(run_dir / exports.TEST_STAR)
    np.testing.assert_array_equal(np.asarray(table.composition.names, dtype=int)[table.composition.codes], classes)
    assert table.pixel_size == pytest.approx(10.0) and table.files is None

    (row,) = [json.loads(line) for line in (tmp_path / "boards" / "subtomo-sim.jsonl").read_text().splitlines()]
    board = (tmp_path / "boards" / "subtomo-sim.md").read_text()
    for kind, source in (("classes STAR", exports.TEST_STAR), ("class averages MRC", exports.AVERAGES_MRC)):
        published = row["figures"][kind]
        assert f"[{kind}]({published})" in board
        assert (tmp_path / "boards" / published).read_bytes() == (run_dir / source).read_bytes()


def test_a_2d_run_writes_no_exports(tmp_path: Path) -> None:
    run_dir = run_cli(tmp_path, "--dataset", "digits", "--set", "data.train_size=200", "--set", "data.test_size=100",
                      "--metric", "ari")
    assert not (run_dir / exports.EXPORTS_DIR).exists()
    (row,) = [json.loads(line) for line in (tmp_path / "boards" / "digits.jsonl").read_text().splitlines()]
    assert "classes STAR" not in row.get("figures", {})


def volumes(n: int) -> np.ndarray:
    """(n, 1, 4, 4, 4) volumes whose first voxel is their index, so a subset tells its rows."""
    x = np.zeros((n, 1, 4, 4, 4), dtype=np.float32)
    x[:, 0, 0, 0, 0] = np.arange(n)
    return x


def test_particle_names_and_a_methods_own_classes_go_into_the_star_files(tmp_path: Path) -> None:
    names = {split: np.array([f"{i + 1:06d}@{split}.mrcs" for i in range(n)])
             for split, n in (("train", 8), ("test", 10))}
    full_test = Split(volumes(10), np.arange(10) % 2, names=names["test"])
    test_split = subsample(full_test, 4, seed=3)  # as `--set data.test_size=4` leaves it: the names follow
    refs = ReferenceMaps(np.zeros((2, 4, 4, 4), np.float32), np.array([0, 1]), voxel=7.5)
    data = DataBundle(Split(volumes(8), np.arange(8) % 2, names=names["train"]), test_split, references=refs)
    empty = np.zeros((0, 0))
    train_codes = Codes(np.zeros((8, 0)), np.zeros((8, 0)), assignments=np.arange(8) % 3)
    test_codes = Codes(empty.reshape(4, 0), empty.reshape(4, 0), assignments=np.array([2, 0, 0, 2]))
    linked = exports.write_for_run(tmp_path, data, train_codes, test_codes, [], seed=3)
    assert linked == {"classes STAR": tmp_path / exports.TEST_STAR}  # no fsc: no averages
    assert (tmp_path / exports.TRAIN_STAR).is_file()  # written, not linked from the board

    rows = test_split.x[:, 0, 0, 0, 0].astype(int)
    particles = starfile.read(tmp_path / exports.TEST_STAR, always_dict=True)["particles"]
    assert particles["rlnImageName"].tolist() == [names["test"][i] for i in rows]
    assert particles["rlnClassNumber"].tolist() == [3, 1, 1, 3]
    table = read_labels(tmp_path / exports.TEST_STAR)  # the mrc dataset's reader takes it back
    assert table.files == [names["test"][i] for i in rows] and table.pixel_size == pytest.approx(7.5)
    train = starfile.read(tmp_path / exports.TRAIN_STAR, always_dict=True)["particles"]
    assert train["rlnImageName"].tolist() == names["train"].tolist()
    assert train["rlnClassNumber"].tolist() == [1, 2, 3, 1, 2, 3, 1, 2]  # assignments + 1


def test_train_particles_take_the_class_of_the_nearest_test_cluster_mean() -> None:
    test = Codes(np.array([[0.0], [0.2], [10.0], [10.2]]), np.zeros((4, 1)))
    train = Codes(np.array([[9.0], [1.0], [11.0]]), np.zeros((3, 1)))
    classes = exports.test_classes(test, np.array([0, 0, 1, 1]), seed=0)
    assert classes is not None and classes[0] == classes[1] != classes[2] == classes[3]
    np.testing.assert_array_equal(exports.train_classes(train, test, classes), classes[[2, 0, 2]])
