"""The plugin base classes' contract: no shared mutable defaults, and a clear error for a method
whose __init__ skips Method.__init__."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dcbench
from dcbench.api import Codes, DataBundle, Dataset, Method, Metric, RunContext, Split
from dcbench.config import RunSpec
from dcbench.errors import PluginError
from dcbench.registry import build_registry
from dcbench.runner import execute

SUPER_INIT = "super().__init__(config, input_shape, device, seed)"


class TinyData(Dataset):
    name = "contract-tiny"
    shape = (1, 8, 8)

    def load(self, seed: int) -> DataBundle:
        x = np.random.default_rng(seed).random((12, 1, 8, 8), dtype=np.float32)
        labels = np.arange(12) % 2
        return DataBundle(Split(x[:8], labels[:8]), Split(x[8:], labels[8:]))


class Plain(Method):
    name = "contract-plain"

    @classmethod
    def default_config(cls, preset: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
        return {"epochs": 1}

    def fit(self, train: Split, on_epoch: Any) -> None:
        on_epoch(0, {"loss": 0.0})

    def encode(self, x: np.ndarray) -> Codes:
        flat = x.reshape(len(x), -1)
        return Codes(flat[:, :2], flat[:, 2:4])

    def save(self, path: Path) -> None:
        path.write_bytes(b"")

    def load_state(self, path: Path) -> None:
        pass


class NoSuper(Plain):
    """Overrides __init__ and forgets Method.__init__: no .device, .seed, .input_shape."""

    name = "contract-no-super"

    def __init__(self, config: dict[str, Any], input_shape: tuple[int, ...], device: str, seed: int) -> None:
        self.config = config


class Plugin:
    __name__ = "contract-plugin"

    @dcbench.hookimpl
    def register_methods(self, register: Any) -> None:
        register(NoSuper.name, NoSuper)

    @dcbench.hookimpl
    def register_datasets(self, register: Any) -> None:
        register(TinyData.name, TinyData)


def test_init_without_super_init_fails_in_one_line_naming_the_fix(tmp_path: Path) -> None:
    spec = RunSpec(method=NoSuper.name, dataset=TinyData.name, epochs=1, runs_dir=tmp_path / "runs",
                   leaderboard_dir=None, device="cpu", metrics=["dscore"])
    with pytest.raises(PluginError) as caught:
        execute(spec, build_registry(extra_plugins=[Plugin()]))
    message = str(caught.value)
    assert "\n" not in message and SUPER_INIT in message and "device" in message
    assert "contract-no-super" in message
    (provenance,) = (tmp_path / "runs").glob("*/*/*/provenance.json")
    record = json.loads(provenance.read_text())
    assert record["status"] == "failed" and SUPER_INIT in record["error"]


def test_a_method_that_calls_super_init_passes_the_check() -> None:
    Plain({"epochs": 1}, (1, 8, 8), "cpu", 0).check_initialised()
    with pytest.raises(PluginError, match="input_shape, device, seed"):
        NoSuper({"epochs": 1}, (1, 8, 8), "cpu", 0).check_initialised()


@pytest.mark.parametrize("base", [Dataset, Method, Metric])
def test_base_classes_share_no_mutable_defaults(base: type) -> None:
    # A dict or list on the base class would be one object shared by every plugin that inherits it.
    mutable = {name: type(value).__name__ for name, value in vars(base).items()
               if not name.startswith("__") and isinstance(value, dict | list | set | bytearray)}
    assert not mutable, f"{base.__name__} has mutable class-level defaults: {mutable}"


@pytest.mark.parametrize("owner, attribute", [(RunContext(), "data_facts"), (Dataset, "reported"),
                                              (Dataset, "option_defaults"), (Dataset, "option_types")])
def test_inherited_tables_are_read_only_and_empty(owner: type, attribute: str) -> None:
    table = getattr(owner, attribute)
    assert dict(table) == {}
    with pytest.raises(TypeError):
        table["x"] = 1


def test_datasets_without_options_still_take_none_and_refuse_unknown_ones() -> None:
    data = TinyData()
    assert data.options == {} and isinstance(data.options, dict)  # each instance its own dict
    with pytest.raises(ValueError, match="no option"):
        TinyData(size=3)


class SeesContext(Plain):
    """Keeps what fit() was given, to check the runner passes the run's context in, not pushed onto it."""

    name = "contract-context"
    seen: list[RunContext] = []  # noqa: RUF012 (the test's own record of calls)

    def fit(self, train: Split, context: RunContext) -> None:
        SeesContext.seen.append(context)
        context.on_epoch(0, {"loss": 0.0})


class ContextPlugin(Plugin):
    @dcbench.hookimpl
    def register_methods(self, register: Any) -> None:
        register(SeesContext.name, SeesContext)


def test_the_runner_passes_the_run_context_to_fit(tmp_path: Path) -> None:
    spec = RunSpec(method=SeesContext.name, dataset=TinyData.name, epochs=1, runs_dir=tmp_path / "runs",
                   leaderboard_dir=None, device="cpu", metrics=["dscore"], checkpoint_every_s=7.0)
    execute(spec, build_registry(extra_plugins=[ContextPlugin()]))
    (context,) = SeesContext.seen
    (run_dir,) = (tmp_path / "runs").glob("*/*/*/")
    assert context.training_state is not None and context.training_state.parent == run_dir
    assert context.training_state_interval_s == 7.0 and context.work_dir == run_dir / SeesContext.name
    assert dict(context.data_facts) == {"ctf": None, "voxel": None, "n_classes": 2}
    assert context.step_progress is not None
    with pytest.raises(TypeError):  # facts are read-only: a method cannot change what the next one sees
        context.data_facts["n_classes"] = 3  # type: ignore[index]
    for attribute in ("training_state", "data_facts", "step_progress"):  # nothing pushed onto the method
        assert not hasattr(Method, attribute)


def test_a_run_context_is_callable_as_the_old_epoch_callback() -> None:
    seen: list[tuple[int, dict[str, float]]] = []
    context = RunContext(on_epoch=lambda epoch, terms: seen.append((epoch, terms)))
    Plain({"epochs": 1}, (1, 8, 8), "cpu", 0).fit(Split(np.zeros((2, 1, 8, 8), np.float32), np.zeros(2, int)), context)
    assert seen == [(0, {"loss": 0.0})]
    RunContext()(0, {"loss": 1.0})  # the default callback ignores epochs
