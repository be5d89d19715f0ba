"""The training-free `spectrum` method: its content code ignores pose (90-degree turns and circular
shifts exactly, other rotations up to interpolation), its state round-trips without pickle, it runs
end to end through the runner, and it finds the compositions of simulated subtomograms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from dcbench.api import RunContext, Split
from dcbench.config import RunSpec
from dcbench.errors import DcbenchError
from dcbench.registry import get_registry
from dcbench.runner import execute, plan
from dcbench_plugins.spectrum.method import Spectrum, shell_weights


def blobs(n: int, spatial: tuple[int, ...], seed: int) -> np.ndarray:
    """n inputs (n, 1, *spatial) of 2-4 Gaussian blobs of varied widths well inside the box, so
    that rotations about the centre do not cut anything off."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in spatial], indexing="ij"))
    out = np.zeros((n, 1, *spatial), np.float32)
    for i in range(n):
        for _ in range(rng.integers(2, 5)):
            centre = rng.uniform(-0.15, 0.15, len(spatial))[:, None] * min(spatial)
            width = rng.uniform(0.6, 2.5)
            offset = grid.reshape(len(spatial), -1) - centre
            out[i, 0] += np.exp(-(offset**2).sum(0) / (2 * width**2)).reshape(spatial)
    return out


def fitted(x: np.ndarray) -> Spectrum:
    shape = tuple(x.shape[1:])
    method = Spectrum(Spectrum.default_config("quick", shape), shape, "cpu", seed=0)
    method.fit(Split(x, np.zeros(len(x), np.int64)), RunContext(on_epoch=lambda epoch, terms: None))
    return method


def spread(codes: np.ndarray) -> float:
    """Median distance between the codes of different inputs: the scale the tolerances use."""
    d = np.linalg.norm(codes[:, None] - codes[None], axis=-1)
    return float(np.median(d[np.triu_indices(len(codes), 1)]))


@pytest.mark.parametrize("spatial", [(16, 16, 16), (24, 24)], ids=["volume", "image"])
def test_content_code_ignores_90_degree_turns_and_circular_shifts_exactly(spatial: tuple[int, ...]) -> None:
    x = blobs(24, spatial, seed=1)
    method = fitted(x)
    base = method.encode(x[:4]).content
    scale = spread(method.encode(x).content)
    axes = [(2, 3), (3, 4), (2, 4)] if len(spatial) == 3 else [(2, 3)]
    moved = [np.rot90(x[:4], k, plane) for plane in axes for k in (1, 2, 3)]
    moved += [np.roll(x[:4], (5, -3), axis=(2, 3)), np.roll(x[:4], 7, axis=-1)]
    for other in moved:
        assert np.abs(method.encode(np.ascontiguousarray(other)).content - base).max() < 1e-5 * scale


@pytest.mark.parametrize("spatial", [(32, 32, 32), (28, 28)], ids=["volume", "image"])
def test_content_code_barely_moves_under_an_arbitrary_interpolated_rotation(spatial: tuple[int, ...]) -> None:
    x = blobs(24, spatial, seed=2)
    method = fitted(x)
    base = method.encode(x[:6]).content
    rotated = ndimage.rotate(x[:6], 37.0, axes=(2, 3), reshape=False, order=3)
    if len(spatial) == 3:  # and about a second axis: an oblique rotation
        rotated = ndimage.rotate(rotated, -52.0, axes=(3, 4), reshape=False, order=3)
    moved = np.linalg.norm(method.encode(rotated.astype(np.float32)).content - base, axis=1)
    # Not exact: interpolation smooths, and a shell of a small grid holds few frequencies (2D
    # rings especially). Measured: at most 0.11 (volumes) and 0.24 (images) of the spread over
    # seeds 0-3; a different input lies 1 spread away.
    assert moved.max() < 0.3 * spread(method.encode(x).content)


def test_shells_span_zero_to_nyquist_and_average_over_the_full_grid() -> None:
    weights = shell_weights((8, 8, 8), 4)
    assert weights.shape == (8 * 8 * 5, 4) and np.allclose(weights.sum(0), 1.0)
    # a constant power spectrum averages to itself in every shell, whatever the half-grid bookkeeping
    assert np.allclose(np.ones(8 * 8 * 5) @ weights, 1.0)
    # more shells than the grid resolves: empty shells are zero columns, not NaN
    assert np.isfinite(shell_weights((4, 4), 40)).all()


def test_save_and_load_state_give_identical_codes_without_pickle(tmp_path: Path) -> None:
    x = blobs(20, (12, 12, 12), seed=3)
    method = fitted(x)
    path = tmp_path / "state.pt"  # the runner's name; the content is a plain .npz
    method.save(path)
    with np.load(path, allow_pickle=False) as state:
        assert all(state[key].dtype != object for key in state.files)
    loaded = Spectrum(method.config, method.input_shape, "cpu", seed=5)
    loaded.load_state(path)
    before, after = method.encode(x), loaded.encode(x)
    assert np.array_equal(before.content, after.content)
    assert np.array_equal(before.transformation, after.transformation)
    assert method.encode(x).content.tobytes() == before.content.tobytes()  # encode is deterministic
    with pytest.raises(DcbenchError, match="for inputs"):
        Spectrum(method.config, (1, 8, 8, 8), "cpu", seed=0).load_state(path)


@pytest.mark.parametrize(("override", "message"), [
    ({"n_shells": "0"}, "n_shells must be a whole number >= 1"),
    ({"n_shells": "5000"}, "n_shells must be at most 256"),
    ({"content_dim": "-2"}, "content_dim must be"),
    ({"log_floor": "0"}, "log_floor must be a number > 0"),
    ({"epochs": "3"}, "epochs must be 1"),
    ({"n_shell": "3"}, "n_shell"),
])
def test_bad_settings_fail_in_planning_before_any_data_is_loaded(override: dict[str, str], message: str) -> None:
    spec = RunSpec(method="spectrum", dataset="digits", overrides=override)
    with pytest.raises(DcbenchError, match=message):
        plan(spec, get_registry())


def test_defaults_follow_the_code_sizes_of_the_other_methods_and_overrides_apply() -> None:
    assert Spectrum.default_config("quick", (1, 28, 28))["content_dim"] == 10
    assert Spectrum.default_config("paper", (3, 64, 64))["content_dim"] == 16
    p = plan(RunSpec(method="spectrum", dataset="subtomo-sim", overrides={"n_shells": "10", "content_dim": "4"}),
             get_registry())
    assert p.config["n_shells"] == 10 and p.config["content_dim"] == 4 and p.config["transformation_dim"] == 50
    x = blobs(12, (16, 16, 16), seed=4)
    method = Spectrum({**p.config, "transformation_dim": 0}, (1, 16, 16, 16), "cpu", 0)
    method.fit(Split(x, np.zeros(12, np.int64)), RunContext(on_epoch=lambda epoch, terms: None))
    codes = method.encode(x)
    assert codes.content.shape == (12, 4) and codes.transformation.shape == (12, 0)


def test_run_on_digits_writes_a_record_and_a_leaderboard_row(tmp_path: Path) -> None:
    spec = RunSpec(method="spectrum", dataset="digits", seed=0, runs_dir=tmp_path / "runs",
                   leaderboard_dir=tmp_path / "boards", overrides={"data.train_size": "300", "data.test_size": "100"})
    result = execute(spec)
    provenance = json.loads((result.run_dir / "provenance.json").read_text())
    assert provenance["status"] == "finished" and provenance["device"] == "cpu"
    assert provenance["loss_history"][0]["content_variance_kept"] > 0.5  # the one pass is the one "epoch"
    assert 0.3 < result.metrics["D(c|c)"] <= 1.0 and np.isnan(result.metrics["recon MSE"])
    (line,) = (tmp_path / "boards" / "digits.jsonl").read_text().splitlines()
    row = json.loads(line)
    assert row["method"] == "spectrum" and row["generative"] is False and row["budget"]["epochs"] == 1
    assert row["preset"] == "quick data.test_size=100 data.train_size=300"
    markdown = result.leaderboard.read_text()
    assert "| spectrum" in markdown and "## Budgets" in markdown


def test_separates_the_compositions_of_simulated_subtomograms() -> None:
    from dcbench_plugins.datasets.subtomo_sim import SubtomoSim

    data = SubtomoSim(per_structure=6, snr=0.1).load(seed=0)  # 3 compositions x 6 conformations
    method = fitted(data.train.x)
    x = np.concatenate([data.train.x, data.test.x])
    truth = np.concatenate([data.train.content, data.test.content])
    clusters = KMeans(n_clusters=3, n_init=10, random_state=0).fit_predict(method.encode(x).content)
    assert adjusted_rand_score(truth, clusters) > 0.6  # chance is 0
