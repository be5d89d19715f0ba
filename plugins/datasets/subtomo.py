"""`subtomo`: the paper's published subtomograms, composition_conformation_subtomograms.pkl
(Zenodo record 11244440: 18,000 volumes of 32^3), read with the restricted unpickler (plain numpy
arrays only; nothing in the file runs) and z-scored per volume as in the paper's code.

What the pickle may hold (anything else is a DataError naming the file and what it found):
- one real-valued array whose trailing axes hold exactly 32^3 values, e.g. (N, 32, 32, 32),
  (N, 1, 32, 32, 32) or (N, 32768); it is read as (N, 32, 32, 32) in C order, like the paper's
  `reshape(-1, 32, 32, 32)`; or whose last three axes are another cube (N, B, B, B), rescaled to
  32^3 by Fourier cropping/padding (rescale.py; voxel size unknown: a pickle has no header) unless
  `data.resample=off`;
- a list or tuple of such arrays (single volumes or batches), concatenated in order;
- a dict with exactly one value of either kind (other entries are ignored and listed in the
  provenance: they are not taken as labels).

The published file carries no labels and their order is not documented, so they are never
inferred: `data.labels` names a CSV (or STAR) file with one row per volume in pickle order
(columns in volume_labels.py; an `index` column picks volumes by 0-based position instead).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from dcbench.api import DataBundle, Dataset
from dcbench.errors import DataError
from dcbench.paths import dataset_cache
from dcbench.safe_pickle import load_numpy_pickle
from dcbench_plugins.datasets.rescale import BoxChange, check_resample, rescale_all
from dcbench_plugins.datasets.volume_labels import LabelTable, read_labels
from dcbench_plugins.datasets.volumes import (
    BOX,
    check_box,
    check_test_fraction,
    first_non_finite,
    make_bundle,
    option_path,
    read_references,
    zscore_,
)

PICKLE_NAME = "composition_conformation_subtomograms.pkl"
ZENODO = "https://zenodo.org/records/11244440"
VOXELS = BOX**3


# --------------------------------------------------------------------------- reading the pickle


def as_volumes(array: Any) -> np.ndarray | None:
    """(N, BOX, BOX, BOX) view of an array whose trailing axes hold BOX^3 values, else (N, B, B, B)
    of one whose last three axes are a cube (another box, for rescaling); None otherwise."""
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu" or array.ndim == 0:
        return None
    trailing = 1
    for axis in range(array.ndim - 1, -1, -1):
        trailing *= array.shape[axis]
        if trailing == VOXELS:
            return array.reshape(-1, BOX, BOX, BOX)
        if trailing > VOXELS:
            break
    if array.ndim >= 3 and array.shape[-1] == array.shape[-2] == array.shape[-3] > 0:
        return array.reshape(-1, *array.shape[-3:])
    return None


def _describe(obj: Any) -> str:
    if isinstance(obj, np.ndarray):
        return f"an array of shape {obj.shape} and dtype {obj.dtype}"
    if isinstance(obj, (list, tuple)):
        kinds = sorted({_describe(item) for item in obj[:5]})
        return f"a {type(obj).__name__} of {len(obj)} items ({'; '.join(kinds)}{'...' if len(obj) > 5 else ''})"
    if isinstance(obj, dict):
        return f"a dict with keys {sorted(map(str, obj))}"
    return f"a {type(obj).__name__}"


def _from_sequence(items: list | tuple) -> np.ndarray | None:
    parts = [as_volumes(item) for item in items]
    if not parts or any(part is None for part in parts) or len({part.shape[1:] for part in parts}) > 1:
        return None
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def volumes_from_pickle(obj: Any, source: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """The volumes of an unpickled object (see the module docstring) and how they were found."""
    found = as_volumes(obj)
    if found is not None:
        return found, {"container": "array", "stored_shape": list(obj.shape), "dtype": str(obj.dtype)}
    if isinstance(obj, (list, tuple)):
        found = _from_sequence(obj)
        if found is not None:
            return found, {"container": f"{type(obj).__name__} of {len(obj)} arrays", "dtype": str(found.dtype)}
    if isinstance(obj, dict):
        hits = {}
        for key, value in obj.items():
            volumes = as_volumes(value) if isinstance(value, np.ndarray) else (
                _from_sequence(value) if isinstance(value, (list, tuple)) else None)
            if volumes is not None:
                hits[key] = volumes
        if len(hits) == 1:
            ((key, volumes),) = hits.items()
            ignored = sorted(str(k) for k in obj if k != key)
            return volumes, {"container": f"dict entry {key!r}", "dtype": str(volumes.dtype), "ignored_keys": ignored}
        if len(hits) > 1:
            raise DataError(f"{source} holds a dict with several volume arrays ({', '.join(map(str, hits))}); "
                            "dcbench will not pick one: save the one you mean on its own")
    raise DataError(f"{source} holds {_describe(obj)}, not {BOX}^3 volumes: expected an array (N, {BOX}, {BOX}, "
                    f"{BOX}) or anything whose trailing axes hold {VOXELS} values, or (N, B, B, B) cubes of another "
                    f"box to rescale (or a list / dict of such, all of one box)")


# ------------------------------------------------------------------------------------ labels


def select_labelled(x: np.ndarray, table: LabelTable, source: Path) -> np.ndarray:
    """The volumes the labels describe: by their `index` column, else all of them in order."""
    if table.files is not None:
        raise DataError(f"{table.source} names a file per volume, which means nothing for a pickle; give rows "
                        "in pickle order, or an 'index' column (0-based position in the pickle)")
    if table.indices is None:
        if len(table) != len(x):
            raise DataError(f"{table.source} has {len(table)} label rows but {source} holds {len(x)} volumes; "
                            "give one row per volume in pickle order")
        return x
    past = np.flatnonzero(table.indices >= len(x))
    if past.size:
        row = int(past[0])
        raise DataError(f"{table.source} row {row + 2}: index {int(table.indices[row])} is past the {len(x)} "
                        f"volumes of {source} (indices are 0-based)")
    unique, counts = np.unique(table.indices, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{table.source} labels volume {int(unique[counts > 1][0])} more than once")
    return x[table.indices]


class SubtomoPickle(Dataset):
    name = "subtomo"
    shape = (1, BOX, BOX, BOX)
    default_metrics = ("ari", "fsc", "dscore")
    # path: the pickle (default: PICKLE_NAME in --data-root, then in the cache); labels: CSV/STAR,
    # one row per volume (required); references: folder with references.csv and the maps
    # resample: auto / fourier / off, as the `mrc` dataset's (cubes of another box to 32^3)
    option_defaults = {"path": None, "labels": None, "references": None, "test_fraction": 0.2, "resample": "auto"}

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        check_test_fraction(options["test_fraction"])  # while planning; the files are load()'s
        check_resample(options["resample"])

    def _pickle_path(self) -> Path:
        given = option_path(self.options, "path")
        if given is not None:
            if not given.is_file():
                raise DataError(f"{given} does not exist; data.path must name {PICKLE_NAME} (from {ZENODO})")
            return given
        cache = dataset_cache("subtomo")
        roots = ([Path(self.data_root)] if self.data_root is not None else []) + [cache]
        for root in roots:
            if root.is_file():
                return root  # --data-root naming the file itself
            if (root / PICKLE_NAME).is_file():
                return root / PICKLE_NAME
        raise DataError(f"{PICKLE_NAME} not found (looked in {', '.join(map(str, roots))}); download it from "
                        f"Zenodo record 11244440 ({ZENODO}) into {cache}, or pass --set data.path=FILE")

    def _labels(self, source: Path) -> LabelTable:
        path = option_path(self.options, "labels")
        if path is None:
            raise DataError(f"{source} carries no labels (the published pickle has none and their order is not "
                            "documented), and dcbench does not guess them; pass --set data.labels=FILE, a CSV with "
                            "one row per volume in pickle order and a composition column (optionally conformation)")
        return read_labels(path)

    def load(self, seed: int) -> DataBundle:
        source = self._pickle_path()
        table = self._labels(source)  # before the (large) unpickling, so a missing file fails fast
        volumes, found = volumes_from_pickle(load_numpy_pickle(source), source)
        x = select_labelled(volumes, table, source)
        resample = str(self.options["resample"])
        check_box(x.shape[1:], str(source), resample)
        change = BoxChange(x.shape[-1], None, BOX, resample)  # a pickle states no voxel size
        positions = table.indices if table.indices is not None else np.arange(len(x))
        bad = first_non_finite(x)  # before rescaling, which would spread a NaN over its volume
        if bad is not None:
            raise DataError(f"{source} volume {int(positions[bad])} (0-based) contains NaN or infinite values")
        if change.rescaled:
            x = rescale_all(x, BOX)
            print(change.notice(self.name), file=sys.stderr)
        # z-scored in place: the unpickled array is ours alone, so it is copied only to change
        # dtype or when numpy rebuilt it read-only
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not x.flags.writeable:
            x = x.copy()
        x = x.reshape(len(x), 1, BOX, BOX, BOX)
        zscore_(x, lambda i: f"{source} volume {int(positions[i])} (0-based)")
        references, references_csv = None, None
        where = option_path(self.options, "references")
        if where is not None:
            references, csv = read_references(where, table, None, resample, change)
            references_csv = str(csv)
        provenance = {
            "source": str(source), "size_bytes": source.stat().st_size, **found,
            "n_volumes_in_pickle": int(len(volumes)), "labels": str(table.source), "box": change.record(),
            "preprocessing": (f"{change.method} from {change.box}^3 to {BOX}^3, then " if change.rescaled else "")
            + "per-volume z-score (mean 0, population std 1), as the paper's code",
            "references": references_csv,
        }
        return make_bundle(x, table, float(self.options["test_fraction"]), provenance, references)
