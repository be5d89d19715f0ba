"""Subtomograms of any cubic box (issue 16, part 1): the file datasets bring them to the 32^3 the 3D
methods take by Fourier cropping / padding about the box centre, record the new voxel size
(voxel * box / 32) in the provenance and the reference maps, say so once on stderr, and refuse
in one line what cannot be rescaled (data.resample=off, non-cubic or tiny boxes, mixed boxes)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from click.testing import CliRunner

from dcbench.cli import cli
from dcbench.errors import DataError, DcbenchError
from dcbench_plugins.datasets.mrc_folder import MRCSubtomograms
from dcbench_plugins.datasets.rescale import fourier_rescale
from dcbench_plugins.datasets.subtomo import SubtomoPickle

BOX = 32
VOXEL = 10.0  # Å, of the files written here
SIGMA = 25.0  # Å: at 16.25 Å voxels 1.5 voxels, so the blob is band-limited at every box here
N = 10  # volumes: 5 per composition, enough for the stratified split


def blob(box: int, voxel: float, centre: tuple[float, float, float], sigma: float = SIGMA) -> np.ndarray:
    """A Gaussian blob [z, y, x], its centre `centre` Å (x, y, z) from the box centre (voxel box // 2)."""
    axis = (np.arange(box) - box // 2) * voxel
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    cx, cy, cz = centre
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2)).astype(np.float32)


def centre_of_mass(volume: np.ndarray, voxel: float) -> np.ndarray:
    """(x, y, z) in Å from the box centre."""
    axis = (np.arange(volume.shape[0]) - volume.shape[0] // 2) * voxel
    weights = volume / volume.sum()
    return np.array([(weights.sum(axis=(0, 1)) * axis).sum(), (weights.sum(axis=(0, 2)) * axis).sum(),
                     (weights.sum(axis=(1, 2)) * axis).sum()])


def centres(n: int = N) -> list[tuple[float, float, float]]:
    """Off-centre positions (Å), one per volume, the blob falling to nothing well inside a 450 Å box."""
    rng = np.random.default_rng(0)
    return [tuple(rng.uniform(-45, 45, 3)) for _ in range(n)]


def write_mrc(path: Path, data: np.ndarray, voxel: float = VOXEL) -> Path:
    with mrcfile.new(path, overwrite=True) as handle:
        handle.set_data(np.ascontiguousarray(data, dtype=np.float32))
        handle.voxel_size = voxel
    return path


def write_dataset(folder: Path, box: int, voxel: float = VOXEL, references: bool = True, n: int = N) -> Path:
    """A stack of n blobs at `box`, labels.csv (two compositions) and, optionally, references/ with
    one map per composition (the blob at the origin and at the second centre)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_mrc(folder / "particles.mrcs", np.stack([blob(box, voxel, c) for c in centres(n)]), voxel)
    (folder / "labels.csv").write_text("file,composition\n" + "".join(
        f"{i + 1}@particles.mrcs,{'ab'[i % 2]}\n" for i in range(n)))
    if references:
        (folder / "references").mkdir()
        for name, centre in (("a", (0.0, 0.0, 0.0)), ("b", centres()[1])):
            write_mrc(folder / "references" / f"{name}.mrc", blob(box, voxel, centre), voxel)
        (folder / "references.csv").write_text("file,composition\nreferences/a.mrc,a\nreferences/b.mrc,b\n")
    return folder


def loaded_volumes(bundle) -> np.ndarray:
    """Every loaded volume, (N, 32, 32, 32): train then test."""
    return np.concatenate([bundle.train.x, bundle.test.x])[:, 0]


@pytest.mark.parametrize("box", [48, 52, 45, 33, 24, 25])
def test_fourier_rescale_keeps_a_band_limited_blob_and_its_centre(box: int) -> None:
    """Down (48, 52, even; 45, 33, odd) and up (24 even, 25 odd): the blob made at 32^3 at the new
    voxel size comes back, centre of mass to a hundredth of a voxel, mean kept. One 480 Å box, so
    that the blob (sigma 36 Å: 1.8 voxels of the coarsest grid) is band-limited on every grid."""
    voxel, new_voxel, sigma = 480 / box, 480 / BOX, 36.0
    centre = (30.0, -20.0, 25.0)
    original = blob(box, voxel, centre, sigma)
    out = fourier_rescale(original, BOX)
    expected = blob(BOX, new_voxel, centre, sigma)
    assert out.shape == (BOX,) * 3 and out.dtype == np.float32
    assert np.corrcoef(out.ravel(), expected.ravel())[0, 1] > 0.9999
    assert np.abs(out - expected).max() < 1e-4
    assert np.allclose(centre_of_mass(out, new_voxel), centre, atol=0.01 * new_voxel)
    assert out.mean() == pytest.approx(original.mean(), rel=1e-5)


@pytest.mark.parametrize("box", [48, 52, 45])
def test_mrc_stack_of_another_box_loads_as_32_cubed(tmp_path: Path, box: int, capsys) -> None:
    folder = write_dataset(tmp_path / "data", box)
    bundle = MRCSubtomograms(path=str(folder), zscore=False).load(seed=0)
    new_voxel = VOXEL * box / BOX
    assert bundle.train.x.shape[1:] == (1, BOX, BOX, BOX) and bundle.test.x.shape[1:] == (1, BOX, BOX, BOX)

    # every loaded volume is the same blob made at 32^3 at the new voxel size, centred where it was
    expected = [blob(BOX, new_voxel, c) for c in centres()]
    for volume in loaded_volumes(bundle):
        scores = [np.corrcoef(volume.ravel(), e.ravel())[0, 1] for e in expected]
        j = int(np.argmax(scores))
        assert scores[j] > 0.99
        assert np.allclose(centre_of_mass(volume, new_voxel), centres()[j], atol=0.05 * new_voxel)

    # the reference maps: rescaled the same way, at the new voxel size
    references = bundle.references
    assert references is not None and references.maps.shape == (2, BOX, BOX, BOX)
    assert references.voxel == pytest.approx(new_voxel)
    assert np.corrcoef(references.maps[0].ravel(), blob(BOX, new_voxel, (0, 0, 0)).ravel())[0, 1] > 0.99

    # said once, on stderr, from what to what
    err = capsys.readouterr().err.splitlines()
    method = "Fourier cropping" if box > BOX else "Fourier padding"
    assert err == [f"mrc: {box}^3 volumes at 10 Å rescaled to 32^3 at {new_voxel:g} Å by {method}"]

    # and recorded
    assert bundle.provenance["box"] == {"original_box": box, "original_voxel_A": VOXEL, "box": BOX,
                                        "voxel_A": pytest.approx(new_voxel), "method": method, "resample": "auto"}
    assert bundle.provenance["preprocessing"] == f"{method} from {box}^3 to 32^3"


def test_the_notice_reads_as_the_issue_asks(tmp_path: Path, capsys) -> None:
    folder = write_dataset(tmp_path / "data", 52, references=False)
    bundle = MRCSubtomograms(path=str(folder)).load(seed=0)  # z-scored, as by default
    assert capsys.readouterr().err == "mrc: 52^3 volumes at 10 Å rescaled to 32^3 at 16.25 Å by Fourier cropping\n"
    assert bundle.provenance["preprocessing"] == "Fourier cropping from 52^3 to 32^3, then per-volume z-score " \
                                                 "(mean 0, std 1)"
    assert np.allclose(bundle.train.x.reshape(len(bundle.train), -1).std(1), 1, atol=1e-4)


def test_32_cubed_is_untouched_and_says_nothing(tmp_path: Path, capsys) -> None:
    folder = write_dataset(tmp_path / "data", BOX)
    bundle = MRCSubtomograms(path=str(folder), zscore=False).load(seed=0)
    stored = np.stack([blob(BOX, VOXEL, c) for c in centres()])
    for volume in loaded_volumes(bundle):
        assert np.abs(stored - volume).reshape(N, -1).max(1).min() == 0  # bit for bit one of the stored
    assert capsys.readouterr().err == ""
    assert bundle.provenance["box"]["method"] == "none" and bundle.provenance["box"]["voxel_A"] == VOXEL
    assert bundle.references.voxel == VOXEL


def test_resample_off_refuses_in_one_line(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "data", 52, references=False)
    with pytest.raises(DataError) as caught:
        MRCSubtomograms(path=str(folder), resample="off").load(seed=0)
    message = str(caught.value)
    assert "\n" not in message
    assert "particles.mrcs holds 52x52x52 volumes but the 3D methods take 32^3" in message
    assert "--new_box 32" in message and "data.resample=off" in message


def test_resample_option_is_checked_while_planning() -> None:
    for dataset in (MRCSubtomograms, SubtomoPickle):
        options = {**dataset.option_defaults, "resample": "bicubic"}
        with pytest.raises(DcbenchError, match="data.resample must be one of auto, fourier, off, got 'bicubic'"):
            dataset.check_options(options)
        dataset.check_options({**dataset.option_defaults, "resample": "fourier"})


def test_non_cubic_tiny_and_mixed_boxes_are_one_line(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("composition\n" + "".join(f"{'ab'[i % 2]}\n" for i in range(4)))
    cases = {
        "flat": ([(40, 40, 36)] * 4, r"flat/v0.mrc holds 40x40x36 volumes but the 3D methods take 32\^3 cubes and "
                                     r"these are not cubic; re-extract the particles in a cubic box"),
        "tiny": ([(4, 4, 4)] * 4, r"tiny/v0.mrc holds 4x4x4 volumes .* too small to rescale; re-extract"),
        "mixed": ([(32,) * 3, (32,) * 3, (48,) * 3, (32,) * 3],
                  r"mixed/v2.mrc holds 48x48x48 volumes but the 3D methods take 32\^3 and .*mixed/v0.mrc holds 32\^3 "
                  r"ones; dcbench rescales one box, not a mix: resample it to 32\^3 first .*--new_box 32"),
    }
    for name, (shapes, pattern) in cases.items():
        (tmp_path / name).mkdir()
        for i, shape in enumerate(shapes):
            write_mrc(tmp_path / name / f"v{i}.mrc", np.random.default_rng(i).normal(size=shape))
        with pytest.raises(DataError, match=pattern) as caught:
            MRCSubtomograms(path=str(tmp_path / name), labels=str(labels)).load(seed=0)
        assert "\n" not in str(caught.value)


def test_files_of_one_box_at_different_voxel_sizes_are_refused(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("composition\n" + "".join(f"{'ab'[i % 2]}\n" for i in range(4)))
    for i in range(4):
        write_mrc(tmp_path / f"v{i}.mrc", blob(48, VOXEL, centres()[i]), voxel=12.0 if i == 3 else VOXEL)
    with pytest.raises(DataError, match=r"v3.mrc has 12 Å voxels but .*v0.mrc has 10 Å ones; give volumes of one "
                                        r"voxel size"):
        MRCSubtomograms(path=str(tmp_path), labels=str(tmp_path / "labels.csv")).load(seed=0)


def test_references_on_another_scale_are_refused(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "data", 48)
    write_mrc(folder / "references" / "b.mrc", blob(48, 8.0, (0, 0, 0)), voxel=8.0)
    write_mrc(folder / "references" / "a.mrc", blob(48, 8.0, (0, 0, 0)), voxel=8.0)
    with pytest.raises(DataError, match=r"a.mrc is a 48\^3 map at 8 Å \(384 Å across\) but the particles are 48\^3 "
                                        r"at 10 Å \(480 Å across\); give reference maps on the particles' scale"):
        MRCSubtomograms(path=str(folder)).load(seed=0)


def test_subtomo_pickle_of_another_box_is_rescaled(tmp_path: Path, capsys) -> None:
    x = np.stack([blob(48, VOXEL, c) for c in centres()])
    path = tmp_path / "mine.pkl"
    path.write_bytes(pickle.dumps(x[:, None], protocol=4))  # (N, 1, 48, 48, 48)
    (tmp_path / "labels.csv").write_text("composition\n" + "".join(f"{'ab'[i % 2]}\n" for i in range(N)))
    bundle = SubtomoPickle(path=str(path), labels=str(tmp_path / "labels.csv")).load(seed=0)
    assert bundle.train.x.shape[1:] == (1, BOX, BOX, BOX)
    notice = "subtomo: 48^3 volumes (voxel size unknown) rescaled to 32^3 by Fourier cropping\n"
    assert capsys.readouterr().err == notice
    assert bundle.provenance["box"] == {"original_box": 48, "original_voxel_A": None, "box": BOX, "voxel_A": None,
                                        "method": "Fourier cropping", "resample": "auto"}
    expected = [blob(BOX, VOXEL * 48 / BOX, c).ravel() for c in centres()]
    for volume in loaded_volumes(bundle):
        assert max(np.corrcoef(volume.ravel(), e)[0, 1] for e in expected) > 0.99
    with pytest.raises(DataError, match=r"mine.pkl holds 48x48x48 volumes but the 3D methods take 32\^3") as caught:
        SubtomoPickle(path=str(path), labels=str(tmp_path / "labels.csv"), resample="off").load(seed=0)
    assert "\n" not in str(caught.value)


def test_cli_runs_spectrum_on_a_52_cubed_stack(tmp_path: Path) -> None:
    """End to end: `dcbench run -m spectrum -d mrc --set data.path=...` on 52^3 volumes at 10 Å."""
    folder = write_dataset(tmp_path / "data", 52, n=30)  # test split of 6: enough for the t-SNE figure
    result = CliRunner().invoke(cli, ["run", "-m", "spectrum", "-d", "mrc", "--set", f"data.path={folder}",
                                      "--metric", "ari", "--device", "cpu", "--runs-dir", str(tmp_path / "runs"),
                                      "--no-leaderboard"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    (run_dir,) = (tmp_path / "runs" / "mrc" / "spectrum").iterdir()
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["data"]["box"] == {"original_box": 52, "original_voxel_A": 10.0, "box": 32, "voxel_A": 16.25,
                                         "method": "Fourier cropping", "resample": "auto"}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["data.resample"] == "auto"  # the setting is part of the recorded configuration
    # its exports name each particle as labels.csv did (`N@particles.mrcs`), at the new pixel size
    star = starfile.read(run_dir / "exports" / "test_particles.star", always_dict=True)
    names = star["particles"]["rlnImageName"].tolist()
    assert len(names) == 6 and all(name.endswith("@particles.mrcs") for name in names)
    assert star["optics"]["rlnImagePixelSize"].tolist() == [16.25]
