"""Files a structural biologist can take on from a 3D run, written into its `exports/` folder:

- `test_particles.star`, `train_particles.star` (RELION 3.1+ layout, written with `starfile`):
  data_optics (one group; `_rlnImagePixelSize` from the reference maps' voxel size, else the
  dataset's provenance["pixel_size"], else left out) and data_particles with, per particle of
  the split, in codes.npz's row order: `_rlnImageId` (1-based row), `_rlnImageName` (where the
  dataset named its particles: Split.names), `_rlnClassNumber` (1-based) and
  `_rlnOpticsGroup`.
  Classes of the test particles are the clusters the `ari` and `fsc` metrics score: the method's
  own classes (Codes.assignments, e.g. Hydra) or k-means on the test content codes with k = the
  number of compositions (dcbench.clustering.kmeans, seeded with the run's seed). Train
  particles get the same numbering: their own assignments, or the class whose test-cluster mean
  content code is nearest. Class number = cluster id + 1.
- `class_averages.mrcs`: the `fsc` metric's cluster averages (each aligned to its best-matching
  reference map, up to its `max_particles` setting of test particles each) as one MRC volume
  stack: volume N is class N (all zeros for a class that has no average: empty, or never
  averaged), voxel size in the header. One stack rather than a file per class so the board links one file (mrcfile and
  the `mrc` dataset read it as a stack, ispg 401). Only where the fsc metric ran and applied.

2D runs write nothing (inputs that are not volumes), and neither does a method with neither
content codes nor assignments. The runner lists the test STAR ("classes STAR") and the averages
("class averages MRC") in the run's figures.json, which the leaderboard links; the train STAR
stays in the run folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dcbench import atomic
from dcbench.api import Codes, DataBundle, Metric, Split
from dcbench.clustering import kmeans

EXPORTS_DIR = "exports"
TEST_STAR = f"{EXPORTS_DIR}/test_particles.star"
TRAIN_STAR = f"{EXPORTS_DIR}/train_particles.star"
AVERAGES_MRC = f"{EXPORTS_DIR}/class_averages.mrcs"
PIXEL_SIZE = "pixel_size"  # provenance entry: Å per voxel, where the dataset knows it without reference maps


def test_classes(test_codes: Codes, test_labels: np.ndarray, seed: int) -> np.ndarray | None:
    """0-based class of each test particle, as the ari and fsc metrics cluster them; None when
    the method gives neither assignments nor content codes, or too few particles to cluster."""
    if test_codes.assignments is not None:
        return np.asarray(test_codes.assignments, dtype=np.int64)
    k = len(np.unique(test_labels))
    content = test_codes.content
    if content.shape[1] == 0 or len(content) < k:
        return None
    if k < 2:  # one composition: one class (fsc's rule; k-means needs two)
        return np.zeros(len(content), dtype=np.int64)
    return np.asarray(kmeans(content, k, seed), dtype=np.int64)


def train_classes(train_codes: Codes, test_codes: Codes, classes: np.ndarray) -> np.ndarray:
    """The train particles in the test particles' numbering: the method's own classes, else the
    class with the nearest mean test content code (k-means on the train codes would number its
    clusters independently)."""
    if train_codes.assignments is not None:
        return np.asarray(train_codes.assignments, dtype=np.int64)
    ids = np.unique(classes)
    means = np.stack([test_codes.content[classes == c].mean(axis=0) for c in ids]).astype(np.float64)
    distances = ((train_codes.content[:, None, :].astype(np.float64) - means[None]) ** 2).sum(axis=2)
    return ids[np.argmin(distances, axis=1)]


def star_blocks(classes: np.ndarray, names: Sequence[str] | None, voxel: float | None, box: int
                ) -> dict[str, Any]:
    """data_optics and data_particles (RELION 3.1+) for 0-based classes."""
    import pandas as pd

    optics: dict[str, list[Any]] = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"]}
    if voxel is not None:
        optics["rlnImagePixelSize"] = [float(voxel)]
    optics.update(rlnImageSize=[int(box)], rlnImageDimensionality=[3])
    particles: dict[str, Any] = {"rlnImageId": np.arange(1, len(classes) + 1)}
    if names is not None:
        particles["rlnImageName"] = list(names)
    particles.update(rlnClassNumber=np.asarray(classes, dtype=np.int64) + 1,
                     rlnOpticsGroup=np.ones(len(classes), dtype=np.int64))
    return {"optics": pd.DataFrame(optics), "particles": pd.DataFrame(particles)}


def write_star(path: Path, blocks: dict[str, Any]) -> Path:
    import starfile

    atomic.write_text(path, starfile.to_string(blocks))
    return path


def write_averages(path: Path, averages: dict[int, np.ndarray], n_classes: int, voxel: float) -> Path:
    """One MRC volume stack (N, D, H, W), volume c + 1 = cluster c's average, voxel size in Å."""
    import mrcfile

    shape = next(iter(averages.values())).shape
    stack = np.zeros((n_classes, *shape), dtype=np.float32)
    for cluster, average in averages.items():
        stack[cluster] = average
    with atomic.atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as handle:
            handle.set_data(stack)  # 4D data: mrcfile writes a volume stack (ispg 401)
            handle.voxel_size = float(voxel)
    return path


def _names(split: Split) -> list[str] | None:
    return None if split.names is None else [str(name) for name in split.names]


def cluster_averages(metrics: Sequence[Metric]) -> dict[int, np.ndarray]:
    """The averages a metric of the run left (the fsc metric's cluster_averages), else {}."""
    for metric in metrics:
        averages = getattr(metric, "cluster_averages", None)
        if averages:
            return dict(averages)
    return {}


def write_for_run(run_dir: Path, data: DataBundle, train_codes: Codes, test_codes: Codes,
                  metrics: Sequence[Metric], seed: int) -> dict[str, Path]:
    """The runner's hook: the exports of a 3D run (see the module docstring); returns {kind: file}
    of those the board links ({} for 2D runs). `metrics`: those the run computed (not the ones
    that did not apply), whose cluster averages become the MRC stack."""
    if data.test.x.ndim != 5:  # volumes only (2D images have no STAR / MRC use)
        return {}
    classes = test_classes(test_codes, data.test.content, seed)
    if classes is None:
        return {}
    run_dir = Path(run_dir)
    # Å per voxel: the reference maps', else one the dataset read with its labels (a STAR's pixel size)
    voxel = data.references.voxel if data.references is not None else data.provenance.get(PIXEL_SIZE)
    voxel = float(voxel) if isinstance(voxel, (int, float)) and voxel > 0 else None
    box = data.test.x.shape[-1]
    linked = {"classes STAR": write_star(run_dir / TEST_STAR, star_blocks(classes, _names(data.test), voxel, box))}
    train = train_classes(train_codes, test_codes, classes)
    write_star(run_dir / TRAIN_STAR, star_blocks(train, _names(data.train), voxel, box))
    averages = cluster_averages(metrics)
    if averages and voxel is not None:
        n_classes = max(int(classes.max()), *averages) + 1
        linked["class averages MRC"] = write_averages(run_dir / AVERAGES_MRC, averages, n_classes, voxel)
    return linked
