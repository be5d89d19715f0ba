"""The fsc metric and its alignment: known poses are recovered, averages converge to the map,
clusters that mix compositions score lower, and a CTF is undone by phase flipping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dcbench.api import Codes, DataBundle, MetricInput, ReferenceMaps, Split
from dcbench_plugins.metrics.fourier_shell import auc_fsc
from dcbench_plugins.metrics.fsc import FSC
from dcbench_plugins.subtomo import alignment, physics, rotations

CTF = {"defocus_um": -5.0, "voltage_kv": 300.0, "cs_mm": 1.7, "amplitude_contrast": 0.1}


def blob_map(seed: int, resolution: float = 30.0) -> np.ndarray:
    """An asymmetric complex in a 32^3 box of 1 nm voxels: three clouds of pseudo-atoms of
    different sizes at random places. At 30 Å resolution it is smooth enough that trilinear
    resampling, applied three times on the way to a score, costs little."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-55, 55, size=(3, 3))
    sizes = (14.0, 10.0, 6.0)
    coords = np.concatenate([c + s * rng.normal(size=(60, 3)) for c, s in zip(centres, sizes)])
    return physics.density_map(coords, resolution=resolution).astype(np.float32)


def posed_copies(volume: np.ndarray, n: int, seed: int, noise: float = 0.3,
                 ctf: dict[str, float] | None = None) -> np.ndarray:
    """n randomly rotated and shifted (up to 2 voxels) copies with Gaussian noise of `noise` x
    their standard deviation; the volume is CTF-filtered first if ctf is given."""
    rng = np.random.default_rng(seed)
    if ctf:
        volume = physics.apply_ctf(volume, voxel=10.0, **ctf).astype(np.float32)
    matrices = rotations.quaternions_to_matrices(rotations.random_quaternions(n, rng))
    shifts = rng.uniform(-2, 2, size=(n, 3))
    copies = rotations.rotate_volumes(np.repeat(volume[None], n, 0), matrices, shifts).numpy()
    return copies + noise * copies.std() * rng.normal(size=copies.shape).astype(np.float32)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_the_rotation_grid_covers_so3_at_its_step() -> None:
    grid = alignment.rotation_grid(30.0)
    assert len(grid) == 552 and np.allclose(np.linalg.det(grid), 1.0)
    probes = rotations.quaternions_to_matrices(rotations.random_quaternions(300, np.random.default_rng(0)))
    nearest = rotations.rotation_angle_degrees(probes[:, None], grid[None]).min(1)
    assert nearest.max() < 0.85 * 30.0


def test_align_recovers_a_known_rotation_and_shift() -> None:
    volume = blob_map(0)
    truth = rotations.axis_angle_matrix([1.0, 2.0, 3.0], 130.0)
    shift = np.array([1.5, -2.0, 0.7])
    moved = rotations.rotate_volumes(volume[None], truth[None], shift[None])[0].numpy()
    rotation, found_shift, score = alignment.align(volume, moved)
    assert rotations.rotation_angle_degrees(rotation, truth) < 5.0
    assert np.abs(found_shift - shift).max() < 0.5
    assert score > 0.95


def test_reference_free_average_of_rotated_noisy_copies_recovers_the_map() -> None:
    volume = blob_map(1)
    copies = posed_copies(volume, 24, seed=2)
    average, poses = alignment.reference_free_average(copies, iterations=2, seed=0)
    assert poses.rotations.shape == (24, 3, 3)
    rotation, shift, _ = alignment.align(average, volume)
    aligned = rotations.rotate_volumes(average[None], rotation[None], shift[None])[0].numpy()
    assert correlation(aligned, volume) > 0.9
    assert auc_fsc(aligned, volume) > 0.4  # a perfect match scores 0.5


class QuickFSC(FSC):
    settings = {**FSC.settings, "max_particles": 16, "iterations": 2}


def bundle(ctf: dict[str, float] | None = None, references: bool = True) -> DataBundle:
    maps = np.stack([blob_map(7, resolution=25.0), blob_map(8, resolution=25.0)])
    volumes = [posed_copies(m, 16, seed=10 + i, ctf=ctf) for i, m in enumerate(maps)]
    x = np.concatenate(volumes)[:, None]
    labels = np.repeat([0, 1], 16)
    split = Split(x, labels)
    refs = ReferenceMaps(maps, np.array([0, 1])) if references else None
    return DataBundle(split, split, references=refs, ctf=ctf)


def metric_input(data: DataBundle, codes: np.ndarray) -> MetricInput:
    c = Codes(codes, np.zeros((len(codes), 2)))
    return MetricInput(c, c, data, method=None, seed=0)  # type: ignore[arg-type]


def label_codes(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    return np.eye(2)[labels] + 0.01 * np.random.default_rng(seed).normal(size=(len(labels), 2))


def test_fsc_is_high_for_pure_clusters_and_lower_when_clusters_mix_compositions() -> None:
    data = bundle()
    codes = label_codes(data.test.content)
    pure = QuickFSC().compute(metric_input(data, codes))
    assert pure["AUC-FSC(min)"] > 0.44 and pure["AUC-FSC(mean)"] >= pure["AUC-FSC(min)"]
    # codes that ignore the composition: each cluster holds half of each complex. Even a 50/50 blend
    # of unrelated maps keeps an FSC of about sqrt(1/2) per shell, so the drop is moderate (0.47 -> 0.39)
    mixed = QuickFSC().compute(metric_input(data, label_codes(np.arange(len(codes)) % 2)))
    assert mixed["AUC-FSC(min)"] < pure["AUC-FSC(min)"] - 0.04


def test_codes_collapsed_to_one_point_leave_an_empty_cluster_that_scores_zero() -> None:
    data = bundle()
    scores = QuickFSC().compute(metric_input(data, np.zeros((len(data.test.content), 2))))
    assert scores["AUC-FSC(min)"] == 0.0 and 0.1 < scores["AUC-FSC(mean)"] < 0.25  # (blend's AUC + 0) / 2


def test_fsc_is_not_applicable_without_references_or_volumes() -> None:
    from dcbench.metric_contract import score_metrics

    data = bundle(references=False)
    scoring = score_metrics([QuickFSC()], metric_input(data, label_codes(data.test.content)))
    scores = scoring.scores
    assert set(scores) == set(FSC.columns) and all(math.isnan(v) for v in scores.values())
    assert "reference maps" in scoring.not_applicable["fsc"]
    images = Split(np.zeros((4, 1, 8, 8), np.float32), np.array([0, 0, 1, 1]))
    flat = DataBundle(images, images, references=ReferenceMaps(np.zeros((2, 8, 8, 8), np.float32), np.array([0, 1])))
    scoring = score_metrics([QuickFSC()], metric_input(flat, label_codes(images.content)))
    assert all(math.isnan(v) for v in scoring.scores.values()) and "volumes" in scoring.not_applicable["fsc"]


def test_phase_flipping_undoes_the_ctf_and_finds_the_right_map() -> None:
    data = bundle(ctf=CTF)
    maps = data.references.maps
    for composition in (0, 1):
        particles = data.test.x[16 * composition:16 * (composition + 1), 0]  # CTF-filtered copies of one map
        flipped, best, _ = QuickFSC().cluster_score(particles, maps, 10.0, CTF, seed=0)
        assert best == composition and flipped > 0.38
    # unflipped, the CTF's negative first lobe anticorrelates the low-frequency shells with the map
    unflipped, _, _ = QuickFSC().cluster_score(particles, maps, 10.0, None, seed=0)
    assert unflipped < 0.2


def test_reference_maps_must_match_the_particles_box() -> None:
    data = bundle()
    wrong_box = DataBundle(data.test, data.test,
                           references=ReferenceMaps(data.references.maps[:, :16, :16, :16], np.array([0, 1])))
    with pytest.raises(ValueError, match="do not match"):
        QuickFSC().compute(metric_input(wrong_box, label_codes(data.test.content)))
