"""Resumable training: epoch checkpoints, `dcbench run --resume` after SIGKILL and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dcbench import cells
from dcbench.api import RunContext, Split
from dcbench.errors import DcbenchError
from dcbench.registry import build_registry

SHAPE = (1, 28, 28)
# Every built-in training loop (the ablations and vae2 share DualContrast's).
METHODS = ["dualcontrast", "harmony", "simclr-gen", "simclr-disc", "spatialvae", "vitae-affine"]


def tiny_split() -> Split:
    rng = np.random.default_rng(0)
    return Split(rng.random((24, *SHAPE), dtype=np.float32), rng.integers(0, 3, 24))


def make(name: str):
    cls = build_registry(entry_points=False).load("method", name)
    config = cls.default_config("quick", SHAPE)
    config.update(epochs=3, batch_size=8)
    if "lr_step_epochs" in config:
        config["lr_step_epochs"] = 1  # so the scheduler's state matters
    return cls(config, SHAPE, "cpu", seed=3)


class StopAfter:
    """An epoch callback that interrupts training after `epochs` epochs, as Ctrl-C would."""

    def __init__(self, epochs: int | None = None) -> None:
        self.epochs, self.seen = epochs, []

    def __call__(self, epoch: int, terms: dict[str, float]) -> None:
        self.seen.append(epoch)
        if self.epochs is not None and len(self.seen) == self.epochs:
            raise KeyboardInterrupt


@pytest.mark.parametrize("name", METHODS)
def test_a_fit_interrupted_after_an_epoch_continues_to_the_same_weights(tmp_path: Path, name: str) -> None:
    split = tiny_split()
    whole = make(name)
    whole.fit(split, RunContext(on_epoch=StopAfter()))
    state = tmp_path / "train_state.pt"
    first = make(name)
    with pytest.raises(KeyboardInterrupt):  # during epoch 2's callback: epoch 1 was checkpointed, 2 was not
        first.fit(split, RunContext(on_epoch=StopAfter(2), training_state=state))
    assert torch.load(state, weights_only=True)["epochs_done"] == 1
    second = make(name)  # a new process would build the method afresh
    progress = StopAfter()
    second.fit(split, RunContext(on_epoch=progress, training_state=state))
    assert progress.seen == [1, 2]  # epoch 2 again, as it was not checkpointed, then epoch 3
    expected, got = whole.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(expected[key], got[key]) for key in expected), "resumed weights differ"


def test_a_corrupt_training_state_is_one_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "train_state.pt"
    state.write_bytes(b"not a checkpoint")
    with pytest.raises(DcbenchError, match="cannot continue from the training state") as caught:
        make("vae2").fit(tiny_split(), RunContext(on_epoch=StopAfter(), training_state=state))
    assert "delete it to train this run from the start" in str(caught.value)
    assert "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- the real command
ARGS = ["run", "-m", "dualcontrast", "-d", "digits", "--epochs", "10", "--set", "data.train_size=200",
        "--set", "data.test_size=100", "--metric", "dscore", "--device", "cpu", "--checkpoint-every", "0"]


def dcbench(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", DCBENCH_PLUGINS="")
    return subprocess.Popen([sys.executable, "-m", "dcbench.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def wait_for_epochs(runs: Path, epochs: int, process: subprocess.Popen) -> Path:
    """The run folder once its record shows `epochs` finished epochs."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        for path in runs.glob("digits/dualcontrast/*/provenance.json"):
            try:
                if len(json.loads(path.read_text()).get("loss_history", [])) >= epochs:
                    return path.parent
            except ValueError:
                pass
        time.sleep(0.05)
    raise AssertionError("no epoch finished in time")


def test_a_run_killed_with_sigkill_resumes_and_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    process = dcbench(ARGS, tmp_path)
    run_dir = wait_for_epochs(tmp_path / "runs", 2, process)
    process.kill()  # SIGKILL: no handler runs, the record still says "running"
    process.wait()
    assert json.loads((run_dir / "provenance.json").read_text())["status"] == "running"
    assert cells.read_state(run_dir).state == "interrupted"  # nobody holds its lock any more

    resumed = dcbench([*ARGS, "--resume"], tmp_path)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"continued the unfinished run {run_dir.relative_to(tmp_path)}" in out
    record = json.loads((run_dir / "provenance.json").read_text())
    assert record["status"] == "finished" and len(record["attempts"]) == 2
    assert [h["epoch"] for h in record["loss_history"]] == list(range(10))
    assert "epoch 1/10" not in err  # training went on from the checkpoint, not from the start
    assert not (run_dir / "train_state.pt").exists()  # the finished weights are in checkpoint.pt
    assert len((tmp_path / "leaderboards" / "digits.jsonl").read_text().splitlines()) == 1

    again = dcbench([*ARGS, "--resume"], tmp_path)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and "already has a finished run, nothing to do" in out

    fresh = dcbench([*ARGS, "--runs-dir", "fresh", "--no-leaderboard"], tmp_path)
    _, err = fresh.communicate(timeout=300)
    assert fresh.returncode == 0, err
    (fresh_dir,) = (tmp_path / "fresh" / "digits" / "dualcontrast").iterdir()
    expected = torch.load(fresh_dir / "checkpoint.pt", weights_only=True)["model"]
    got = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert json.loads((fresh_dir / "metrics.json").read_text()) == json.loads((run_dir / "metrics.json").read_text())


def test_sigterm_marks_the_run_interrupted_with_a_resume_hint(tmp_path: Path) -> None:
    process = dcbench(ARGS, tmp_path)
    run_dir = wait_for_epochs(tmp_path / "runs", 1, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143  # 128 + SIGTERM, as shells report it
    assert err.strip().splitlines()[-1].startswith("error: interrupted") and "--resume" in err
    record = json.loads((run_dir / "provenance.json").read_text())
    assert record["status"] == "interrupted" and record["phase"] == "train"
    assert cells.read_state(run_dir).state == "interrupted"
    assert not (tmp_path / "leaderboards").exists()
