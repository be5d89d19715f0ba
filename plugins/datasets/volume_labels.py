"""Label files of the volume datasets (`subtomo`, `mrc`): a CSV or a RELION STAR file, parsed into
integer codes plus names. Nothing here guesses: a missing column or a bad value is a DataError
naming the file and row.

CSV (header row, comma-separated; read as text):
  composition         required; names or integers, one per volume
  composition_id      optional; integer codes for the names (as `dcbench simulate` writes them)
  conformation[_id]   optional, as composition
  file                optional; the volume's file, or `N@stack.mrcs` (RELION: N-th volume, 1-based)
  index               optional; the volume's 0-based position among the dataset's volumes
Without `file` and `index`, row i labels volume i.

STAR (read with the `starfile` library): the first loop that has `_rlnClassNumber` (the
composition): RELION 3.0's and Warp's single loop, RELION 3.1+'s data_particles. The volume
comes from `_rlnImageName`, else `_rlnSubtomogramName` (a file or `N@stack`), else row order.
`_rlnMicrographName` is not read: in RELION's subtomogram STAR files it names the tomogram, not
the particle. STAR files carry no conformation. The pixel size (Å), where the file gives one:
`_rlnImagePixelSize` of each particle's optics group (RELION 3.1+ data_optics), else
`_rlnDetectorPixelSize` (µm) x 10^4 / `_rlnMagnification` (RELION 3.0, Warp). Rows in messages
are counted from the loop's first row.

Codes: the names (the text of the composition / conformation column) are the classes. With an
`_id` column the names are ordered by their ids (so codes equal the ids where those run 0..K-1);
otherwise integer labels are ordered numerically and other names alphabetically. Codes are
always 0..K-1, so names[code] is the label's name. A CSV with only `composition_id` uses the ids
as names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcbench.errors import DataError

STAR_CLASS = "_rlnClassNumber"
STAR_FILE_COLUMNS = ("_rlnImageName", "_rlnSubtomogramName")


@dataclass
class LabelColumn:
    """One kind of label: codes 0..K-1 (one per row) and the name of each code."""

    codes: np.ndarray
    names: list[str]

    def code_of(self, name: str) -> int | None:
        return self.names.index(name) if name in self.names else None


@dataclass
class LabelTable:
    """A parsed label file: one row per volume, in the file's order."""

    source: Path
    composition: LabelColumn
    conformation: LabelColumn | None = None
    files: list[str] | None = None
    indices: np.ndarray | None = None
    pixel_size: float | None = None  # Å per voxel, where a STAR file gives one (CSV: None)

    def __len__(self) -> int:
        return len(self.composition.codes)


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _check_filled(values: list[str], what: str, source: Path, first_row: int) -> None:
    for row, value in enumerate(values):
        if value == "":
            raise DataError(f"{source} row {row + first_row} has no {what}; every volume needs one")


def encode(values: list[str], ids: list[str] | None, what: str, source: Path, first_row: int = 2) -> LabelColumn:
    """Codes 0..K-1 for text labels (see the module docstring). first_row: the file's row number
    of values[0], for error messages."""
    values = [v.strip() for v in values]
    _check_filled(values, what, source, first_row)
    if ids is not None:
        return _encode_with_ids(values, [i.strip() for i in ids], what, source, first_row)
    numbers = [_as_int(v) for v in values]
    if all(n is not None for n in numbers):
        order = sorted(set(numbers))
        codes = np.searchsorted(np.asarray(order), np.asarray(numbers))
        return LabelColumn(codes.astype(np.int64), [str(n) for n in order])
    names = sorted(set(values))
    lookup = {name: code for code, name in enumerate(names)}
    return LabelColumn(np.array([lookup[v] for v in values], dtype=np.int64), names)


def _encode_with_ids(values: list[str], ids: list[str], what: str, source: Path, first_row: int) -> LabelColumn:
    """Names are the classes; the ids only order them (by each name's smallest id), so that codes
    equal the ids where those are 0..K-1. Ids need not be unique per name: a simulator may number
    conformations within each composition."""
    first_id: dict[str, int] = {}
    for row, (value, text) in enumerate(zip(values, ids)):
        number = _as_int(text)
        if number is None:
            raise DataError(f"{source} row {row + first_row}: {what}_id '{text}' is not an integer")
        first_id[value] = min(number, first_id.get(value, number))
    names = sorted(first_id, key=lambda name: (first_id[name], name))
    lookup = {name: code for code, name in enumerate(names)}
    return LabelColumn(np.array([lookup[v] for v in values], dtype=np.int64), names)


def _parse_indices(values: list[str], source: Path, first_row: int) -> np.ndarray:
    out = []
    for row, text in enumerate(values):
        number = _as_int(text.strip())
        if number is None or number < 0:
            raise DataError(f"{source} row {row + first_row}: index '{text}' is not a 0-based volume position")
        out.append(number)
    return np.asarray(out, dtype=np.int64)


# ------------------------------------------------------------------------------------------ CSV


def read_csv_labels(path: Path) -> LabelTable:
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise DataError(f"labels file {path} does not exist") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"labels file {path} is not a readable CSV ({reason})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    for kind in ("composition", "conformation"):
        if kind not in frame.columns and f"{kind}_id" in frame.columns:
            frame[kind] = frame[f"{kind}_id"]
    if "composition" not in frame.columns:
        raise DataError(f"labels file {path} has no 'composition' column (found: {', '.join(frame.columns)}); "
                        "give one row per volume with columns composition[, conformation][, file or index]")
    if len(frame) == 0:
        raise DataError(f"labels file {path} has no rows")
    column = lambda name: list(frame[name]) if name in frame.columns else None  # noqa: E731
    composition = encode(column("composition"), column("composition_id"), "composition", path)
    conformation = None
    if "conformation" in frame.columns:
        conformation = encode(column("conformation"), column("conformation_id"), "conformation", path)
    files = column("file")
    if files is not None:
        _check_filled(files, "file", path, 2)
    index = column("index")
    indices = _parse_indices(index, path, 2) if index is not None else None
    return LabelTable(path, composition, conformation, files, indices)


# ----------------------------------------------------------------------------------------- STAR

# Text columns are kept as written (as the CSV is), so codes follow the same rules for both.
STAR_TEXT_COLUMNS = [STAR_CLASS[1:], *(name[1:] for name in STAR_FILE_COLUMNS), "rlnOpticsGroup"]
# What pandas (under starfile) and starfile say about a malformed loop or key-value line, in STAR's words
_STAR_REASONS = (
    (re.compile(r"Expected (\d+) fields in line \d+, saw (\d+)"),
     "a loop's rows have different numbers of values ({0} and {1}); give every row one value per column"),
    (re.compile(r"Length mismatch: Expected axis has (\d+) elements, new values have (\d+)"),
     "a loop's rows have {0} values for {1} columns; give every row one value per column"),
    (re.compile(r"values to unpack"), "a key-value line needs exactly one value after its _label"),
    (re.compile(r"^Error tokenizing data\. C error: (.*)"), "{0}"),
)


def _star_reason(error: BaseException) -> str:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    for pattern, words in _STAR_REASONS:
        match = pattern.search(reason)
        if match:
            return words.format(*match.groups())
    return reason


def read_star_blocks(path: Path) -> dict[str, Any]:
    """Every data block of a STAR file (starfile.read: a DataFrame per loop, a dict per key-value
    block; labels without their leading '_'), bad files as one-line DataErrors."""
    import starfile

    try:
        path.read_text(encoding="utf-8")  # starfile reads through linecache, which hides a binary file
        blocks = starfile.read(path, always_dict=True, parse_as_string=STAR_TEXT_COLUMNS)
    except FileNotFoundError:
        raise DataError(f"labels file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:  # pandas' ParserError is a ValueError
        raise DataError(f"labels file {path} is not a readable STAR file ({_star_reason(error)})") from None
    return {name: block for name, block in blocks.items() if block is not None}


def _check_width(frame: Any, path: Path, block: str) -> None:
    """pandas fills a row that is short of values with NaN (or '' in a text column); the missing
    values are the last ones."""
    last = frame.columns[-1]
    for row, value in enumerate(frame[last].tolist()):
        if value == "" or (isinstance(value, float) and np.isnan(value)):
            raise DataError(f"{path} data_{block} row {row + 1} has fewer values than the loop's "
                            f"{len(frame.columns)} columns; give every row one value per column")


def _pixel_size(frame: Any, optics: Any) -> float | None:
    """Å per voxel of the particles: RELION 3.1+ takes _rlnImagePixelSize from each particle's
    optics group (data_optics); RELION 3.0 and Warp give _rlnDetectorPixelSize (µm) and
    _rlnMagnification per particle (Å = µm x 10^4 / magnification). None when the file gives
    none, or gives several different ones."""
    sizes = None
    if optics is not None and "rlnImagePixelSize" in optics.columns:
        by_group = dict(zip(optics.get("rlnOpticsGroup", ["1"] * len(optics)), optics["rlnImagePixelSize"]))
        groups = frame["rlnOpticsGroup"].tolist() if "rlnOpticsGroup" in frame.columns else list(by_group)
        sizes = [by_group.get(group) for group in groups]
    elif "rlnImagePixelSize" in frame.columns:
        sizes = frame["rlnImagePixelSize"].tolist()
    elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(frame.columns):
        sizes = [d * 1e4 / m if m else None for d, m in zip(frame["rlnDetectorPixelSize"], frame["rlnMagnification"])]
    try:
        distinct = {round(float(size), 6) for size in sizes or []}
    except (TypeError, ValueError):  # a missing group or a non-number: no single pixel size to report
        return None
    return distinct.pop() if len(distinct) == 1 and next(iter(distinct)) > 0 else None


def read_star_labels(path: Path) -> LabelTable:
    """The first loop with _rlnClassNumber (RELION 3.0 / Warp: the only one; RELION 3.1+:
    data_particles, with the pixel size from data_optics)."""
    blocks = read_star_blocks(path)
    loops = {name: block for name, block in blocks.items() if hasattr(block, "columns")}
    found = [name for name, frame in loops.items() if STAR_CLASS[1:] in frame.columns]
    if not found:
        raise DataError(f"labels file {path} has no loop with a {STAR_CLASS} column (the composition); "
                        "add one, or give a CSV with a composition column")
    block = found[0]
    frame = loops[block]
    if len(frame) == 0:
        raise DataError(f"labels file {path} (data_{block}) has no rows")
    _check_width(frame, path, block)
    text = lambda column: [str(value) for value in frame[column]]  # noqa: E731  (pandas reads 'nan' as NaN)
    composition = encode(text(STAR_CLASS[1:]), None, STAR_CLASS, path, first_row=1)  # rows counted in the loop
    file_column = next((name[1:] for name in STAR_FILE_COLUMNS if name[1:] in frame.columns), None)
    files = text(file_column) if file_column else None
    optics = loops.get("optics") if block != "optics" else None
    return LabelTable(path, composition, None, files, None, _pixel_size(frame, optics))


def read_labels(path: Path) -> LabelTable:
    """A CSV, or a STAR file when the name ends in .star."""
    path = Path(path)
    return read_star_labels(path) if path.suffix.lower() == ".star" else read_csv_labels(path)
