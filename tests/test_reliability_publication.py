"""Issue 14: publication is one step with the record, boards survive bad lines, every Markdown
cell is escaped, and non-finite codes or decoded outputs fail in one line naming the method."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from plugin_helpers import run_dcbench

import dcbench
from dcbench import cells, leaderboard
from dcbench.api import Codes, DataBundle, Dataset, Method, Metric, Split
from dcbench.board_markdown import render_markdown
from dcbench.config import RunSpec
from dcbench.errors import DcbenchError, DcbenchWarning
from dcbench.records import RunRecord
from dcbench.registry import build_registry
from dcbench.runner import execute


# ----------------------------------------------------------------------------- a tiny, fast plugin
class TinyData(Dataset):
    name = "pub-tiny"
    shape = (1, 6, 6)
    default_metrics = ("pub-score",)

    def load(self, seed: int) -> DataBundle:
        x = np.random.default_rng(seed).random((40, 1, 6, 6), dtype=np.float32)
        labels = np.arange(40) % 2
        return DataBundle(Split(x[:30], labels[:30]), Split(x[30:], labels[30:]))


class Score(Metric):
    name = "pub-score"
    columns = {"score": "max"}

    def compute(self, inputs):
        return {"score": 0.5}


class Plain(Method):
    """Codes without training; counts its fits so a test can tell whether a resume trained."""

    name = "pub-plain"
    fits = 0

    @classmethod
    def default_config(cls, preset, input_shape):
        return {"epochs": 1}

    def fit(self, train, on_epoch):
        type(self).fits += 1
        on_epoch(0, {"loss": 1.0})

    def encode(self, x):  # zero-width content: no embedding figure to draw
        return Codes(np.zeros((len(x), 0), np.float32), x.reshape(len(x), -1)[:, :2].copy())

    def save(self, path):
        Path(path).write_bytes(b"weights")

    def load_state(self, path):
        pass


class NanCodes(Plain):
    name = "pub-nan-codes"

    def encode(self, x):
        codes = super().encode(x)
        codes.transformation[::2] = np.nan  # every other input
        return codes


class NanDecoder(Plain):
    name = "pub-nan-decoder"
    generative = True

    def decode(self, content, transformation):
        out = np.zeros((len(content), *self.input_shape), np.float32)
        out[0, 0, 0, 0] = np.inf
        return out


class Plugin:
    __name__ = "publication-test-plugin"

    @dcbench.hookimpl
    def register_methods(self, register):
        for cls in (Plain, NanCodes, NanDecoder):
            register(cls.name, cls)

    @dcbench.hookimpl
    def register_datasets(self, register):
        register(TinyData.name, TinyData)

    @dcbench.hookimpl
    def register_metrics(self, register):
        register(Score.name, Score)


def spec(root: Path, method: str = "pub-plain") -> RunSpec:
    return RunSpec(method=method, dataset="pub-tiny", epochs=1, device="cpu", runs_dir=root / "runs",
                   leaderboard_dir=root / "boards")


def run(root: Path, method: str = "pub-plain", **kwargs):
    return execute(spec(root, method), build_registry(extra_plugins=[Plugin()]), **kwargs)


def board_lines(root: Path) -> list[dict]:
    path = root / "boards" / "pub-tiny.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def the_record(root: Path) -> tuple[Path, dict]:
    (path,) = (root / "runs").glob("pub-tiny/*/*/provenance.json")
    return path.parent, json.loads(path.read_text())


# ----------------------------------------------------------------------------- bad board lines
GOOD = {"method": "good", "dataset": "toy", "preset": "quick", "seed": 0, "metrics": {"D(c|c)": 0.8},
        "directions": {"D(c|c)": "max"}, "budget": {"epochs": 5, "train_size": 100, "batch_size": 10, "lr": 0.001},
        "train_seconds": 2.0, "generative": True, "figures": {"transfer grid": "figures/a.png"}}


def bad(**changes) -> str:
    return json.dumps({**GOOD, "method": "bad", **changes})


def bad_budget(**changes) -> str:
    return bad(budget={**GOOD["budget"], **changes})


BAD_LINES = [  # (line, what the warning says)
    (bad(metrics={"D(c|c)": "0.5"}), "metric 'D(c|c)' is \"0.5\", not a number"),
    (bad(metrics={"D(c|c)": True}), "metric 'D(c|c)' is true"),
    (bad(metrics=[0.5]), "'metrics' is [0.5], not an object"),
    (bad_budget(epochs="5"), "budget 'epochs' is \"5\""),
    (bad_budget(lr="fast"), "budget 'lr'"),
    (bad(budget="quick"), "'budget' is \"quick\""),
    (bad_budget(bin="2"), "budget 'bin'"),
    (bad_budget(bin=2, lowpass_sigma=None), "budget 'lowpass_sigma'"),
    (bad_budget(bin=2, networks=3), "budget 'networks'"),
    (bad(seed="1"), "'seed' is \"1\", not a whole number"),  # beside int seeds: sorting them crashed
    (bad(seed=True), "'seed' is true"),
    (bad(seed=1.5), "'seed' is 1.5"),
    (bad(preset=3), "'preset' is 3, not a name"),
    (bad(preset=" "), "'preset' is \" \""),
    (bad(method=None), "'method' is null"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "seed"}), "no 'seed'"),
    (bad(directions={"D(c|c)": "up"}), "direction of 'D(c|c)' is \"up\""),
    (bad(directions=["max"]), "'directions' is [\"max\"]"),
    (bad(train_seconds="12"), "'train_seconds' is \"12\""),
    (bad(figures={"transfer grid": 3}), "'figures'"),
    (bad(generative="yes"), "'generative' is \"yes\""),
    (bad(run=5), "'run' is 5, not text"),
    (bad(spec={"preset": "quick", "epochs": "10", "overrides": {}}), "spec 'epochs' is \"10\""),
    (bad(spec={"preset": "quick", "epochs": None, "overrides": ["a=1"]}), "spec 'overrides'"),
    (bad(spec="quick"), "'spec' is \"quick\""),
    ('{"method": "torn", "pres', "not valid JSON"),
    ("[1, 2]", "a JSON list, not an object"),
    ("\udcff", "not UTF-8"),  # written as a raw 0xff byte below
]


def write_board(folder: Path, middle: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "toy.jsonl"
    second = json.dumps({**GOOD, "method": "also-good", "seed": 1})
    raw = middle.encode("utf-8", "surrogateescape")
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + raw + b"\n" + second.encode() + b"\n")
    return path


@pytest.mark.parametrize("line, problem", BAD_LINES, ids=[p for _, p in BAD_LINES])
def test_a_bad_line_is_skipped_with_file_and_line_and_the_board_renders(tmp_path: Path, line: str,
                                                                         problem: str) -> None:
    path = write_board(tmp_path, line)
    with pytest.warns(DcbenchWarning) as caught:
        page = leaderboard.render(tmp_path, "toy")
    (message,) = [str(w.message) for w in caught]
    assert message.startswith(f"{path}:2: skipped") and problem in message and "fix or delete it" in message
    text = page.read_text()
    assert "| good " in text and "| also-good " in text and "| bad " not in text


def test_dcbench_leaderboard_reports_the_bad_line_and_still_prints_the_board(tmp_path: Path) -> None:
    write_board(tmp_path / "boards", bad(metrics={"D(c|c)": "0.5"}))
    result = run_dcbench(["leaderboard", "toy", "--leaderboard-dir", "boards"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "warning: boards/toy.jsonl:2: skipped a line that is not a usable row (metric 'D(c|c)' is \"0.5\", "
        "not a number); fix or delete it"]
    assert "| good " in result.stdout and "| also-good " in result.stdout


def test_a_run_appending_to_a_board_with_a_bad_line_still_renders_it(tmp_path: Path) -> None:
    board = tmp_path / "boards" / "pub-tiny.jsonl"
    board.parent.mkdir()
    board.write_text(bad(seed="1") + "\n")
    with pytest.warns(DcbenchWarning, match=re.escape(f"{board}:1: skipped")):
        result = run(tmp_path)
    assert "| pub-plain " in result.leaderboard.read_text()
    assert len(board.read_text().splitlines()) == 2  # the bad line is left for the user to fix


# ----------------------------------------------------------------------------- escaping
def table_widths(text: str) -> list[int]:
    """The number of cells of every table line (unescaped '|' separators)."""
    return [len(re.split(r"(?<!\\)\|", line)) for line in text.splitlines() if line.startswith("|")]


def test_every_markdown_cell_is_escaped_so_tables_keep_their_columns() -> None:
    nasty = {**GOOD, "method": "a|b\nc", "preset": "quick data.path=x|y", "seed": 0,
             "figures": {"transfer grid": "figures/x|y.png"},
             "budget": {"epochs": 5, "train_size": 100, "batch_size": 10, "lr": 0.001, "bin": 2,
                        "lowpass_sigma": 1.0, "networks": "small|big\nsmall"}}
    plain = {**GOOD, "method": "plain", "generative": False, "figures": {}}
    text = render_markdown("toy", [nasty, plain], {"a|b\nc": {"D(c|c)": 0.9}})
    sections = text.split("\n## ")
    assert len(sections) == 4  # main table, Ranks, Transfer grids, Budgets
    for section in sections:
        widths = table_widths(section)
        assert widths and len(set(widths)) == 1, section  # every line of a table: the same columns
    assert "a\\|b c" in text and "quick data.path=x\\|y" in text and "small\\|big small" in text


# ----------------------------------------------------------------------------- one row per run, with the record
def test_an_unwritable_page_is_a_warning_and_the_run_still_finishes_with_its_row(tmp_path: Path) -> None:
    page = tmp_path / "boards" / "pub-tiny.md"
    page.mkdir(parents=True)  # a folder where the page goes
    with pytest.warns(DcbenchWarning, match=r"page was not updated: cannot write .*pub-tiny.md .*dcbench leaderboard"):
        result = run(tmp_path)
    assert result.leaderboard is None
    run_dir, record = the_record(tmp_path)
    assert record["status"] == "finished" and len(board_lines(tmp_path)) == 1
    assert run(tmp_path, resume=True).already_finished and len(board_lines(tmp_path)) == 1
    page.rmdir()
    assert "| pub-plain " in leaderboard.render(tmp_path / "boards", "pub-tiny").read_text()


def test_a_record_that_cannot_be_finished_takes_its_row_back(tmp_path: Path, monkeypatch) -> None:
    def disk_full(self, **extra) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(RunRecord, "finish", disk_full)
        with pytest.raises(OSError, match="No space"):
            run(tmp_path)
    run_dir, record = the_record(tmp_path)
    assert record["status"] == "failed" and board_lines(tmp_path) == []  # no row for a failed run
    result = run(tmp_path, resume=True)
    assert result.resumed and the_record(tmp_path)[1]["status"] == "finished"
    assert [row["run"] for row in board_lines(tmp_path)] == [str(run_dir)]


def test_a_row_goes_in_once_per_run_folder_and_republish_replaces_it(tmp_path: Path) -> None:
    row = {**GOOD, "run": str(tmp_path / "run-1")}
    leaderboard.append_row(tmp_path, "toy", row)
    leaderboard.append_row(tmp_path, "toy", {**row, "metrics": {"D(c|c)": 0.1}})  # a retry of the same run
    assert [r["metrics"] for r in leaderboard.read_rows(tmp_path, "toy")] == [{"D(c|c)": 0.8}]
    leaderboard.append_row(tmp_path, "toy", {**row, "metrics": {"D(c|c)": 0.7}}, replace=True)
    assert len(leaderboard.read_rows(tmp_path, "toy")) == 2  # history kept; the page shows the newer
    assert "0.700" in (tmp_path / "toy.md").read_text() and "0.800" not in (tmp_path / "toy.md").read_text()


def test_republishing_an_older_run_does_not_push_a_rerun_of_its_cell_off_the_page(tmp_path: Path) -> None:
    old, new = tmp_path / "run-old", tmp_path / "run-new"
    for run_dir in (old, new):
        run_dir.mkdir()
    leaderboard.append_row(tmp_path, "toy", {**GOOD, "run": str(old), "metrics": {"D(c|c)": 0.8}})
    leaderboard.append_row(tmp_path, "toy", {**GOOD, "run": str(new), "metrics": {"D(c|c)": 0.6}})  # the rerun
    assert leaderboard.republish(tmp_path, "toy", old) is None  # the page shows the rerun's row: keep it so
    assert len(leaderboard.read_rows(tmp_path, "toy")) == 2 and "0.600" in (tmp_path / "toy.md").read_text()
    assert leaderboard.republish(tmp_path, "toy", new) is not None
    assert "0.600" in (tmp_path / "toy.md").read_text() and "0.800" not in (tmp_path / "toy.md").read_text()


# Where a SIGKILL lands: before the row is written, between the row and the record's finish,
# after both but before the page is rendered.
KILL_POINTS = {"before the row": (leaderboard, "_append_line"), "between row and record": (RunRecord, "finish"),
               "before the page": (leaderboard, "_render_or_warn")}


def run_and_kill_at(point: str, root: str) -> None:
    """In a child process: run the tiny cell and SIGKILL ourselves at `point`."""
    owner, name = KILL_POINTS[point]
    setattr(owner, name, lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL))
    run(Path(root))


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_at_any_point_of_publication_leaves_no_row_or_one_and_resume_adds_none(tmp_path: Path,
                                                                                      point: str) -> None:
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
              f"import test_reliability_publication as t; t.run_and_kill_at({point!r}, {str(tmp_path)!r})")
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    run_dir, record = the_record(tmp_path)
    rows = board_lines(tmp_path)  # every line is whole JSON
    assert len(rows) == (0 if point == "before the row" else 1)
    assert (record["status"] == "finished") == (point == "before the page")
    if point == "between row and record":  # the one window: a whole row, its record still publishing
        assert record["phase"] == "publish" and cells.read_state(run_dir).state == "interrupted"

    Plain.fits = 0
    result = run(tmp_path, resume=True)
    assert result.already_finished == (point == "before the page")
    assert Plain.fits == (1 if point == "before the row" else 0)  # a row in means all the work was done
    assert the_record(tmp_path)[1]["status"] == "finished"
    assert [row["run"] for row in board_lines(tmp_path)] == [str(run_dir)]  # one row, never two
    if not result.already_finished:
        assert "| pub-plain " in result.leaderboard.read_text()


# ----------------------------------------------------------------------------- non-finite codes and outputs
@pytest.mark.parametrize("method, message", [
    ("pub-nan-codes", "method 'pub-nan-codes' returned non-finite transformation codes (NaN or infinity) "
                      "for 15 of 30 train inputs"),
    ("pub-nan-decoder", "method 'pub-nan-decoder' decoded non-finite outputs (NaN or infinity) for 1 of 4 "
                        "code pairs (the transfer grid)"),
], ids=["codes", "decoded"])
def test_non_finite_codes_or_outputs_fail_in_one_line_naming_the_method(tmp_path: Path, method: str,
                                                                        message: str) -> None:
    with pytest.raises(DcbenchError) as caught:
        run(tmp_path, method)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    _, record = the_record(tmp_path)
    assert record["status"] == "failed" and record["error"].startswith(message)
    assert board_lines(tmp_path) == []


@pytest.mark.parametrize("metric_name, method, message", [
    ("recon", NanDecoder, "method 'pub-nan-decoder' decoded non-finite outputs (NaN or infinity) for 1 of 6 "
                          "code pairs (reconstruction error)"),
    ("sz", NanCodes, "method 'pub-nan-codes' returned non-finite transformation codes (NaN or infinity) for 250 of "
                     "500 rotated test inputs"),
], ids=["recon", "sz"])
def test_metrics_that_decode_or_encode_anew_refuse_non_finite_outputs_instead_of_reporting_n_a(
        metric_name: str, method: type, message: str) -> None:
    from dcbench.api import DataBundle, MetricInput, Split
    from dcbench.registry import build_registry

    x = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)
    data = DataBundle(Split(x, np.arange(6) % 2), Split(x, np.arange(6) % 2))
    m = method({"epochs": 1}, (1, 8, 8), "cpu", 0)
    codes = Plain.encode(m, x)
    metric = build_registry(entry_points=False).load("metric", metric_name)()
    with pytest.raises(DcbenchError) as caught:
        metric.compute(MetricInput(codes, codes, data, m, 0))
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
