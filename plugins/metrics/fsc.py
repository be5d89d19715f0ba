"""fsc: AUC-FSC of reference-free subtomogram averages of the clusters of the content codes.

The paper clustered the test subtomograms by content code, averaged each cluster with RELION,
fitted each average to its best-matching ground-truth map by hand in ChimeraX and reported the
mean and the minimum AUC-FSC over clusters. dcbench does the same automatically and reproducibly:

1. k-means (scikit-learn, 10 initialisations, seeded with the run's seed) on the test content
   codes, k = the number of compositions in the test labels;
2. per cluster, up to `max_particles` of its test particles (a seeded random subset);
3. a reference-free average (`alignment.reference_free_average`: a reference bootstrapped from
   a few particles, then rounds of exhaustive + local rotational and translational alignment);
4. if the particles carry a CTF (`data.ctf`), phase flipping of the average;
5. the average aligned (rotation + shift; the hand is fixed, no mirror) to every reference map,
   keeping the one it correlates with best;
6. the FSC between the aligned average and that map, and its AUC over normalised frequency
   [0, 0.5] (`fourier_shell.auc_fsc`: a perfect match scores 0.5).

A method that assigns classes itself (Codes.assignments, e.g. Hydra) is scored on its classes
instead of step 1's k-means clusters: every class it uses is a cluster, and if it uses fewer than
k classes the missing ones count as empty clusters (0), as collapsed k-means clusters do.

AUC-FSC(mean) and AUC-FSC(min) are over clusters. An empty cluster scores 0 (it reconstructs
nothing; k-means leaves one empty only when codes collapse to fewer distinct points than
compositions), so collapsed codes are penalised rather than skipped. Requires volumes, reference
maps and content codes or assignments (the runner reports it not applicable otherwise); NaN for
fewer test particles than compositions. The mean of the average (its k = 0 term) is not
measurable from z-scored or CTF-filtered particles, so the average takes the map's mean before
the FSC: shell 0 always agrees. No missing-wedge compensation.

Figure: "cluster averages", figures/fsc_averages.png (each cluster's aligned average above the
map it matched best), returned in the MetricResult.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dcbench.api import Metric, MetricInput, MetricResult
from dcbench.clustering import kmeans
from dcbench.figures import volume_montage
from dcbench_plugins.metrics.fourier_shell import auc_fsc
from dcbench_plugins.subtomo import alignment, physics, rotations


class FSC(Metric):
    name = "fsc"
    columns = {"AUC-FSC(mean)": "max", "AUC-FSC(min)": "max"}
    requires = frozenset({"volumes", "references", "codes_or_assignments"})
    # Budget knobs. Time grows linearly with each; 3 clusters x 200 particles of 32^3 take about 20 s
    # on 2 CPU cores with the defaults.
    settings = {
        "max_particles": 200,  # particles averaged per cluster: larger clusters are subsampled (seeded)
        "iterations": 3,  # rounds of align-all-then-average after the bootstrapped first reference
        "step_degrees": 30.0,  # angular step of the exhaustive rotation grid (552 rotations at 30 degrees)
        "max_shift_fraction": 0.2,  # largest shift searched per axis, a fraction of the box (6.4 voxels for 32^3)
    }
    cluster_averages: dict[int, np.ndarray]
    """After compute(): each non-empty cluster's average aligned to its best-matching map (D, H, W),
    by cluster id (k-means cluster, or the method's class), as fsc_averages.png shows them; unset
    until compute runs (never for a run the metric does not apply to). dcbench.exports writes them
    as MRC."""

    def compute(self, inputs: MetricInput) -> MetricResult:
        data, seed = inputs.data, inputs.seed
        self.cluster_averages = {}
        assert data.references is not None, "fsc requires reference maps (checked by dcbench.metric_contract)"
        particles = np.asarray(data.test.x[:, 0], dtype=np.float32)
        maps = np.asarray(data.references.maps, dtype=np.float32)
        if maps.shape[1:] != particles.shape[1:]:
            raise ValueError(f"reference maps of shape {maps.shape[1:]} do not match particles of shape "
                             f"{particles.shape[1:]}")
        k = len(np.unique(data.test.content))
        codes = inputs.test_codes
        if len(particles) < k:
            return MetricResult({column: math.nan for column in self.columns})
        if codes.assignments is not None:
            clusters = np.asarray(codes.assignments)
            cluster_ids = [int(c) for c in np.unique(clusters)]  # the method's classes
        else:
            clusters = _kmeans(codes.content, k, seed)
            cluster_ids = list(range(k))
        rng = np.random.default_rng(seed)
        # fewer classes than compositions: the missing ones are empty clusters, scored 0
        scores, shown = [0.0] * max(0, k - len(cluster_ids)), []
        for index, cluster in enumerate(cluster_ids):
            members = np.flatnonzero(clusters == cluster)
            if len(members) == 0:
                scores.append(0.0)
                continue
            max_particles = int(self.settings["max_particles"])
            if len(members) > max_particles:
                members = np.sort(rng.choice(members, max_particles, replace=False))
            score, best, aligned = self.cluster_score(particles[members], maps, data.references.voxel, data.ctf,
                                                      seed + index)
            scores.append(score)
            shown += [aligned, maps[best]]
            self.cluster_averages[cluster] = aligned
        figures: dict[str, Path] = {}
        if inputs.figures_dir is not None and shown:
            # each cluster's aligned average above the true map it matched best
            figures["cluster averages"] = volume_montage(np.stack(shown), inputs.figures_dir / "fsc_averages.png",
                                                         step=2)
        return MetricResult({"AUC-FSC(mean)": float(np.mean(scores)), "AUC-FSC(min)": float(np.min(scores))},
                            figures)

    def cluster_score(self, particles: np.ndarray, maps: np.ndarray, voxel: float, ctf: dict[str, float] | None,
                      seed: int) -> tuple[float, int, np.ndarray]:
        """(AUC-FSC, index of the best-matching map, the average aligned to it) of the
        reference-free average of (N, D, H, W) particles against (M, D, H, W) reference maps."""
        side = particles.shape[-1]
        step, max_shift = float(self.settings["step_degrees"]), float(self.settings["max_shift_fraction"]) * side
        iterations = int(self.settings["iterations"])
        average, _ = alignment.reference_free_average(particles, iterations, seed, step, max_shift)
        templates = maps
        if ctf:
            # The average carries the CTF (rotationally symmetric, so it commutes with the poses).
            # A positive factor per shell leaves the shell-wise FSC unchanged, but the CTF's negative
            # lobes flip the sign of whole shells; multiplying by sign(CTF) (phase flipping) makes
            # the average |CTF| x map. The maps are weighted by |CTF| alike for the alignment only
            # (a matched filter); the FSC uses the maps as they are.
            transfer = physics.ctf_rfft(side, voxel, **ctf)
            average = _filter(average, np.sign(transfer))
            templates = _filter(maps, np.abs(transfer))
        poses = alignment.find_poses(templates, average, step, max_shift)  # map ~ posed average
        best = int(np.argmax(poses.scores))
        aligned = rotations.rotate_volumes(average[None], poses.rotations[best:best + 1],
                                           poses.shifts[best:best + 1])[0].numpy().astype(np.float64)
        aligned += maps[best].mean() - aligned.mean()  # the k = 0 term is not measurable (see the docstring)
        return auc_fsc(aligned, maps[best]), best, aligned.astype(np.float32)


def _kmeans(codes: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster labels 0 .. k - 1 of the codes (as the ari metric clusters them; empty clusters
    of collapsed codes are scored 0 by compute)."""
    if k < 2:
        return np.zeros(len(codes), dtype=int)
    return kmeans(codes, k, seed)


def _filter(volumes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Volumes (..., D, H, W) with their Fourier transforms multiplied by weights on the rfftn grid."""
    axes = (-3, -2, -1)
    return np.fft.irfftn(np.fft.rfftn(volumes, axes=axes) * weights, s=volumes.shape[-3:], axes=axes).astype(np.float32)
