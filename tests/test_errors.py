"""Bad input gives one line, a non-zero exit, and leaves no half-written data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from plugin_helpers import run_dcbench

import dcbench
from dcbench.api import DataBundle, Dataset, Method, Split
from dcbench.config import RunSpec
from dcbench.errors import DataError, DcbenchError, TrainingDiverged
from dcbench.registry import build_registry
from dcbench.runner import execute


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("args, fragments", [
    (["-m", "dualcontrst", "-d", "digits"], ("unknown method 'dualcontrst'", "did you mean 'dualcontrast'")),
    (["-m", "dualcontrast", "-d", "mnits"], ("unknown dataset 'mnits'", "did you mean 'mnist'")),
    (["-m", "dualcontrast", "-d", "digits", "--metric", "dscor"], ("unknown metric 'dscor'",)),
    (["-m", "dualcontrast", "-d", "digits", "--set", "lrr=1"], ("unknown setting", "'lrr'", "did you mean 'lr'")),
    (["-m", "dualcontrast", "-d", "digits", "--set", "lr=fast"], ("'lr' expects a float",)),
    (["-m", "dualcontrast", "-d", "digits", "--set", "transform=hue"], ("3-channel",)),
])
def test_bad_names_and_settings_fail_in_one_line_before_any_work(tmp_path: Path, args, fragments) -> None:
    result = run_dcbench(["run", *args, "--epochs", "1"], tmp_path)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "leaderboards").exists()


# ----------------------------------------------------------------------------- in-process runs
class TinyData(Dataset):
    name = "tiny"
    shape = (1, 28, 28)
    corrupt = None

    def load(self, seed: int) -> DataBundle:
        rng = np.random.default_rng(seed)
        x = rng.random((40, 1, 28, 28), dtype=np.float32)
        if self.corrupt == "nan":
            x[3, 0, 5, 5] = np.nan
        if self.corrupt == "shape":
            x = x[:, :, :20, :20]
        labels = np.arange(40) % 4
        return DataBundle(Split(x[:30], labels[:30]), Split(x[30:], labels[30:]))


class NanData(TinyData):
    name = "tiny-nan"
    corrupt = "nan"


class WrongShapeData(TinyData):
    name = "tiny-shape"
    corrupt = "shape"


class DivergingMethod(Method):
    name = "diverging"

    @classmethod
    def default_config(cls, preset, input_shape):
        return {"epochs": 3}

    def fit(self, train, on_epoch):
        on_epoch(0, {"loss": 1.0})
        on_epoch(1, {"loss": float("nan")})

    def encode(self, x):
        raise AssertionError("never reached")

    def save(self, path):
        raise AssertionError("never reached")

    def load_state(self, path):
        raise AssertionError("never reached")


class Plugin:
    __name__ = "test-plugin"

    @dcbench.hookimpl
    def register_methods(self, register):
        register("diverging", DivergingMethod)

    @dcbench.hookimpl
    def register_datasets(self, register):
        for cls in (TinyData, NanData, WrongShapeData):
            register(cls.name, cls)


def run_in_process(tmp_path: Path, method: str, dataset: str) -> Path:
    spec = RunSpec(method=method, dataset=dataset, epochs=1, runs_dir=tmp_path / "runs",
                   leaderboard_dir=tmp_path / "boards", device="cpu")
    return execute(spec, build_registry(extra_plugins=[Plugin()]))


def failed_record(tmp_path: Path) -> dict:
    (provenance,) = (tmp_path / "runs").glob("*/*/*/provenance.json")
    return json.loads(provenance.read_text())


def test_nan_loss_stops_the_run_marks_it_failed_and_keeps_the_record(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match="became nan in epoch 2"):
        run_in_process(tmp_path, "diverging", "tiny")
    record = failed_record(tmp_path)
    assert record["status"] == "failed" and "nan" in record["error"]
    assert [h["epoch"] for h in record["loss_history"]] == [0, 1]
    assert not (tmp_path / "boards").exists()  # no leaderboard row for a failed run


@pytest.mark.parametrize("dataset, message", [("tiny-nan", "NaN"), ("tiny-shape", "shape")])
def test_bad_data_is_refused_with_the_record_kept(tmp_path: Path, dataset: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        run_in_process(tmp_path, "dualcontrast", dataset)
    assert failed_record(tmp_path)["status"] == "failed"
    assert not (tmp_path / "boards").exists()


def test_unsupported_method_and_dataset_pair_fails_before_creating_a_run(tmp_path: Path) -> None:
    class Small(TinyData):
        name = "small"
        shape = (1, 20, 20)

    class SmallPlugin:
        __name__ = "small-plugin"

        @dcbench.hookimpl
        def register_datasets(self, register):
            register("small", Small)

    spec = RunSpec(method="dualcontrast", dataset="small", runs_dir=tmp_path / "runs")
    with pytest.raises(DcbenchError, match="cannot run on dataset 'small'"):
        execute(spec, build_registry(extra_plugins=[SmallPlugin()]))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("method, shape", [
    ("vitae", (1, 32, 32, 32)),  # VITAE has no 3D variant
    ("vitae-affine", (1, 16, 16, 16)),
    ("spatialvae", (2, 28, 28)),  # two-channel images: no method has them
    ("harmony", (2, 28, 28)),
    ("simclr-disc", (1, 20, 20)),  # DualContrast's networks have fixed input sizes
    ("simclr-gen", (3, 32, 32)),
    ("vae2", (1, 20, 20)),
])
def test_every_method_refuses_shapes_it_has_no_network_for_before_creating_a_run(
        tmp_path: Path, method: str, shape: tuple[int, ...]) -> None:
    class Odd(TinyData):
        name = "odd"

    Odd.shape = shape

    class OddPlugin:
        __name__ = "odd-plugin"

        @dcbench.hookimpl
        def register_datasets(self, register):
            register("odd", Odd)

    spec = RunSpec(method=method, dataset="odd", runs_dir=tmp_path / "runs")
    with pytest.raises(DcbenchError, match=f"method '{method}' cannot run on dataset 'odd': it "):
        execute(spec, build_registry(extra_plugins=[OddPlugin()]))
    assert not (tmp_path / "runs").exists()
