"""Shared by the volume datasets (`subtomo`, `mrc`): reading MRC volumes with errors that name the
file, per-volume z-scoring, the fixed stratified split, and the ground-truth reference maps.

Every volume becomes BOX^3 = 32^3: the 3D networks take that box and nothing else. Cubic volumes
of another box are rescaled to it (rescale.py: Fourier cropping/padding) unless data.resample=off.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from dcbench.api import DataBundle, ReferenceMaps, Split
from dcbench.errors import DataError
from dcbench_plugins.datasets.rescale import MIN_BOX, BoxChange, fourier_rescale, same_voxel
from dcbench_plugins.datasets.volume_labels import LabelColumn, LabelTable, read_csv_labels

BOX = 32
SPLIT_SEED = 0
DEFAULT_VOXEL = 10.0  # Å; the paper's 1 nm voxels, used when no file states a voxel size
ZSCORE_CHUNK = 1024  # volumes per z-scoring step: bounds the float64 temporaries
RESAMPLE_HINT = (f"resample it to {BOX}^3 first (e.g. `relion_image_handler --i IN --o OUT --rescale_angpix A "
                 f"--new_box {BOX}`)")

Describe = Callable[[int], str]  # volume position -> "volume 3 of FILE", for messages


# ------------------------------------------------------------------------------------------ MRC


def option_path(options: dict[str, Any], key: str) -> Path | None:
    """A file option (`--set data.path=~/x.mrcs`) as a Path, None when unset or empty."""
    value = options.get(key)
    return Path(str(value)).expanduser() if value not in (None, "") else None


@contextmanager
def open_mrc(path: Path) -> Iterator[Any]:
    """mrcfile's strict memory map of one file; corrupt, truncated or non-MRC files raise a
    DataError naming it."""
    import mrcfile

    try:
        with warnings.catch_warnings():
            # mrcfile only warns about some bad files (e.g. bytes past the data the header describes)
            warnings.simplefilter("error", RuntimeWarning)
            handle = mrcfile.mmap(path, mode="r", permissive=False)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (ValueError, OSError, EOFError, TypeError, RuntimeWarning) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path} is not a readable MRC file ({reason}); it may be truncated or corrupt: "
                        "write or copy it again") from None
    try:
        yield handle
    finally:
        handle.close()


def volume_stack(handle: Any, path: Path, resample: str = "off") -> np.ndarray:
    """The file's volumes as a (n, B, B, B) view: 3D data is one volume, 4D data (a volume stack,
    ispg 401) is n volumes. Anything else, a non-cubic box, a box under MIN_BOX, or (resample
    "off") a box other than BOX is a DataError naming the file."""
    data = handle.data
    if data is None or data.ndim not in (3, 4):
        shape = None if data is None else data.shape
        raise DataError(f"{path} holds data of shape {shape}, not 3D volumes: expected one {BOX}^3 volume "
                        "per file, or a volume stack (4D data)")
    if np.iscomplexobj(data) or data.dtype.kind not in "fiub":
        raise DataError(f"{path} holds {data.dtype} values; expected real-valued density (MRC mode 0, 1, 2, 6 or 12)")
    stack = data if data.ndim == 4 else data[None]
    check_box(stack.shape[1:], str(path), resample)
    return stack


def check_box(shape: tuple[int, ...], where: str, resample: str) -> None:
    """One volume's shape (D, H, W) is usable: BOX^3, or (unless resample is "off") another cube
    of at least MIN_BOX that rescale.fourier_rescale brings to BOX^3. Else a DataError naming `where`."""
    if tuple(shape) == (BOX, BOX, BOX):
        return
    box = "x".join(str(s) for s in shape)
    if len(set(shape)) != 1:
        raise DataError(f"{where} holds {box} volumes but the 3D methods take {BOX}^3 cubes and these are not "
                        f"cubic; re-extract the particles in a cubic box (any size: dcbench rescales it to {BOX}^3)")
    if resample == "off":
        raise DataError(f"{where} holds {box} volumes but the 3D methods take {BOX}^3; {RESAMPLE_HINT}, or let "
                        "dcbench rescale it (drop --set data.resample=off)")
    if shape[0] < MIN_BOX:
        raise DataError(f"{where} holds {box} volumes but the 3D methods take {BOX}^3, and a box under {MIN_BOX} "
                        f"is too small to rescale; re-extract the particles in a box of at least {MIN_BOX} voxels")


def count_volumes(path: Path, resample: str = "off") -> int:
    with open_mrc(path) as handle:
        return len(volume_stack(handle, path, resample))


def header_voxel(handle: Any) -> float | None:
    """The x voxel size in an open file's header (Å), or None when unset."""
    size = float(handle.voxel_size.x)
    return size if size > 0 else None


def read_into(out: np.ndarray, path: Path, picks: list[tuple[int, int | None]], resample: str = "off"
              ) -> BoxChange:
    """Copy volumes of one file into out[position, 0]: picks are (position, volume in the file),
    volume None meaning "the file's only volume"; volumes of another box are rescaled to out's
    (unless resample is "off"). Non-finite values are a DataError naming the file. Returns the
    file's box and header voxel size, and what they became."""
    with open_mrc(path) as handle:
        stack = volume_stack(handle, path, resample)
        change = BoxChange(stack.shape[-1], header_voxel(handle), out.shape[-1], resample)
        for position, volume in picks:
            if volume is None:
                if len(stack) != 1:
                    raise DataError(f"{path} holds {len(stack)} volumes; name one as N@{path.name} (1-based)")
                volume = 0
            if not 0 <= volume < len(stack):
                raise DataError(f"{path} holds {len(stack)} volumes; volume {volume + 1} (1-based) does not exist")
            # a NaN or inf spreads through the FFT to every voxel, so the check below still finds it
            out[position, 0] = fourier_rescale(stack[volume], change.new_box) if change.rescaled else stack[volume]
            if not np.isfinite(out[position, 0]).all():
                raise DataError(f"{path} volume {volume + 1} (1-based) contains NaN or infinite values; "
                                "fix or drop it")
    return change


# ------------------------------------------------------------------------------- preprocessing


def first_non_finite(x: np.ndarray) -> int | None:
    """Index of the first volume with a NaN or infinite value, or None. Chunked: no full-size mask."""
    for start in range(0, len(x), ZSCORE_CHUNK):
        chunk = x[start:start + ZSCORE_CHUNK]
        bad = ~np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
        if bad.any():
            return start + int(np.argmax(bad))
    return None


def zscore_(x: np.ndarray, describe: Describe) -> None:
    """Per-volume z-score in place (mean 0, population std 1), as the paper's reference code.
    A constant volume has no scale to divide by: that is a DataError naming it (typically an empty
    extraction at a tomogram's edge), not a silent row of zeros."""
    if not x.flags.c_contiguous:  # reshape would copy, and the in-place update would be lost
        raise ValueError("zscore_ needs a C-contiguous array")
    n = len(x)
    for start in range(0, n, ZSCORE_CHUNK):
        chunk = x[start:start + ZSCORE_CHUNK].reshape(min(ZSCORE_CHUNK, n - start), -1)
        mean = chunk.mean(axis=1, dtype=np.float64)
        std = chunk.std(axis=1, dtype=np.float64)
        flat = np.flatnonzero(~(std > 1e-12 * np.maximum(1.0, np.abs(mean))))
        if flat.size:
            raise DataError(f"{describe(start + int(flat[0]))} is constant (every voxel equals {mean[flat[0]]:.6g}), "
                            "so it cannot be z-scored; remove it")
        chunk -= mean[:, None].astype(x.dtype)
        chunk /= std[:, None].astype(x.dtype)


def check_test_fraction(value: Any) -> None:
    """The share of each structure's volumes that goes to the test split: strictly between 0 and 1
    (both splits need volumes). Shared by the volume datasets' check_options and split_indices."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise DataError(f"data.test_fraction must be between 0 and 1, got {value}; set e.g. "
                        "--set data.test_fraction=0.2")


def split_indices(content: np.ndarray, conformation: np.ndarray | None, test_fraction: float
                  ) -> tuple[np.ndarray, np.ndarray, str]:
    """A fixed split (random_state 0, never the run's seed), stratified by composition x
    conformation where every pair has enough volumes, else by composition alone."""
    from sklearn.model_selection import train_test_split

    check_test_fraction(test_fraction)  # planning checked it already; kept for direct load() calls
    strata = [("composition", content)]
    if conformation is not None:
        strata.insert(0, ("composition x conformation", content * (int(conformation.max()) + 1) + conformation))
    problem = ""
    for what, labels in strata:
        try:
            train, test = train_test_split(np.arange(len(content)), test_size=test_fraction, stratify=labels,
                                           random_state=SPLIT_SEED)
        except ValueError as error:
            problem = str(error).strip().splitlines()[0]
            continue
        how = f"stratified by {what}, test_fraction={test_fraction}, random_state={SPLIT_SEED}"
        return np.sort(train), np.sort(test), how
    raise DataError(f"cannot split {len(content)} volumes with data.test_fraction={test_fraction} stratified by "
                    f"composition ({problem}); every composition needs at least 2 volumes, and the test set at "
                    "least one per composition")


def make_bundle(x: np.ndarray, labels: LabelTable, test_fraction: float, provenance: dict[str, Any],
                references: ReferenceMaps | None = None, ctf: dict[str, float] | None = None) -> DataBundle:
    """The train/test splits of labelled volumes; each volume keeps the name its label file gave it."""
    content = labels.composition.codes
    names = None if labels.files is None else np.array(labels.files, dtype=str)
    conformation = None if labels.conformation is None else labels.conformation.codes
    train, test, how = split_indices(content, conformation, test_fraction)
    pick = lambda a, idx: None if a is None else a[idx]  # noqa: E731
    return DataBundle(
        train=Split(x[train], content[train], pick(conformation, train), names=pick(names, train)),
        test=Split(x[test], content[test], pick(conformation, test), names=pick(names, test)),
        class_names=list(labels.composition.names),
        provenance={**provenance, "split": how, "n_train": int(len(train)), "n_test": int(len(test))},
        references=references,
        conformation_names=None if labels.conformation is None else list(labels.conformation.names),
        ctf=ctf,
    )


# -------------------------------------------------------------------------------- reference maps


def find_references_csv(folder: Path) -> Path | None:
    """references.csv in the folder or in its references/ subfolder (`dcbench simulate`'s layout)."""
    for candidate in (folder / "references.csv", folder / "references" / "references.csv"):
        if candidate.is_file():
            return candidate
    return None


def _resolve(entry: str, bases: list[Path]) -> Path | None:
    path = Path(entry)
    if path.is_absolute():
        return path if path.is_file() else None
    return next((base / path for base in bases if (base / path).is_file()), None)


def _match_codes(table: LabelTable, rows: LabelColumn, own: LabelColumn, what: str) -> np.ndarray:
    """Map a references.csv column onto the particles' codes by name: the names must be the same
    text as the particles' labels (ids are not compared: they may be numbered differently)."""
    codes = []
    for row, code in enumerate(rows.codes):
        name = rows.names[code]
        match = own.code_of(name)
        if match is None:
            raise DataError(f"{table.source} row {row + 2}: {what} '{name}' matches none of the particles' "
                            f"({', '.join(own.names)})")
        codes.append(match)
    return np.asarray(codes, dtype=np.int64)


def read_references(folder: Path, labels: LabelTable, voxel: float | None = None, resample: str = "off",
                    particles: BoxChange | None = None) -> tuple[ReferenceMaps, Path]:
    """The noise-free maps listed in references.csv (columns file, composition[, composition_id,
    conformation, conformation_id]), with labels mapped onto the particles' codes by name. Maps are
    kept as written (not z-scored) but brought to BOX^3 like the particles (resample). voxel: Å at
    BOX^3, else the first map's header (times its box / BOX), else DEFAULT_VOXEL. particles: how the
    particles were rescaled; if either side was, both must span the same Å (else a DataError)."""
    table_path = find_references_csv(folder)
    if table_path is None:
        raise DataError(f"no references.csv in {folder} or {folder / 'references'}; the references folder needs "
                        "one (columns file, composition[, conformation])")
    table = read_csv_labels(table_path)
    if table.files is None:
        raise DataError(f"{table_path} has no 'file' column naming each reference map")
    bases = [table_path.parent, table_path.parent / "references"]
    paths = []
    for row, entry in enumerate(table.files):
        path = _resolve(entry, bases)
        if path is None:
            raise DataError(f"{table_path} row {row + 2} names {entry}, which does not exist "
                            f"(looked in {', '.join(str(b) for b in bases)})")
        paths.append(path)
    maps = np.empty((len(paths), 1, BOX, BOX, BOX), dtype=np.float32)
    first: BoxChange | None = None
    for position, path in enumerate(paths):
        change = read_into(maps, path, [(position, None)], resample)
        first = first or change
        if change.box != first.box:
            raise DataError(f"{path} holds {change.box}^3 maps but {paths[0]} holds {first.box}^3 ones; give "
                            "every reference map one box and voxel size")
    assert first is not None  # references.csv lists at least one map (read_csv_labels refuses empty tables)
    if particles is not None and (particles.rescaled or first.rescaled) and not same_voxel(
            particles.new_voxel, first.new_voxel):
        raise DataError(f"{paths[0]} is a {first.box}^3 map at {first.voxel:g} Å ({first.box * first.voxel:g} Å "
                        f"across) but the particles are {particles.box}^3 at {particles.voxel:g} Å "
                        f"({particles.box * particles.voxel:g} Å across); give reference maps on the particles' scale")
    content = _match_codes(table, table.composition, labels.composition, "composition")
    conformation = None
    if table.conformation is not None and labels.conformation is not None:
        conformation = _match_codes(table, table.conformation, labels.conformation, "conformation")
    voxel = voxel or first.new_voxel or DEFAULT_VOXEL
    names = [p.stem for p in paths]
    return ReferenceMaps(maps[:, 0], content, conformation, names, float(voxel)), table_path
