"""The volume datasets: `subtomo` (the paper's pickle, restricted unpickling) and `mrc` (MRC files
with CSV / STAR labels, or a `dcbench simulate` folder), on tiny 32^3 data written here."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from click.testing import CliRunner

import dcbench
import dcbench.registry
from dcbench.cli import cli
from dcbench.errors import DataError
from dcbench_plugins.datasets.mrc_folder import MRCSubtomograms
from dcbench_plugins.datasets.subtomo import PICKLE_NAME, SubtomoPickle

BOX = 32
COMPOSITIONS = ["ribosome", "proteasome", "chaperonin"]
CONFORMATIONS = ["open", "closed"]


def make_volumes(n: int, seed: int = 0) -> np.ndarray:
    """Noise with a different offset and scale per volume, so z-scoring has something to undo."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, BOX, BOX, BOX)).astype(np.float32)
    return x * rng.uniform(0.5, 5, size=(n, 1, 1, 1)).astype(np.float32) + rng.uniform(-3, 3, (n, 1, 1, 1)
                                                                                         ).astype(np.float32)


def zscored(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1).astype(np.float64)
    return ((flat - flat.mean(1, keepdims=True)) / flat.std(1, keepdims=True)).reshape(x.shape)


def label_lists(n: int) -> tuple[list[str], list[str]]:
    """Composition x conformation, each of the 6 pairs n/6 times, interleaved."""
    pairs = [(c, f) for c in COMPOSITIONS for f in CONFORMATIONS]
    chosen = [pairs[i % len(pairs)] for i in range(n)]
    return [c for c, _ in chosen], [f for _, f in chosen]


def write_labels_csv(path: Path, n: int, files: list[str] | None = None) -> tuple[list[str], list[str]]:
    compositions, conformations = label_lists(n)
    header = ("file," if files else "") + "composition,conformation"
    rows = [(f"{files[i]}," if files else "") + f"{compositions[i]},{conformations[i]}" for i in range(n)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return compositions, conformations


def write_mrc(path: Path, data: np.ndarray, voxel: float = 10.0) -> Path:
    with mrcfile.new(path, overwrite=True) as handle:
        handle.set_data(np.ascontiguousarray(data, dtype=np.float32))
        handle.voxel_size = voxel
    return path


def assert_matches(bundle, originals: np.ndarray, compositions: list[str], conformations: list[str] | None) -> None:
    """Every loaded volume is the z-score of one original volume and carries that volume's labels."""
    expected = zscored(originals).reshape(len(originals), -1)
    seen = []
    for split in (bundle.train, bundle.test):
        assert split.x.dtype == np.float32 and split.x.shape[1:] == (1, BOX, BOX, BOX)
        for row, volume in enumerate(split.x.reshape(len(split.x), -1)):
            j = int(np.argmin(np.abs(expected - volume).max(axis=1)))
            assert np.allclose(volume, expected[j], atol=1e-4)
            assert bundle.class_names[split.content[row]] == compositions[j]
            if conformations is not None:
                assert bundle.conformation_names[split.conformation[row]] == conformations[j]
            seen.append(j)
    assert sorted(seen) == list(range(len(originals)))


# ------------------------------------------------------------------------------------- subtomo


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, Path, np.ndarray, list[str], list[str]]:
    """A stand-in for the published pickle (24 volumes) and a labels CSV for it."""
    x = make_volumes(24)
    path = tmp_path / PICKLE_NAME
    path.write_bytes(pickle.dumps(x, protocol=4))
    compositions, conformations = write_labels_csv(tmp_path / "labels.csv", 24)
    return path, tmp_path / "labels.csv", x, compositions, conformations


def test_pickle_is_zscored_per_volume_and_split_stratified_and_fixed(published) -> None:
    path, labels, x, compositions, conformations = published
    bundle = SubtomoPickle(path=str(path), labels=str(labels), test_fraction=0.25).load(seed=0)
    assert len(bundle.train) == 18 and len(bundle.test) == 6
    assert_matches(bundle, x, compositions, conformations)
    flat = bundle.train.x.reshape(len(bundle.train), -1).astype(np.float64)
    assert np.allclose(flat.mean(1), 0, atol=1e-5) and np.allclose(flat.std(1), 1, atol=1e-4)
    # stratified by composition x conformation: each of the 6 pairs once in the test set
    pairs = set(zip(bundle.test.content.tolist(), bundle.test.conformation.tolist()))
    assert len(pairs) == 6
    assert bundle.class_names == sorted(COMPOSITIONS) and bundle.conformation_names == sorted(CONFORMATIONS)
    again = SubtomoPickle(path=str(path), labels=str(labels), test_fraction=0.25).load(seed=5)
    assert np.array_equal(again.test.x, bundle.test.x)  # the split does not follow the seed


@pytest.mark.parametrize("wrap", ["flat", "list", "dict", "five_d", "fortran"])
def test_pickle_layouts_accepted(tmp_path: Path, published, wrap: str) -> None:
    _, labels, x, compositions, conformations = published
    obj = {"flat": x.reshape(24, -1), "list": [x[:10], *x[10:]], "five_d": x[:, None],
           "dict": {"subtomograms": x, "notes": np.arange(3)}, "fortran": np.asfortranarray(x)}[wrap]
    path = tmp_path / "variant.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    bundle = SubtomoPickle(path=str(path), labels=str(labels)).load(seed=0)
    assert_matches(bundle, x, compositions, conformations)
    if wrap == "dict":
        assert bundle.provenance["ignored_keys"] == ["notes"]


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path: Path, published) -> None:
    _, labels, *_ = published
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([np.zeros(3), _RunsCode(marker)]))
    with pytest.raises(DataError, match="refused to load .*evil.pkl"):
        SubtomoPickle(path=str(path), labels=str(labels)).load(seed=0)
    assert not marker.exists()


@pytest.mark.parametrize("obj", [np.zeros((24, 30, 30, 30), np.float32), np.zeros((24, 32, 32), np.float32),
                                 "not volumes", {"a": np.zeros((2, BOX**3)), "b": np.zeros((2, BOX**3))}])
def test_pickle_of_wrong_shape_names_the_file(tmp_path: Path, published, obj) -> None:
    _, labels, *_ = published
    path = tmp_path / "wrong.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(DataError, match="wrong.pkl"):
        SubtomoPickle(path=str(path), labels=str(labels)).load(seed=0)


def test_pickle_without_labels_is_refused_not_guessed(published) -> None:
    path, *_ = published
    with pytest.raises(DataError, match="carries no labels.*data.labels"):
        SubtomoPickle(path=str(path)).load(seed=0)


def test_labels_of_another_length_are_refused(tmp_path: Path, published) -> None:
    path, *_ = published
    write_labels_csv(tmp_path / "short.csv", 18)
    with pytest.raises(DataError, match="18 label rows but .* holds 24 volumes"):
        SubtomoPickle(path=str(path), labels=str(tmp_path / "short.csv")).load(seed=0)


def test_nan_and_constant_volumes_name_the_file_and_volume(tmp_path: Path, published) -> None:
    _, labels, x, *_ = published
    bad = x.copy()
    bad[7, 3, 4, 5] = np.nan
    (tmp_path / "nan.pkl").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match=r"nan.pkl volume 7 \(0-based\) contains NaN"):
        SubtomoPickle(path=str(tmp_path / "nan.pkl"), labels=str(labels)).load(seed=0)
    flat = x.copy()
    flat[9] = 2.0
    (tmp_path / "flat.pkl").write_bytes(pickle.dumps(flat))
    with pytest.raises(DataError, match=r"flat.pkl volume 9 \(0-based\) is constant"):
        SubtomoPickle(path=str(tmp_path / "flat.pkl"), labels=str(labels)).load(seed=0)


def test_index_column_picks_volumes(tmp_path: Path, published) -> None:
    path, _, x, *_ = published
    picks = [3, 0, 7, 12, 20, 21, 5, 9]
    (tmp_path / "some.csv").write_text("index,composition\n" + "\n".join(f"{i},{'ab'[k % 2]}" for k, i in
                                                                          enumerate(picks)) + "\n")
    bundle = SubtomoPickle(path=str(path), labels=str(tmp_path / "some.csv")).load(seed=0)
    assert_matches(bundle, x[picks], ["ab"[k % 2] for k in range(len(picks))], None)


def test_unsplittable_labels_and_bad_fraction(tmp_path: Path, published) -> None:
    path, *_ = published
    (tmp_path / "unique.csv").write_text("composition\n" + "\n".join(f"c{i}" for i in range(24)) + "\n")
    with pytest.raises(DataError, match="cannot split 24 volumes"):
        SubtomoPickle(path=str(path), labels=str(tmp_path / "unique.csv")).load(seed=0)
    with pytest.raises(DataError, match="test_fraction must be between 0 and 1"):
        SubtomoPickle(path=str(path), labels=str(published[1]), test_fraction=1.5).load(seed=0)


def test_missing_pickle_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"{PICKLE_NAME} not found.*11244440.*data.path"):
        SubtomoPickle(data_root=tmp_path, labels="x.csv").load(seed=0)


# ----------------------------------------------------------------------------------------- mrc


def test_folder_of_mrc_files_with_csv_labels(tmp_path: Path) -> None:
    x = make_volumes(24, seed=1)
    folder = tmp_path / "vols"
    folder.mkdir()
    names = [write_mrc(folder / f"p{i:03d}.mrc", x[i]).name for i in range(24)]
    compositions, conformations = write_labels_csv(tmp_path / "labels.csv", 24, files=names)
    bundle = MRCSubtomograms(path=str(folder), labels=str(tmp_path / "labels.csv")).load(seed=0)
    assert_matches(bundle, x, compositions, conformations)
    assert bundle.references is None and bundle.ctf is None


def test_stack_with_star_labels(tmp_path: Path) -> None:
    x = make_volumes(24, seed=2)
    write_mrc(tmp_path / "stack.mrcs", x)
    classes = [str(1 + i % 3) for i in range(24)]
    # rows in reverse order, each naming its volume RELION-style (1-based N@stack)
    rows = [f"{i + 1:06d}@stack.mrcs  {classes[i]}  tomo1.mrc" for i in reversed(range(24))]
    star = tmp_path / "particles.star"
    star.write_text("\n# RELION\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n1\n\ndata_particles\n\nloop_\n"
                    "_rlnImageName #1\n_rlnClassNumber #2\n_rlnMicrographName #3\n" + "\n".join(rows) + "\n")
    bundle = MRCSubtomograms(path=str(tmp_path / "stack.mrcs"), labels=str(star)).load(seed=0)
    assert bundle.class_names == ["1", "2", "3"] and bundle.conformation_names is None
    assert_matches(bundle, x, classes, None)


def test_stack_in_order_without_zscoring(tmp_path: Path) -> None:
    x = make_volumes(24, seed=3)
    write_mrc(tmp_path / "stack.mrcs", x)
    compositions, _ = label_lists(24)
    (tmp_path / "labels.csv").write_text("composition\n" + "\n".join(compositions) + "\n")
    bundle = MRCSubtomograms(path=str(tmp_path / "stack.mrcs"), labels=str(tmp_path / "labels.csv"),
                             zscore=False).load(seed=0)
    for split in (bundle.train, bundle.test):
        for volume, code in zip(split.x[:, 0], split.content):
            j = int(np.argmin(np.abs(x - volume).reshape(24, -1).max(axis=1)))
            assert np.array_equal(volume, x[j]) and bundle.class_names[code] == compositions[j]


def write_simulated(folder: Path, x: np.ndarray, per_file: bool = False) -> tuple[list[str], list[str]]:
    """A folder laid out as `dcbench simulate` writes it: particles.mrcs (or particles/NNNNNN.mrc),
    labels.csv, references.csv + references/, simulation.json."""
    folder.mkdir()
    if per_file:
        (folder / "particles").mkdir()
        for i, volume in enumerate(x):
            write_mrc(folder / "particles" / f"{i:06d}.mrc", volume, voxel=12.0)
    else:
        write_mrc(folder / "particles.mrcs", x, voxel=12.0)
    compositions, conformations = label_lists(len(x))
    structures = [f"{c}_{f}" for c, f in zip(compositions, conformations)]
    lines = ["index,file,structure,composition,composition_id,conformation,conformation_id,"
             "qw,qx,qy,qz,shift_x,shift_y,shift_z"]
    for i in range(len(x)):
        file = f"{i:06d}.mrc" if per_file else f"{i + 1:06d}@particles.mrcs"
        lines.append(f"{i},{file},{structures[i]},{compositions[i]},"
                     f"{COMPOSITIONS.index(compositions[i])},{conformations[i]},"
                     f"{CONFORMATIONS.index(conformations[i])},1,0,0,0,0.5,-1,0")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    (folder / "references").mkdir()
    refs = ["file,structure,composition,composition_id,conformation,conformation_id"]
    for c, composition in enumerate(COMPOSITIONS):
        for f, conformation in enumerate(CONFORMATIONS):
            name = f"{composition}_{conformation}"
            write_mrc(folder / "references" / f"{name}.mrc", np.full((BOX,) * 3, 10 * c + f, np.float32), 12.0)
            refs.append(f"references/{name}.mrc,{name},{composition},{c},{conformation},{f}")
    (folder / "references.csv").write_text("\n".join(refs) + "\n")
    settings = {"box": BOX, "voxel": 12.0, "ctf": True, "defocus_um": -5.0, "voltage_kv": 300.0, "cs_mm": 1.7,
                "amplitude_contrast": 0.1, "snr": 0.1, "wedge_tilt_degrees": None}
    (folder / "simulation.json").write_text(json.dumps({"settings": settings, "seed": 0}))
    return compositions, conformations


@pytest.mark.parametrize("per_file", [False, True])
def test_simulated_folder_gives_labels_references_and_ctf(tmp_path: Path, per_file: bool) -> None:
    x = make_volumes(24, seed=4)
    compositions, conformations = write_simulated(tmp_path / "sim", x, per_file)
    bundle = MRCSubtomograms(path=str(tmp_path / "sim")).load(seed=0)
    # codes follow composition_id / conformation_id, names from their name columns
    assert bundle.class_names == COMPOSITIONS and bundle.conformation_names == CONFORMATIONS
    assert_matches(bundle, x, compositions, conformations)
    refs = bundle.references
    assert refs is not None and refs.maps.shape == (6, BOX, BOX, BOX) and refs.voxel == 12.0
    for m in range(6):  # each map carries the labels written for it (map value 10 c + f)
        assert refs.maps[m, 0, 0, 0] == 10 * refs.content[m] + refs.conformation[m]
    assert refs.names[0] == "ribosome_open"
    assert bundle.ctf == {"defocus_um": -5.0, "voltage_kv": 300.0, "cs_mm": 1.7, "amplitude_contrast": 0.1}


def test_simulated_folder_without_ctf_has_none(tmp_path: Path) -> None:
    write_simulated(tmp_path / "sim", make_volumes(24, seed=5))
    meta = json.loads((tmp_path / "sim" / "simulation.json").read_text())
    meta["settings"]["ctf"] = False
    (tmp_path / "sim" / "simulation.json").write_text(json.dumps(meta))
    assert MRCSubtomograms(path=str(tmp_path / "sim")).load(seed=0).ctf is None


def test_truncated_mrc_is_named(tmp_path: Path) -> None:
    x = make_volumes(12, seed=6)
    for i in range(12):
        write_mrc(tmp_path / f"v{i:02d}.mrc", x[i])
    data = (tmp_path / "v05.mrc").read_bytes()
    (tmp_path / "v05.mrc").write_bytes(data[: len(data) - 5000])
    (tmp_path / "labels.csv").write_text("composition\n" + "\n".join("ab"[i % 2] for i in range(12)) + "\n")
    with pytest.raises(DataError, match=r"v05.mrc is not a readable MRC file"):
        MRCSubtomograms(path=str(tmp_path), labels=str(tmp_path / "labels.csv")).load(seed=0)


def test_garbage_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "junk.mrc").write_bytes(b"\x00not an mrc" * 200)
    (tmp_path / "labels.csv").write_text("file,composition\njunk.mrc,a\n")
    with pytest.raises(DataError, match=r"junk.mrc is not a readable MRC file"):
        MRCSubtomograms(path=str(tmp_path), labels=str(tmp_path / "labels.csv")).load(seed=0)


def test_wrong_box_is_named_with_a_resampling_hint(tmp_path: Path) -> None:
    write_mrc(tmp_path / "a.mrc", np.ones((BOX,) * 3))
    write_mrc(tmp_path / "big.mrc", np.ones((40, 40, 40)))
    (tmp_path / "labels.csv").write_text("composition\na\nb\n")
    with pytest.raises(DataError, match=r"big.mrc holds 40x40x40 volumes .* --new_box 32"):
        MRCSubtomograms(path=str(tmp_path), labels=str(tmp_path / "labels.csv")).load(seed=0)


def test_empty_folder_and_missing_labels(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no .mrc"):
        MRCSubtomograms(path=str(tmp_path / "empty")).load(seed=0)
    write_mrc(tmp_path / "a.mrc", np.ones((BOX,) * 3))
    with pytest.raises(DataError, match="has no labels.*data.labels"):
        MRCSubtomograms(path=str(tmp_path)).load(seed=0)
    with pytest.raises(DataError, match="needs its volumes.*data.path"):
        MRCSubtomograms().load(seed=0)


def test_labels_naming_a_missing_file(tmp_path: Path) -> None:
    write_mrc(tmp_path / "a.mrc", np.ones((BOX,) * 3))
    (tmp_path / "labels.csv").write_text("file,composition\na.mrc,x\nb.mrc,y\n")
    with pytest.raises(DataError, match=r"labels.csv row 3 names b.mrc, which does not exist"):
        MRCSubtomograms(path=str(tmp_path), labels=str(tmp_path / "labels.csv")).load(seed=0)


def test_star_without_class_column(tmp_path: Path) -> None:
    write_mrc(tmp_path / "a.mrc", np.ones((BOX,) * 3))
    (tmp_path / "p.star").write_text("data_particles\nloop_\n_rlnImageName #1\na.mrc\n")
    with pytest.raises(DataError, match="p.star has no loop with a _rlnClassNumber column"):
        MRCSubtomograms(path=str(tmp_path), labels=str(tmp_path / "p.star")).load(seed=0)


def test_labels_without_composition_column(tmp_path: Path) -> None:
    write_mrc(tmp_path / "a.mrc", np.ones((BOX,) * 3))
    (tmp_path / "labels.csv").write_text("file,kind\na.mrc,x\n")
    with pytest.raises(DataError, match="no 'composition' column"):
        MRCSubtomograms(path=str(tmp_path), labels=str(tmp_path / "labels.csv")).load(seed=0)


# --------------------------------------------------------------------------------- end to end


class _VolumeDatasets:
    """Registers the two datasets in-process until registry.toml lists them."""

    @dcbench.hookimpl
    def register_datasets(self, register) -> None:
        register("mrc", "dcbench_plugins.datasets.mrc_folder:MRCSubtomograms")
        register("subtomo", "dcbench_plugins.datasets.subtomo:SubtomoPickle")


def test_cli_runs_vae2_on_an_mrc_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if "mrc" not in dcbench.registry.get_registry().names("dataset"):
        monkeypatch.setattr(dcbench.registry, "_default",
                            dcbench.registry.build_registry(extra_plugins=[_VolumeDatasets()]))
    write_simulated(tmp_path / "sim", make_volumes(24, seed=7))
    result = CliRunner().invoke(cli, ["run", "--method", "vae2", "--dataset", "mrc", "--set",
                                      f"data.path={tmp_path / 'sim'}", "--epochs", "1", "--metric", "ari",
                                      "--device", "cpu", "--runs-dir", str(tmp_path / "runs"), "--no-leaderboard"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    (run_dir,) = (tmp_path / "runs" / "mrc" / "vae2").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"ARI(composition)", "ARI(conformation)"}
