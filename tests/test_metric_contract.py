"""Issue 17, item 1: metrics declare what they need (the runner reports "not applicable" in one
place, with the reason), their settings go into config.json and the row, and the figures they
return are listed in the run folder and published on the board."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import dcbench
from dcbench import leaderboard
from dcbench.api import Codes, DataBundle, Dataset, Method, Metric, MetricInput, MetricResult, Split
from dcbench.board_markdown import render_markdown
from dcbench.config import RunSpec
from dcbench.errors import DcbenchError
from dcbench.metric_contract import score_metrics, unmet
from dcbench.records import FIGURES_FILE, figure_files, write_figures
from dcbench.registry import build_registry
from dcbench.rescore import score_run
from dcbench.runner import execute


class Tiny(Dataset):
    name = "ct-tiny"
    shape = (1, 6, 6)
    default_metrics = ("ct-needs-decoder", "ct-tuned", "ct-old")

    def load(self, seed: int) -> DataBundle:
        x = np.random.default_rng(0).random((40, 1, 6, 6), dtype=np.float32)
        labels = np.arange(40) % 2
        return DataBundle(Split(x[:30], labels[:30]), Split(x[30:], labels[30:]))


class NeedsDecoder(Metric):
    name = "ct-needs-decoder"
    columns = {"decoded": "min", "decoded too": "min"}
    requires = frozenset({"decoder"})

    def compute(self, inputs: MetricInput) -> dict[str, float]:
        raise AssertionError("a metric whose requirement is unmet must not be called")


class NeedsVolumes(NeedsDecoder):
    name = "ct-needs-volumes"
    columns = {"volume score": "max"}
    requires = frozenset({"volumes"})


class Tuned(Metric):
    """Returns a result object: a score that follows its setting, and a figure it drew."""

    name = "ct-tuned"
    columns = {"tuned": "max"}
    settings = {"pairs": 7}

    def compute(self, inputs: MetricInput) -> MetricResult:
        figures = {}
        if inputs.figures_dir is not None:
            target = inputs.figures_dir / "spectrum.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"spectrum")
            figures["spectrum"] = target
        return MetricResult({"tuned": self.settings["pairs"] / 10}, figures)


class Old(Metric):
    """A third-party metric as written before the contract: name, columns, a plain dict."""

    name = "ct-old"
    columns = {"old": "max"}

    def compute(self, inputs):
        return {"old": 0.5}


class Plain(Method):
    name = "ct-plain"

    @classmethod
    def default_config(cls, preset, input_shape):
        return {"epochs": 1}

    def fit(self, train, context):
        context.on_epoch(0, {"loss": 1.0})

    def encode(self, x):  # zero-width content, and 2D, not generative: the run draws no figure of its own
        return Codes(np.zeros((len(x), 0), np.float32), x.reshape(len(x), -1)[:, :2].copy())

    def save(self, path):
        Path(path).write_bytes(b"weights")

    def load_state(self, path):
        pass


class Plugin:
    __name__ = "metric-contract-test-plugin"

    @dcbench.hookimpl
    def register_methods(self, register):
        register(Plain.name, Plain)

    @dcbench.hookimpl
    def register_datasets(self, register):
        register(Tiny.name, Tiny)

    @dcbench.hookimpl
    def register_metrics(self, register):
        for cls in (NeedsDecoder, Tuned, Old):
            register(cls.name, cls)


def registry():
    return build_registry(extra_plugins=[Plugin()])


def run(root: Path, seed: int = 0):
    spec = RunSpec(method=Plain.name, dataset=Tiny.name, seed=seed, epochs=1, device="cpu", runs_dir=root / "runs",
                   leaderboard_dir=root / "boards")
    return execute(spec, registry())


def rows(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "boards" / f"{Tiny.name}.jsonl").read_text().splitlines()]


SETTINGS = {"ct-needs-decoder": {}, "ct-tuned": {"pairs": 7}, "ct-old": {}}


def test_an_unmet_requirement_gives_nan_without_calling_the_metric_and_the_run_says_why(tmp_path: Path) -> None:
    result = run(tmp_path)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert list(metrics) == ["decoded", "decoded too", "tuned", "old"]
    assert math.isnan(metrics["decoded"]) and math.isnan(metrics["decoded too"])
    assert metrics["tuned"] == 0.7 and metrics["old"] == 0.5  # an old-style metric's dict still counts
    provenance = json.loads((result.run_dir / "provenance.json").read_text())
    assert provenance["not_applicable"] == {"ct-needs-decoder": "needs a generative method (one that decodes codes "
                                                                "into inputs)"}
    (row,) = rows(tmp_path)
    assert row["metrics"]["decoded"] is None or math.isnan(row["metrics"]["decoded"])


def test_metric_settings_go_into_config_json_and_the_row(tmp_path: Path) -> None:
    result = run(tmp_path)
    assert json.loads((result.run_dir / "config.json").read_text())["metric_settings"] == SETTINGS
    (row,) = rows(tmp_path)
    assert row["metric_settings"] == SETTINGS
    with pytest.raises(TypeError):
        Tuned.settings["pairs"] = 8  # type: ignore[index]  # read-only: a run cannot change what it records


def test_figures_a_metric_returns_are_listed_and_published_for_seed_zero(tmp_path: Path) -> None:
    first = run(tmp_path, seed=0)
    second = run(tmp_path, seed=1)
    for result in (first, second):
        assert json.loads((result.run_dir / FIGURES_FILE).read_text()) == {"spectrum": "figures/spectrum.png"}
    seed0, seed1 = rows(tmp_path)
    assert "figures" not in seed1  # only seed 0 is shown
    published = seed0["figures"]["spectrum"]
    assert (tmp_path / "boards" / published).read_bytes() == b"spectrum"
    assert f"[spectrum]({published})" in (tmp_path / "boards" / f"{Tiny.name}.md").read_text()


def test_rescoring_reproduces_the_metrics_and_keeps_the_figure_list(tmp_path: Path) -> None:
    result = run(tmp_path)
    before = (result.run_dir / "metrics.json").read_bytes()
    (result.run_dir / FIGURES_FILE).unlink()  # as a run from before the list: found by looking, then listed
    rescored = score_run(result.run_dir, [Tuned()], registry(), tmp_path / "boards")
    assert rescored.scores == {"tuned": 0.7} and (result.run_dir / "metrics.json").read_bytes() == before
    assert figure_files(result.run_dir) == {"spectrum": "figures/spectrum.png"}
    latest = rows(tmp_path)[-1]
    assert latest["metric_settings"] == SETTINGS and "spectrum" in latest["figures"]
    again = score_run(result.run_dir, [NeedsDecoder()], registry(), None)  # recorded n/a: reproduced
    assert again.not_applicable == {NeedsDecoder.name: "needs a generative method (one that decodes codes into inputs)"}
    with pytest.raises(DcbenchError, match="'ct-needs-volumes' does not apply .*: it needs volumes as inputs"):
        score_run(result.run_dir, [NeedsVolumes()], registry(), None)  # new columns that are all n/a: refused


def test_requirements_are_checked_in_one_place_and_unknown_names_fail_when_the_plugin_loads() -> None:
    x = np.zeros((4, 1, 6, 6), np.float32)
    data = DataBundle(Split(x, np.arange(4) % 2), Split(x, np.arange(4) % 2))
    codes = Codes(np.zeros((4, 0)), np.zeros((4, 3)))
    inputs = MetricInput(codes, codes, data, Plain({}, (1, 6, 6), "cpu", 0), 0)
    assert unmet(NeedsDecoder(), inputs) is not None and unmet(Old(), inputs) is None
    scoring = score_metrics([NeedsDecoder(), Old()], inputs)
    assert list(scoring.scores) == ["decoded", "decoded too", "old"]
    assert set(scoring.not_applicable) == {NeedsDecoder.name}
    with pytest.raises(TypeError, match="'decodr'.*known requirements: content_codes"):
        class Typo(Metric):  # noqa: F841
            name = "typo"
            columns = {"x": "max"}
            requires = frozenset({"decodr"})

            def compute(self, inputs):
                return {"x": 0.0}


def test_a_run_from_before_the_figure_list_publishes_the_files_it_has(tmp_path: Path) -> None:
    run_dir = tmp_path / "old-run"
    (run_dir / "figures").mkdir(parents=True)
    (run_dir / "figures" / "transfer_grid.png").write_bytes(b"grid")
    (run_dir / "classification_report.png").write_bytes(b"matrices")
    (run_dir / "classification_report.md").write_text("![confusion](classification_report.png)\n")
    row = {"method": "m", "dataset": "toy", "preset": "quick", "seed": 0}
    leaderboard.publish_figures(tmp_path / "boards", row, run_dir)
    assert set(row["figures"]) == {"transfer grid", "classification report", "confusion matrices"}
    report = (tmp_path / "boards" / row["figures"]["classification report"]).read_text()
    assert f"]({Path(row['figures']['confusion matrices']).name})" in report  # its link follows the copy
    # once a run folder lists its figures, only what it lists is published
    write_figures(run_dir, {"transfer grid": run_dir / "figures" / "transfer_grid.png"})
    listed = {"method": "m", "dataset": "toy", "preset": "quick", "seed": 0}
    leaderboard.publish_figures(tmp_path / "boards", listed, run_dir)
    assert set(listed["figures"]) == {"transfer grid"}


def test_the_board_links_known_kinds_in_their_order_and_new_kinds_after() -> None:
    row = {"method": "m", "dataset": "toy", "preset": "quick", "seed": 0, "metrics": {"a": 0.5},
           "directions": {"a": "max"}, "figures": {"spectrum": "figures/s.png", "embedding": "figures/e.png",
                                                   "transfer grid": "figures/t.png"}}
    text = render_markdown("toy", [row], {}, "")
    assert "[transfer grid](figures/t.png) · [embedding](figures/e.png) · [spectrum](figures/s.png)" in text
