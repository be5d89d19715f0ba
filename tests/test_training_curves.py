"""Every run of two or more epochs draws its loss terms per epoch (figures/training_curves.png),
lists the figure in figures.json and publishes it with the seed-0 row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import dcbench
from dcbench.api import Codes, DataBundle, Dataset, Method, Split
from dcbench.config import RunSpec
from dcbench.records import FIGURES_FILE
from dcbench.registry import build_registry
from dcbench.runner import execute
from dcbench.training_curves import draw_training_curves, loss_terms, lr_step_epochs

PNG = b"\x89PNG"


def test_one_panel_per_term_in_first_seen_order_and_nothing_for_a_single_epoch(tmp_path: Path) -> None:
    history = [{"epoch": 0, "recon": 1.0, "kl": 0.1}, {"epoch": 1, "recon": 0.5, "kl": 0.2, "extra": -1.0}]
    assert loss_terms(history) == ["recon", "kl", "extra"]
    drawn = draw_training_curves(history, tmp_path / "curves.png", "m on d", lr_steps=[1])
    assert drawn == tmp_path / "curves.png" and drawn.read_bytes()[:4] == PNG
    assert draw_training_curves(history[:1], tmp_path / "one.png", "m on d") is None
    assert not (tmp_path / "one.png").exists()
    assert draw_training_curves([{"epoch": 0}, {"epoch": 1}], tmp_path / "none.png", "m on d") is None


def test_non_finite_values_are_left_out_not_fatal(tmp_path: Path) -> None:
    history = [{"epoch": 0, "loss": float("nan")}, {"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": None}]
    assert draw_training_curves(history, tmp_path / "c.png", "t") is not None


def test_learning_rate_steps_follow_the_step_decay_setting() -> None:
    assert lr_step_epochs({"epochs": 200, "lr_step_epochs": 50}) == [50, 100, 150]
    assert lr_step_epochs({"epochs": 10, "lr_step_epochs": 10}) == []  # no step within the run
    assert lr_step_epochs({"epochs": 10}) == []


class Line(Dataset):
    name = "tc-line"
    shape = (1, 4, 4)

    def load(self, seed: int) -> DataBundle:
        x = np.random.default_rng(0).random((20, 1, 4, 4), dtype=np.float32)
        labels = np.arange(20) % 2
        return DataBundle(Split(x[:14], labels[:14]), Split(x[14:], labels[14:]))


class TwoTerms(Method):
    name = "tc-two-terms"

    @classmethod
    def default_config(cls, preset, input_shape):
        return {"epochs": 3}

    def fit(self, train, context):
        for epoch in range(int(self.config["epochs"])):
            context.on_epoch(epoch, {"recon": 1.0 / (epoch + 1), "kl": 0.01 * epoch})

    def encode(self, x):
        flat = x.reshape(len(x), -1)
        return Codes(flat[:, :2].copy(), flat[:, 2:4].copy())

    def save(self, path):
        Path(path).write_bytes(b"weights")

    def load_state(self, path):
        pass


class Plugin:
    __name__ = "training-curves-test-plugin"

    @dcbench.hookimpl
    def register_methods(self, register):
        register(TwoTerms.name, TwoTerms)

    @dcbench.hookimpl
    def register_datasets(self, register):
        register(Line.name, Line)


def test_a_run_lists_and_publishes_its_training_curves(tmp_path: Path) -> None:
    spec = RunSpec(method=TwoTerms.name, dataset=Line.name, seed=0, device="cpu", metrics=("ari",),
                   runs_dir=tmp_path / "runs", leaderboard_dir=tmp_path / "boards")
    result = execute(spec, build_registry(extra_plugins=[Plugin()]))
    listed = json.loads((result.run_dir / FIGURES_FILE).read_text())
    assert listed["training curves"] == "figures/training_curves.png"
    assert (result.run_dir / listed["training curves"]).read_bytes()[:4] == PNG
    (row,) = [json.loads(line) for line in (tmp_path / "boards" / f"{Line.name}.jsonl").read_text().splitlines()]
    published = row["figures"]["training curves"]
    assert (tmp_path / "boards" / published).read_bytes()[:4] == PNG
    assert f"[training curves]({published})" in (tmp_path / "boards" / f"{Line.name}.md").read_text()
