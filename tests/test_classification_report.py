"""The classification report: Hungarian-matched confusion matrices, precision/recall/F1, chance,
written by runs with conformation labels, rewritten by `dcbench report`, linked by the board."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from plugin_helpers import run_dcbench

import dcbench
import dcbench.registry
from dcbench.api import Codes, DataBundle, Dataset, Method, Split
from dcbench.classification_report import build_report, matched_section, report_from_run
from dcbench.cli import cli
from dcbench.config import RunSpec
from dcbench.registry import build_registry
from dcbench.runner import execute


def test_perfect_clusters_give_accuracy_one_and_a_diagonal_confusion() -> None:
    true = np.repeat([0, 1, 2], [4, 3, 5])
    section = matched_section(true, true, ["a", "b", "c"], seed=0)
    assert section["matched_accuracy"] == 1.0
    assert section["confusion"] == np.diag([4, 3, 5]).tolist()
    assert [c["matched_to"] for c in section["clusters"]] == ["a", "b", "c"]
    assert all(c["precision"] == c["recall"] == c["f1"] == 1.0 for c in section["per_class"])
    assert [c["support"] for c in section["per_class"]] == [4, 3, 5]
    assert 1 / 3 <= section["chance_accuracy"] < 1


def test_permuted_cluster_ids_are_matched_back_by_the_hungarian_algorithm() -> None:
    true = np.repeat([0, 1, 2], [4, 3, 5])
    clusters = np.array([7, 3, 5])[true]  # class 0 -> cluster 7, 1 -> 3, 2 -> 5
    section = matched_section(true, clusters, None, seed=0)
    assert section["matched_accuracy"] == 1.0
    assert section["confusion"] == np.diag([4, 3, 5]).tolist()  # columns reordered onto the diagonal
    assert [(c["id"], c["matched_to"]) for c in section["clusters"]] == [(7, "0"), (3, "1"), (5, "2")]
    assert [c["cluster"] for c in section["per_class"]] == [7, 3, 5]


def test_a_two_class_mix_scores_as_computed_by_hand() -> None:
    # class 0: 5 in cluster A, 1 in B; class 1: 2 in A, 2 in B -> A is class 0, B class 1
    true = np.array([0] * 6 + [1] * 4)
    clusters = np.array(["A"] * 5 + ["B"] + ["A"] * 2 + ["B"] * 2) == "B"
    section = matched_section(true, clusters.astype(int), ["open", "closed"], seed=0)
    assert section["confusion"] == [[5, 1], [2, 2]]
    assert section["matched_accuracy"] == pytest.approx(0.7)
    open_, closed = section["per_class"]
    assert (open_["precision"], open_["recall"], open_["support"]) == (pytest.approx(5 / 7), pytest.approx(5 / 6), 6)
    assert (closed["precision"], closed["recall"], closed["support"]) == (pytest.approx(2 / 3), 0.5, 4)
    assert open_["f1"] == pytest.approx(2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6))
    assert section["macro"]["recall"] == pytest.approx((5 / 6 + 0.5) / 2)


def test_more_or_fewer_clusters_than_classes_leave_columns_or_classes_unmatched() -> None:
    true = np.array([0, 0, 1, 1])
    more = matched_section(true, np.array([0, 0, 1, 2]), None, seed=0)
    assert more["k"] == 3 and more["clusters"][-1]["matched_to"] is None and more["matched_accuracy"] == 0.75
    fewer = matched_section(true, np.zeros(4, int), None, seed=0)
    assert fewer["matched_accuracy"] == 0.5 and fewer["per_class"][1]["cluster"] is None
    assert fewer["per_class"][1]["f1"] == 0.0


def test_chance_is_about_one_over_k_for_many_balanced_particles_and_seeded() -> None:
    true = np.repeat(np.arange(4), 500)
    clusters = np.random.default_rng(1).permutation(true)
    first, again = (matched_section(true, clusters, None, seed=3)["chance_accuracy"] for _ in range(2))
    assert first == again and 0.25 < first < 0.28


def test_conformations_are_clustered_within_each_composition() -> None:
    composition = np.repeat([0, 1, 2], 8)
    conformation = np.array([0, 1] * 4 + [2, 3] * 4 + [4] * 8)  # ids shared by all compositions' names
    noise = np.random.default_rng(0).normal(size=(24, 2))
    exact = np.column_stack([composition * 10.0, conformation * 3.0])
    names = ["a0", "a1", "b0", "b1", "c0"]
    report = build_report(composition, exact, noise, 0, conformation=conformation, conformation_names=names)
    assert report["composition"]["matched_accuracy"] == 1.0
    scored, _, single = report["conformation"]["per_composition"]
    assert [c["name"] for c in scored["classes"]] == ["a0", "a1"] and scored["matched_accuracy"] == 1.0
    assert single["skipped"] == "one conformation: nothing to separate"
    assert report["conformation"]["compositions_scored"] == 2 and report["conformation"]["mean_matched_accuracy"] == 1.0
    in_z = build_report(composition, noise, exact, 0, conformation=conformation, conformation_code="transformation")
    assert in_z["conformation"]["mean_matched_accuracy"] == 1.0
    # an assignment-only method (Hydra): compositions from its classes, no codes for conformations
    empty = np.zeros((24, 0))
    hydra = build_report(composition, empty, empty, 0, conformation=conformation, assignments=(composition + 1) % 3)
    assert hydra["composition"]["matched_accuracy"] == 1.0 and "assignments" in hydra["composition_source"]
    assert hydra["conformation"]["mean_matched_accuracy"] is None


# ----------------------------------------------------------------------------- runs and the CLI
class Conformations(Dataset):
    """4x4 images whose first two pixels are the composition and the conformation."""

    name = "tiny-conformations"
    shape = (1, 4, 4)
    default_metrics = ("ari",)

    def load(self, seed: int) -> DataBundle:
        composition = np.repeat([0, 1, 2], 20)
        conformation = np.array([0, 1] * 10 + [2, 3] * 10 + [4] * 20)
        x = np.zeros((60, 1, 4, 4), np.float32)
        x[:, 0, 0, 0], x[:, 0, 0, 1] = composition / 2, conformation / 4
        test = np.arange(60) // 2 % 2 == 1  # both conformations of each composition in each split
        split = lambda idx: Split(x[idx], composition[idx], conformation[idx])  # noqa: E731
        return DataBundle(split(~test), split(test), class_names=["alpha", "beta", "gamma"],
                          conformation_names=["a-open", "a-shut", "b-open", "b-shut", "g"])


class Oracle(Method):
    """Reads the labels' pixels: composition into c, conformation into z (and says so)."""

    name = "oracle"
    conformation_code = "transformation"

    @classmethod
    def default_config(cls, preset, input_shape):
        return {"epochs": 1}

    def fit(self, train, on_epoch):
        on_epoch(0, {"loss": 0.0})

    def encode(self, x):
        return Codes(x[:, 0, 0, :1], x[:, 0, 0, 1:2])

    def save(self, path):
        Path(path).write_bytes(b"oracle")

    def load_state(self, path):
        pass


class Plugin:
    __name__ = "report-test-plugin"

    @dcbench.hookimpl
    def register_methods(self, register):
        register("oracle", Oracle)

    @dcbench.hookimpl
    def register_datasets(self, register):
        register(Conformations.name, Conformations)


@pytest.fixture
def finished_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(dcbench.registry, "_default", build_registry(extra_plugins=[Plugin()]))
    spec = RunSpec(method="oracle", dataset=Conformations.name, runs_dir=tmp_path / "runs",
                   leaderboard_dir=tmp_path / "boards", device="cpu")
    return execute(spec, dcbench.registry.get_registry()).run_dir


def test_a_run_with_conformation_labels_writes_the_report_and_the_board_links_it(finished_run: Path,
                                                                                 tmp_path: Path) -> None:
    report = json.loads((finished_run / "classification_report.json").read_text())
    assert report["method"] == "oracle" and report["composition"]["matched_accuracy"] == 1.0
    assert report["conformation"]["code"] == "transformation"  # the method's claim, as ARI reads it
    assert report["conformation"]["mean_matched_accuracy"] == 1.0
    text = (finished_run / "classification_report.md").read_text()
    assert "| true composition \\ cluster" in text and "a-shut (cluster" in text and "not scored" in text
    assert (finished_run / "classification_report.png").read_bytes()[:4] == b"\x89PNG"

    board = (tmp_path / "boards" / "tiny-conformations.md").read_text()
    published = "figures/tiny-conformations-oracle-quick-seed0-classification-report.md"
    assert f"[classification report]({published})" in board
    assert "[confusion matrices](figures/tiny-conformations-oracle-quick-seed0-confusion-matrices.png)" in board
    copy = (tmp_path / "boards" / published).read_text()  # its figure link points at the published copy
    assert "](tiny-conformations-oracle-quick-seed0-confusion-matrices.png)" in copy


def test_dcbench_report_rewrites_identical_json_from_codes_npz(finished_run: Path) -> None:
    path = finished_run / "classification_report.json"
    written = path.read_text()
    path.unlink()
    result = CliRunner().invoke(cli, ["report", str(finished_run)])
    assert result.exit_code == 0, result.output
    assert "compositions: matched accuracy 1.000" in result.output
    assert path.read_text() == written


def test_dcbench_report_links_a_report_written_after_the_row_from_the_board(finished_run: Path,
                                                                           tmp_path: Path) -> None:
    boards = tmp_path / "boards"
    jsonl = boards / "tiny-conformations.jsonl"
    row = json.loads(jsonl.read_text().splitlines()[-1])
    del row["figures"]  # as a run finished before the report existed
    jsonl.write_text(json.dumps(row) + "\n")
    result = CliRunner().invoke(cli, ["report", str(finished_run), "--leaderboard-dir", str(boards)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == 2 and lines[1]["metrics"] == lines[0]["metrics"] and "republished_at" in lines[1]
    assert "[classification report](figures/" in (boards / "tiny-conformations.md").read_text()
    assert "| 1 " in (boards / "tiny-conformations.md").read_text()  # still one run on the page (n = 1)


def test_old_runs_without_names_show_ids_or_load_the_names_again(finished_run: Path) -> None:
    codes = finished_run / "codes.npz"
    with np.load(codes) as npz:
        arrays = {k: npz[k] for k in npz.files if not k.endswith("_names")}  # as runs before the report
    np.savez(codes, **arrays)
    plain = report_from_run(finished_run)
    assert [c["name"] for c in plain["composition"]["classes"]] == ["0", "1", "2"]
    named = report_from_run(finished_run, load_names=True)
    assert named == json.loads((finished_run / "classification_report.json").read_text())


def test_a_run_without_conformation_labels_writes_no_report(tmp_path: Path) -> None:
    from dcbench.classification_report import write_for_run

    split = Split(np.zeros((4, 1, 4, 4), np.float32), np.array([0, 0, 1, 1]))
    codes = Codes(np.zeros((4, 1)), np.zeros((4, 1)))
    assert write_for_run(tmp_path, Oracle({}, (1, 4, 4), "cpu", 0), DataBundle(split, split), codes, 0) == {}
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make, fragment", [
    (lambda tmp: tmp / "missing", "is not a folder"),
    (lambda tmp: tmp, "no readable config.json"),
])
def test_a_bad_run_dir_is_one_line(tmp_path: Path, make, fragment: str) -> None:
    result = run_dcbench(["report", str(make(tmp_path))], tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
