"""docs/plugins.md walks a newcomer through adding a built-in method: the code it shows runs, is
registered by the registry entry it shows, and trains and scores through the runner."""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import numpy as np

import dcbench
from dcbench.api import RunContext, Split
from dcbench.config import RunSpec
from dcbench.registry import build_registry
from dcbench.runner import execute

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
SECTION = "## Adding a built-in method, step by step"


def walkthrough_blocks(language: str) -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", len(SECTION))]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def load_example(tmp_path: Path) -> type:
    (code,) = walkthrough_blocks("python")
    path = tmp_path / "walkthrough_ae2.py"
    path.write_text(code, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("walkthrough_ae2", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.AE2


def test_the_walkthrough_method_registers_trains_and_scores(tmp_path: Path) -> None:
    ae2 = load_example(tmp_path)
    (toml,) = walkthrough_blocks("toml")
    ((name, entry),) = tomllib.loads(toml)["methods"].items()
    assert name == ae2.name and entry["target"].endswith(":AE2") and entry["description"]

    class Plugin:
        __name__ = "walkthrough"

        @dcbench.hookimpl
        def register_methods(self, register):
            register(name, ae2)

    spec = RunSpec(method=name, dataset="digits", epochs=1, metrics=["dscore", "recon"],
                   runs_dir=tmp_path / "runs", leaderboard_dir=None, device="cpu",
                   overrides={"data.train_size": "200", "data.test_size": "100"})
    result = execute(spec, build_registry(extra_plugins=[Plugin()], entry_points=False))
    assert np.isfinite(result.metrics["D(c|c)"]) and np.isfinite(result.metrics["recon MSE"])
    assert (result.run_dir / "figures" / "transfer_grid.png").is_file()


def test_the_walkthrough_method_learns_on_tiny_data(tmp_path: Path) -> None:
    ae2 = load_example(tmp_path)
    method = ae2({**ae2.default_config("quick", (1, 8, 8)), "epochs": 8, "batch_size": 16}, (1, 8, 8), "cpu", 0)
    x = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    losses: list[float] = []
    method.fit(Split(x, np.zeros(64, int)), RunContext(on_epoch=lambda epoch, terms: losses.append(terms["recon"])))
    assert losses[-1] < losses[0]
    codes = method.encode(x[:5])
    assert codes.content.shape == (5, 10) and codes.transformation.shape == (5, 10)
    assert method.decode(codes.content, codes.transformation).shape == (5, 1, 8, 8)
