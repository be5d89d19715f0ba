"""The `hydra` method against Hydra's REAL `drgnai` (opt-in: `pytest --real-hydra tests/test_hydra_real.py`).

The same checks as the stand-in's end-to-end test (tests/test_hydra.py), on Hydra's own outputs:
one progress line per Hydra epoch with the loss from its log, the settings in its configs.yaml
and in the train-configs.yaml Hydra wrote back, the newest p_classes file read, its argmax mapped
back to the train and test rows, ARI and AUC-FSC numbers with n/a elsewhere, and the leaderboard
row. It runs on 12 subtomo-proteins particles (8 train + 4 test: two of Hydra's pose-search
batches of 8) for 3 Hydra epochs (2 with pose search, 1 SGD) with Hydra's default settings: 13
minutes on this project's 2 busy CPU cores, where a pose-search epoch costs about 10 CPU-seconds per
particle and class (docs/hydra.md).

Skipped unless pytest is given --real-hydra (tests/conftest.py: CI never runs it); then skipped
with how to build it when no Hydra environment is found ($DCBENCH_HYDRA_EXE, PATH, or what
`dcbench hydra setup` recorded).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dcbench_plugins.hydra import environment, program

pytestmark = pytest.mark.real_hydra

# Found at import, before tests/conftest.py points $DCBENCH_HYDRA_HOME at an empty folder per test.
RECORD = environment.home() / environment.RECORD
REAL_DRGNAI = os.environ.get(program.ENV_VAR, "").strip() or shutil.which("drgnai") or environment.recorded_drgnai()
COMPOSITIONS = 4  # subtomo-proteins: nucleosome, spike pre- and post-fusion, proteasome
TRAIN, TEST = 8, 4
N = TRAIN + TEST


def top_level(path: Path) -> dict[str, str]:
    """The top-level `key: value` scalars of a block-style YAML file, as text (no PyYAML in dcbench)."""
    found = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(": ")
        if sep and not line.startswith((" ", "-")):
            found[key] = value.strip()
    return found


@pytest.fixture
def drgnai() -> str:
    if not REAL_DRGNAI:
        pytest.skip(f"no Hydra environment: build it with `dcbench hydra setup --source PATH_OR_URL` (recorded in "
                    f"{RECORD}) or set {program.ENV_VAR}")
    return str(REAL_DRGNAI)


def test_hydra_runs_end_to_end_on_subtomo_proteins_with_the_real_program(tmp_path: Path, drgnai: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), **{program.ENV_VAR: drgnai})
    args = ["run", "-m", "hydra", "-d", "subtomo-proteins", "--epochs", "3", "--seed", "0", "--device", "cpu",
            "--set", "pose_search_epochs=2", "--set", "data.per_structure=2", "--set", f"data.train_size={TRAIN}",
            "--set", f"data.test_size={TEST}"]
    # not plugin_helpers.run_dcbench: its 10-minute limit is far too short for Hydra on a CPU
    result = subprocess.run([sys.executable, "-m", "dcbench.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=4 * 3600)
    assert result.returncode == 0, result.stderr
    check_real_run(tmp_path, result.stderr)


def check_real_run(root: Path, stderr: str) -> None:
    """The checks, on a run made in `root` (its runs/ and leaderboards/) that printed `stderr`;
    callable by hand on a finished run."""
    (run_dir,) = (root / "runs" / "subtomo-proteins" / "hydra").iterdir()
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["status"] == "finished"
    history = provenance["loss_history"]
    # one progress line per Hydra epoch (0, 1, 2; not pretraining), the loss parsed from Hydra's log
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert all(math.isfinite(h["loss"]) and h["loss"] > 0 for h in history), history
    assert "epoch 3/3: loss " in stderr

    work = run_dir / "hydra"
    log = (work / "drgnai.log").read_text()
    assert "drgnai setup" in log and "--reconstruction-type het" in log and "drgnai train" in log
    assert f"Loaded {N} 32x32 images" in log and "A/pix             : 10.0" in log  # the stack and the CTF's pixel size
    codes = np.load(run_dir / "codes.npz")
    n_train, n_test = len(codes["train_labels"]), len(codes["test_labels"])
    assert (n_train, n_test) == (TRAIN, TEST) and codes["test_content"].shape == (n_test, 0)
    # K: the compositions among the particles (a subsample this small may miss one of the four)
    k = len(np.unique(np.concatenate([codes["train_labels"], codes["test_labels"]])))
    assert 2 <= k <= COMPOSITIONS
    configs = top_level(work / "experiment" / "configs.yaml")
    used = top_level(work / "experiment" / "out" / "train-configs.yaml")  # the settings Hydra ran with
    for key, value in {"n_classes": k, "seed": 0, "n_imgs_pose_search": N, "epochs_sgd": 1,
                       "log_heavy_interval": 2}.items():
        assert configs[key] == str(value) and used[key] == str(value), key
    adapter = json.loads((work / "adapter.json").read_text())
    assert adapter["hydra_epoch"] == 2 and adapter["p_classes"].endswith("p_classes.2.pkl")

    with open(adapter["p_classes"], "rb") as handle:  # Hydra's own file, written by us-run code: trusted here
        posteriors = pickle.load(handle)
    assert posteriors.shape == (N, k) and np.allclose(posteriors.sum(axis=1), 1, atol=1e-4)
    classes = posteriors.argmax(axis=1)
    np.testing.assert_array_equal(codes["train_assignments"], classes[:n_train])  # train rows first
    np.testing.assert_array_equal(codes["test_assignments"], classes[n_train:])

    from sklearn.metrics import adjusted_rand_score

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["ARI(composition)"] == pytest.approx(adjusted_rand_score(codes["test_labels"],
                                                                            codes["test_assignments"]))
    assert math.isnan(metrics["ARI(conformation)"]) and math.isnan(metrics["D(c|c)"]) and math.isnan(metrics["D(c|z)"])
    assert 0 <= metrics["AUC-FSC(min)"] <= metrics["AUC-FSC(mean)"] <= 0.5
    figures = {p.name for p in (run_dir / "figures").iterdir()}
    assert {"volume_montage.png", "fsc_averages.png"} <= figures

    (row,) = [json.loads(line) for line in
              (root / "leaderboards" / "subtomo-proteins.jsonl").read_text().splitlines()]
    assert row["method"] == "hydra" and row["budget"]["train_size"] == N
    assert row["metrics"]["ARI(composition)"] == pytest.approx(metrics["ARI(composition)"])
