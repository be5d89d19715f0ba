"""STAR labels of the `mrc` dataset, read with `starfile`, in the layouts the field writes.

The fixtures under tests/fixtures/star/ follow each format's documentation (their headers say
which): RELION 3.0 (one nameless data_ block, pixel size from _rlnDetectorPixelSize and
_rlnMagnification) as a Class3D run on Warp subtomograms writes it, RELION 3.1 (data_optics +
data_particles; pixel size from the optics group's _rlnImagePixelSize), RELION 5's subtomogram
layout (a key-value data_general block first), and Warp's own subtomogram export (no classes).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from dcbench.errors import DataError
from dcbench_plugins.datasets.mrc_folder import MRCSubtomograms, parse_entry
from dcbench_plugins.datasets.volume_labels import read_labels

FIXTURES = Path(__file__).parent / "fixtures" / "star"
BOX = 32
# fixture -> (class of each row, 1-based; Å per voxel)
FORMATS = {
    "relion30_class3d_warp.star": ([2, 1, 3, 1, 3, 2], 10.0),
    "relion31_class3d.star": ([2, 1, 3, 1, 3, 2], 10.0),
    "relion5_class3d_tomo.star": ([1, 1, 2, 2, 3, 3], 20.0),
}


def with_volumes(tmp_path: Path, fixture: str) -> tuple[Path, list[str], np.ndarray]:
    """The fixture copied into tmp_path with a distinct 32^3 volume at every place it names (a
    file, or N@stack); returns the STAR, its names and the volumes in row order."""
    star = tmp_path / fixture
    shutil.copy(FIXTURES / fixture, star)
    names = read_labels(star).files
    assert names is not None
    rng = np.random.default_rng(0)
    volumes = rng.normal(size=(len(names), BOX, BOX, BOX)).astype(np.float32)
    stacks: dict[str, dict[int, np.ndarray]] = {}
    for name, volume in zip(names, volumes):
        file, index = parse_entry(name)
        stacks.setdefault(file, {})[0 if index is None else index] = volume
    for file, members in stacks.items():
        path = tmp_path / file
        path.parent.mkdir(parents=True, exist_ok=True)
        data = members[0] if file.endswith(".mrc") else np.stack([members[i] for i in sorted(members)])
        with mrcfile.new(path, overwrite=True) as handle:
            handle.set_data(data)
    return star, names, volumes


@pytest.mark.parametrize("fixture", sorted(FORMATS))
def test_each_layout_gives_classes_files_and_pixel_size(fixture: str) -> None:
    classes, pixel = FORMATS[fixture]
    table = read_labels(FIXTURES / fixture)
    assert table.composition.names == ["1", "2", "3"]
    np.testing.assert_array_equal(table.composition.codes, np.asarray(classes) - 1)
    assert table.pixel_size == pytest.approx(pixel) and table.conformation is None and len(table) == 6
    assert table.files is not None and all(name.endswith((".mrc", ".mrcs")) for name in table.files)


@pytest.mark.parametrize("fixture", sorted(FORMATS))
def test_the_mrc_dataset_loads_the_volumes_each_layout_names(tmp_path: Path, fixture: str) -> None:
    star, _, volumes = with_volumes(tmp_path, fixture)
    classes = np.asarray(FORMATS[fixture][0]) - 1
    bundle = MRCSubtomograms(path=str(tmp_path), labels=str(star), zscore=False, test_fraction=0.5).load(seed=0)
    assert bundle.class_names == ["1", "2", "3"] and len(bundle.train) + len(bundle.test) == 6
    for split in (bundle.train, bundle.test):
        for volume, code in zip(split.x[:, 0], split.content):
            row = int(np.argmin(np.abs(volumes - volume).reshape(6, -1).max(axis=1)))
            assert np.array_equal(volume, volumes[row]) and code == classes[row]


def test_warp_export_without_classes_is_refused_with_what_to_add() -> None:
    with pytest.raises(DataError, match="warp_subtomo.star has no loop with a _rlnClassNumber column"):
        read_labels(FIXTURES / "warp_subtomo.star")


def test_optics_groups_with_different_pixel_sizes_give_none(tmp_path: Path) -> None:
    text = (FIXTURES / "relion31_class3d.star").read_text()
    mixed = text.replace("0.100000    10.000000           32            3\nopticsGroup2",
                         "0.100000    12.000000           32            3\nopticsGroup2")
    assert mixed != text
    (tmp_path / "mixed.star").write_text(mixed)
    assert read_labels(tmp_path / "mixed.star").pixel_size is None


LOOP = "data_particles\nloop_\n_rlnImageName #1\n_rlnClassNumber #2\n_rlnAngleRot #3\n"


@pytest.mark.parametrize(("body", "message"), [
    ("a.mrc 1 0.0\nb.mrc 2\n", r"data_particles row 2 has fewer values than the loop's 3 columns"),
    ("a.mrc 1 0.0\nb.mrc 2 0.0 9\n", r"not a readable STAR file \(a loop's rows have different numbers of values"),
    ("a.mrc 1\nb.mrc 2\n", r"not a readable STAR file \(a loop's rows have 2 values for 3 columns"),
    ("", r"\(data_particles\) has no rows"),
])
def test_malformed_loops_are_one_line_errors(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "p.star").write_text(LOOP + body)
    with pytest.raises(DataError, match=message) as caught:
        read_labels(tmp_path / "p.star")
    assert "\n" not in str(caught.value)


def test_unreadable_and_missing_star_files(tmp_path: Path) -> None:
    (tmp_path / "binary.star").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="binary.star is not a readable STAR file"):
        read_labels(tmp_path / "binary.star")
    with pytest.raises(DataError, match="missing.star does not exist"):
        read_labels(tmp_path / "missing.star")
