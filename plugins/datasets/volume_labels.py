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

STAR: the first loop that has `_rlnClassNumber` (the composition). The volume comes from
`_rlnImageName`, else `_rlnSubtomogramName` (a file or `N@stack`), else row order.
`_rlnMicrographName` is not read: in RELION's subtomogram STAR files it names the tomogram, not
the particle. STAR files carry no conformation.

Codes: the names (the text of the composition / conformation column) are the classes. With an
`_id` column the names are ordered by their ids (so codes equal the ids where those run 0..K-1);
otherwise integer labels are ordered numerically and other names alphabetically. Codes are
always 0..K-1, so names[code] is the label's name. A CSV with only `composition_id` uses the ids
as names.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

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


@dataclass
class StarLoop:
    block: str
    columns: list[str]
    rows: list[list[str]]
    first_line: int  # line number of rows[0], for messages


def parse_star_loops(path: Path) -> list[StarLoop]:
    """Every `loop_` of a STAR file: its block name, column labels and rows (as text)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"labels file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"labels file {path} is not a readable STAR file ({error})") from None
    loops: list[StarLoop] = []
    block, current = "", None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            if current is not None and current.rows and not line:
                current = None  # a blank line ends the loop's rows
            continue
        if line.startswith("data_"):
            block, current = line[5:], None
        elif line == "loop_":
            current = StarLoop(block, [], [], number + 1)
            loops.append(current)
        elif current is not None and line.startswith("_") and not current.rows:
            current.columns.append(line.split()[0])
        elif current is not None and current.columns:
            current.rows.append(_star_row(line, path, number, len(current.columns)))
            if len(current.rows) == 1:
                current.first_line = number
        # anything else: a block's key-value pairs, not needed here
    return loops


def _star_row(line: str, path: Path, number: int, width: int) -> list[str]:
    try:
        fields = shlex.split(line, comments=True)
    except ValueError as error:
        raise DataError(f"{path} line {number} is not a valid STAR row ({error})") from None
    if len(fields) != width:
        raise DataError(f"{path} line {number} has {len(fields)} values for {width} loop columns")
    return fields


def read_star_labels(path: Path) -> LabelTable:
    loops = [loop for loop in parse_star_loops(path) if STAR_CLASS in loop.columns]
    if not loops:
        raise DataError(f"labels file {path} has no loop with a {STAR_CLASS} column (the composition); "
                        "add one, or give a CSV with a composition column")
    loop = loops[0]
    if not loop.rows:
        raise DataError(f"labels file {path} (data_{loop.block}) has no rows")
    column = lambda name: [row[loop.columns.index(name)] for row in loop.rows]  # noqa: E731
    composition = encode(column(STAR_CLASS), None, STAR_CLASS, path, loop.first_line)
    file_column = next((name for name in STAR_FILE_COLUMNS if name in loop.columns), None)
    files = column(file_column) if file_column else None
    return LabelTable(path, composition, None, files, None)


def read_labels(path: Path) -> LabelTable:
    """A CSV, or a STAR file when the name ends in .star."""
    path = Path(path)
    return read_star_labels(path) if path.suffix.lower() == ".star" else read_csv_labels(path)
