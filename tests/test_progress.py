"""The early estimate of a run's duration (issue 12, honest waiting): arithmetic and wording with a
fake clock, reporting from the training loop, and a real run that prints and records it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dcbench.api import RunContext, Split
from dcbench.config import RunSpec
from dcbench.progress import EpochProgress, RunEstimator, clock_time, span
from dcbench.records import RunRecord
from dcbench.registry import build_registry
from dcbench.runner import execute

START = 1_750_000_000.0  # a fixed wall-clock time: the "ends ~HH:MM" part is then known


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def run_steps(estimator: RunEstimator, clock: FakeClock, steps: int, step_s: float, first_s: float | None = None):
    """Report `steps` steps of one epoch taking step_s each (the first first_s); the first estimate made."""
    made = None
    for step in range(steps):
        clock.t += first_s if step == 0 and first_s is not None else step_s
        made = estimator.step_done(step, steps) or made
    return made


@pytest.mark.parametrize("seconds, text", [(0.085, "85 ms"), (2.1, "2.1 s"), (45, "45 s"), (609, "10 min"),
                                           (150, "2.5 min"), (3.5 * 3600, "3.5 h"), (3 * 86400, "3 d")])
def test_span_is_short_and_rounded(seconds: float, text: str) -> None:
    assert span(seconds) == text


def test_the_estimate_is_epochs_times_steps_times_the_measured_step_time() -> None:
    clock = FakeClock()
    estimator = RunEstimator(10, clock, wall=lambda: START + clock.t)
    estimator.epoch_started(0)
    estimate = run_steps(estimator, clock, 29, 2.1, first_s=9.0)  # a slow first step is warm-up, not measured
    assert estimate is not None and estimate.unit_s == pytest.approx(2.1)
    assert estimate.train_s == pytest.approx(10 * 29 * 2.1)
    shown_at = estimate.made_at - START
    assert shown_at < 60  # within the first minute, and from steps 2.. only
    steps_done = round((shown_at - 9.0) / 2.1) + 1
    assert estimate.ends_at == pytest.approx(estimate.made_at + (290 - steps_done) * 2.1)
    assert estimate.line() == (f"estimated: 10 epochs x 29 steps x 2.1 s = ~10 min "
                               f"(ends ~{clock_time(estimate.ends_at, estimate.made_at)})")
    assert estimator.epoch_done(0) is None  # shown once


def test_slow_steps_still_give_an_estimate_within_the_first_minute() -> None:
    clock = FakeClock()
    estimator = RunEstimator(10, clock, wall=lambda: START + clock.t)
    estimator.epoch_started(0)
    estimate = run_steps(estimator, clock, 30, 20.0)  # a 10-minute epoch
    assert estimate is not None and estimate.made_at - START <= 60
    assert estimate.line().startswith("estimated: 10 epochs x 30 steps x 20 s = ~1.7 h")


def test_a_resumed_run_estimates_the_epochs_left() -> None:
    clock = FakeClock()
    estimator = RunEstimator(10, clock, wall=lambda: START + clock.t)
    estimator.epoch_started(4)
    estimate = run_steps(estimator, clock, 29, 2.0)
    assert estimate is not None and estimate.epochs == 6
    assert estimate.train_s == pytest.approx(6 * 29 * 2.0)
    assert estimate.line().startswith("estimated: 6 more epochs (of 10) x 29 steps x 2 s = ~5.8 min")


def test_short_epochs_are_estimated_at_the_epoch_end_and_silent_methods_per_epoch() -> None:
    clock = FakeClock()
    estimator = RunEstimator(5, clock, wall=lambda: START + clock.t)
    estimator.epoch_started(0)
    assert run_steps(estimator, clock, 4, 0.5) is None  # too few steps to time within the epoch
    clock.t += 0.1  # reading the epoch's losses
    estimate = estimator.epoch_done(0)
    # Timed from the end of warm-up (step 2) to the end of the epoch: 2 steps and the losses' read.
    assert estimate is not None and estimate.steps_per_epoch == 4 and estimate.unit_s == pytest.approx(1.1 / 2)

    silent = RunEstimator(3, clock, wall=lambda: START + clock.t)  # reports no steps, no epoch starts
    clock.t += 70.0
    estimate = silent.epoch_done(0)
    assert estimate is not None and estimate.steps_per_epoch is None
    assert estimate.line().startswith("estimated: 3 epochs x 1.2 min = ~3.5 min")


class FakeRecord(RunRecord):
    """A record that keeps its provenance in memory and counts its writes."""

    def __init__(self) -> None:
        super().__init__(Path("unused"), {"phases_s": {}})
        self.saves = 0

    def save(self) -> None:
        self.saves += 1


def tiny_vae2(epochs: int):
    cls = build_registry(entry_points=False).load("method", "vae2")
    config = {**cls.default_config("quick", (1, 28, 28)), "epochs": epochs, "batch_size": 8}
    method = cls(config, (1, 28, 28), "cpu", seed=0)
    rng = np.random.default_rng(0)
    return method, Split(rng.random((20, 1, 28, 28), dtype=np.float32), rng.integers(0, 3, 20))


def test_a_training_loop_reports_steps_and_the_progress_prints_and_records_once(
        capsys: pytest.CaptureFixture[str]) -> None:
    method, split = tiny_vae2(2)
    record = FakeRecord()
    progress = EpochProgress(2, "vae2 on tiny", record)
    method.fit(split, RunContext(on_epoch=progress, step_progress=progress))
    err = capsys.readouterr().err
    assert err.count("estimated:") == 1 and "vae2 on tiny: estimated: 2 epochs x 3 steps x " in err
    assert record.provenance["estimate"]["steps_per_epoch"] == 3
    assert record.provenance["estimated_train_s"] > 0
    assert progress.estimator.steps_done == 6 and progress.estimator.first_epoch == 0


def test_a_resumed_fit_estimates_only_the_epochs_left(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "train_state.pt"

    def stop_in_second(epoch: int, terms: dict[str, float]) -> None:
        if epoch == 1:
            raise KeyboardInterrupt  # as Ctrl-C would: epoch 1 was checkpointed, epoch 2 was not

    method, split = tiny_vae2(2)
    with pytest.raises(KeyboardInterrupt):
        method.fit(split, RunContext(on_epoch=stop_in_second, training_state=state))
    method, split = tiny_vae2(2)  # a new process builds the method afresh
    progress = EpochProgress(2, "vae2 on tiny")
    method.fit(split, RunContext(on_epoch=progress, training_state=state, step_progress=progress))
    assert progress.estimator.first_epoch == 1
    assert "vae2 on tiny: estimated: 1 more epoch (of 2) x 3 steps x " in capsys.readouterr().err


def test_a_run_prints_and_records_its_estimate(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import dcbench.run_figures

    # The figures' t-SNE would take most of this test's time and has nothing to do with it.
    monkeypatch.setattr(dcbench.run_figures, "write_run_figures", lambda *args, **kwargs: {})  # drew none
    spec = RunSpec(method="vae2", dataset="digits", metrics=["dscore"], epochs=2, device="cpu",
                   overrides={"data.train_size": "120", "data.test_size": "60", "batch_size": "40"},
                   runs_dir=tmp_path / "runs", leaderboard_dir=None)
    result = execute(spec)
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "estimated:" in x]  # not a terminal: one plain line
    assert line.startswith("vae2 on digits: estimated: 2 epochs x 3 steps x ")
    provenance = json.loads((result.run_dir / "provenance.json").read_text())
    assert provenance["estimated_train_s"] > 0 and provenance["estimate"]["line"] in line
