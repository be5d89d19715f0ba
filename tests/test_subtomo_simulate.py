"""`dcbench simulate` end to end on tiny hand-written models, and the rotation conventions it relies on."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from click.testing import CliRunner

from dcbench.cli import cli
from dcbench.errors import DataError, DcbenchError
from dcbench_plugins.subtomo import physics, rotations
from dcbench_plugins.subtomo.atoms import read_atoms
from dcbench_plugins.subtomo.manifest import label_ids, read_manifest

BOX = 16
# three small asymmetric shapes (Å, element): an L, a bent L and a T; all within 45 Å of their centre
SHAPES = {
    "l-open": [((-30, -10, 0), "C"), ((-10, -10, 0), "N"), ((10, -10, 0), "O"), ((30, -10, 0), "S"),
               ((30, 10, 0), "C"), ((30, 30, 5), "C")],
    "l-closed": [((-30, -10, 0), "C"), ((-10, -10, 0), "N"), ((10, -10, 0), "O"), ((30, -10, 0), "S"),
                 ((20, 10, 10), "C"), ((10, 25, 20), "C")],
    "tee": [((-30, 0, 0), "C"), ((0, 0, 0), "P"), ((30, 0, 0), "C"), ((0, 20, 0), "N"), ((0, 40, -10), "O")],
}


def pdb_line(serial: int, name: str, residue: str, seq: int, xyz: tuple[float, ...], element: str,
             record: str = "ATOM", altloc: str = " ") -> str:
    x, y, z = xyz
    return (f"{record:<6}{serial:>5} {' ' + name:<4}{altloc}{residue:>3} A{seq:>4}    {x:8.3f}{y:8.3f}{z:8.3f}"
            f"{1.0:6.2f}{20.0:6.2f}          {element:>2}")


def pdb_text(atoms: list[tuple[tuple[float, ...], str]], extras: bool = False) -> str:
    lines = [pdb_line(i + 1, element, "ALA", i + 1, xyz, element) for i, (xyz, element) in enumerate(atoms)]
    if extras:  # a hydrogen, an alternative conformation (A kept, B dropped) and a water
        n = len(atoms)
        lines += [pdb_line(n + 1, "H", "ALA", n, (5.0, 5.0, 5.0), "H"),
                  pdb_line(n + 2, "CB", "ALA", n, (1.0, 2.0, 3.0), "C", altloc="A"),
                  pdb_line(n + 3, "CB", "ALA", n, (9.0, 9.0, 9.0), "C", altloc="B"),
                  pdb_line(n + 4, "O", "HOH", n + 1, (40.0, 40.0, 40.0), "O", record="HETATM")]
    return "\n".join(lines + ["END"]) + "\n"


def write_cif_gz(pdb: Path, target: Path) -> None:
    import gemmi

    structure = gemmi.read_structure(str(pdb))
    structure.setup_entities()
    target.write_bytes(gzip.compress(structure.make_mmcif_document().as_string().encode()))


def make_models(folder: Path, simulation: str = "") -> Path:
    """Three models (two conformations of composition 'ell', one of 'tee' as gzipped mmCIF) and a manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, atoms in SHAPES.items():
        (folder / f"{name}.pdb").write_text(pdb_text(atoms))
    write_cif_gz(folder / "tee.pdb", folder / "tee.cif.gz")
    manifest = folder / "manifest.toml"
    manifest.write_text(simulation + """
[[structure]]
file = "l-open.pdb"
composition = "ell"
conformation = "open"

[[structure]]
file = "tee.cif.gz"
composition = "tee"

[[structure]]
file = "l-closed.pdb"
composition = "ell"
conformation = "closed"
""")
    return manifest


def simulate(manifest: Path, out: Path, *options: str) -> None:
    result = CliRunner().invoke(cli, ["simulate", str(manifest), "--out", str(out), "--box", str(BOX), *options])
    assert result.exit_code == 0, result.output + repr(result.exception)


def read_labels(folder: Path) -> list[dict[str, str]]:
    with open(folder / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def read_stack(folder: Path) -> np.ndarray:
    with mrcfile.open(folder / "particles.mrcs") as mrc:
        return np.array(mrc.data)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def noisy(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default physics (CTF, SNR 0.1), 4 particles per structure."""
    out = tmp_path_factory.mktemp("runs") / "noisy"
    simulate(models, out, "--per-structure", "4", "--seed", "3")
    return out


@pytest.fixture(scope="module")
def clean(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same seed without noise and CTF: only the poses act."""
    out = tmp_path_factory.mktemp("runs") / "clean"
    simulate(models, out, "--per-structure", "4", "--seed", "3", "--no-noise", "--no-ctf")
    return out


# ------------------------------------------------------------------------------- atoms


def test_pdb_and_gzipped_mmcif_give_the_same_atoms(tmp_path: Path) -> None:
    pdb = tmp_path / "model.pdb"
    pdb.write_text(pdb_text(SHAPES["tee"], extras=True))
    write_cif_gz(pdb, tmp_path / "model.cif.gz")
    coords, weights = read_atoms(pdb)
    cif_coords, cif_weights = read_atoms(tmp_path / "model.cif.gz")
    np.testing.assert_allclose(cif_coords, coords, atol=1e-3)
    np.testing.assert_array_equal(cif_weights, weights)
    # the water and altloc B are skipped; the hydrogen weighs 1
    assert len(coords) == len(SHAPES["tee"]) + 2
    np.testing.assert_array_equal(weights, [6, 15, 6, 7, 8, 1, 6])
    np.testing.assert_allclose(coords[-1], [1.0, 2.0, 3.0])


@pytest.mark.parametrize("content, expected", [
    (None, "does not exist"),
    (b"", "has no atoms"),
    (b"\x00\x01garbage that is not a model\n", "has no atoms"),
    (gzip.compress(b"data_x\nloop_\n_atom_site.id\n")[:-12], "cannot read"),  # a truncated gzip
])
def test_bad_model_files_are_data_errors_naming_the_file(tmp_path: Path, content: bytes | None,
                                                         expected: str) -> None:
    path = tmp_path / ("broken.cif.gz" if expected == "cannot read" else "broken.pdb")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=expected) as error:
        read_atoms(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------------------- manifest


def test_manifest_numbers_compositions_and_conformations_within_them(models: Path) -> None:
    manifest = read_manifest(models)
    assert [(e.composition, e.conformation, e.name) for e in manifest.entries] == [
        ("ell", "open", "ell_open"), ("tee", "tee", "tee_tee"), ("ell", "closed", "ell_closed")]
    assert manifest.entries[1].file == models.parent / "tee.cif.gz"
    assert label_ids([(e.composition, e.conformation) for e in manifest.entries]) == [(0, 0), (1, 0), (0, 1)]
    assert manifest.simulation == {}


STRUCTURE = '[[structure]]\nfile = "l-open.pdb"\ncomposition = "ell"\n'


@pytest.mark.parametrize("text, expected", [
    (None, "does not exist"),
    ("[[structure]\nfile = ", "not valid TOML"),
    ("[simulation]\nsnr = 0.2\n", "lists no structures"),
    ('[[structure]]\nfile = "l-open.pdb"\n', "has no 'composition'"),
    ('[[structure]]\ncomposition = "ell"\n', "has no 'file'"),
    (STRUCTURE.replace("l-open", "nowhere"), "nowhere.pdb does not exist"),
    (STRUCTURE + 'colour = "red"\n', "unknown key"),
    ("[simulation]\nnoise = 0.2\n" + STRUCTURE, "unknown setting.*noise"),
    ('[simulation]\nsnr = "high"\n' + STRUCTURE, "snr must be a number"),
    ("[simulation]\nbox = 16.5\n" + STRUCTURE, "box must be an integer"),
    (STRUCTURE + STRUCTURE, "both composition 'ell' conformation 'l-open'"),
    (STRUCTURE + 'name = "../escape"\n', "cannot be a file name"),
])
def test_manifest_errors_are_one_line_data_errors(models: Path, tmp_path: Path, text: str | None,
                                                  expected: str) -> None:
    manifest = models.parent / f"manifest-{tmp_path.name}.toml"  # beside the models, so files resolve
    if text is not None:
        manifest.write_text(text)
    try:
        with pytest.raises(DataError, match=expected) as error:
            read_manifest(manifest)
    finally:
        manifest.unlink(missing_ok=True)
    assert str(manifest) in str(error.value) and "\n" not in str(error.value)


def test_cli_reports_a_missing_manifest_as_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "dcbench.cli", "simulate", str(tmp_path / "none.toml"),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "none.toml does not exist" in result.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- the folder


def test_simulate_writes_particles_labels_references_and_settings(noisy: Path) -> None:
    with mrcfile.open(noisy / "particles.mrcs") as mrc:
        assert mrc.data.shape == (12, BOX, BOX, BOX) and mrc.data.dtype == np.float32
        assert mrc.is_volume_stack() and float(mrc.voxel_size.x) == 10.0
        assert mrc.header.dmax == pytest.approx(float(mrc.data.max()))
        assert mrc.header.rms == pytest.approx(float(mrc.data.std()), rel=1e-4)
    rows = read_labels(noisy)
    assert [r["index"] for r in rows] == [str(i) for i in range(12)]
    assert rows[0]["file"] == "000001@particles.mrcs" and rows[11]["file"] == "000012@particles.mrcs"
    # structures in manifest order; ids: compositions by first appearance, conformations within each
    expected = [("ell_open", "ell", "0", "open", "0"), ("tee_tee", "tee", "1", "tee", "0"),
                ("ell_closed", "ell", "0", "closed", "1")]
    assert [(r["structure"], r["composition"], r["composition_id"], r["conformation"], r["conformation_id"])
            for r in rows] == [e for e in expected for _ in range(4)]
    q = np.array([[float(r[k]) for k in ("qw", "qx", "qy", "qz")] for r in rows])
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    assert (q[:, 0] >= 0).all()
    shifts = np.array([[float(r[k]) for k in ("shift_x", "shift_y", "shift_z")] for r in rows])
    assert np.abs(shifts).max() <= 3.0 and np.abs(shifts).max() > 0

    with open(noisy / "references.csv", newline="") as handle:
        references = list(csv.DictReader(handle))
    assert [(r["file"], r["composition_id"], r["conformation_id"]) for r in references] == [
        ("references/ell_open.mrc", "0", "0"), ("references/tee_tee.mrc", "1", "0"),
        ("references/ell_closed.mrc", "0", "1")]
    with mrcfile.open(noisy / "references" / "tee_tee.mrc") as mrc:
        assert mrc.data.shape == (BOX,) * 3 and float(mrc.voxel_size.x) == 10.0
        # without CTF: a density map is non-negative
        assert mrc.data.min() >= 0 and mrc.data.max() > 0

    record = json.loads((noisy / "simulation.json").read_text())
    assert record["settings"]["box"] == BOX and record["settings"]["snr"] == 0.1 and record["settings"]["ctf"]
    assert record["seed"] == 3 and record["per_structure"] == 4 and record["particles"] == 12
    assert record["snr_definition"].startswith("var(signal)/var(noise) per particle")
    assert "R^T (p - t)" in record["rotation_convention"] and record["dcbench"]
    assert [s["name"] for s in record["structures"]] == ["ell_open", "tee_tee", "ell_closed"]
    assert not [p for p in noisy.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_same_seed_same_bytes_other_seed_other_particles(models: Path, noisy: Path, tmp_path: Path) -> None:
    simulate(models, tmp_path / "again", "--per-structure", "4", "--seed", "3")
    for name in ("particles.mrcs", "labels.csv", "references.csv", "references/ell_open.mrc"):
        assert (tmp_path / "again" / name).read_bytes() == (noisy / name).read_bytes(), name
    simulate(models, tmp_path / "other", "--per-structure", "4", "--seed", "4")
    assert not np.allclose(read_stack(tmp_path / "other"), read_stack(noisy))
    assert read_labels(tmp_path / "other")[0]["qw"] != read_labels(noisy)[0]["qw"]


def test_labels_hold_the_true_poses(clean: Path) -> None:
    particles = read_stack(clean)
    for row, particle in zip(read_labels(clean), particles):
        with mrcfile.open(clean / "references" / f"{row['structure']}.mrc") as mrc:
            reference = np.array(mrc.data)
        q = np.array([[float(row[k]) for k in ("qw", "qx", "qy", "qz")]])
        t = np.array([[float(row[k]) for k in ("shift_x", "shift_y", "shift_z")]])
        posed = rotations.rotate_volumes(reference[None], rotations.quaternions_to_matrices(q), t)[0].numpy()
        np.testing.assert_allclose(posed, particle, atol=1e-5 * float(reference.max()))


def test_noise_meets_the_snr_per_particle(models: Path, clean: Path, tmp_path: Path) -> None:
    # same seed: same poses, so the noise is the difference (--no-ctf: the signal is the posed map)
    simulate(models, tmp_path / "snr", "--per-structure", "4", "--seed", "3", "--no-ctf", "--snr", "0.5")
    signal, noisy = read_stack(clean).astype(np.float64), read_stack(tmp_path / "snr").astype(np.float64)
    for s, n in zip(signal, noisy):
        assert s.var() / (n - s).var() == pytest.approx(0.5, rel=0.1)


def test_wedge_removes_the_missing_wedge_from_each_particle(models: Path, tmp_path: Path) -> None:
    simulate(models, tmp_path / "wedge", "--per-structure", "2", "--no-noise", "--wedge", "45")
    mask = physics.missing_wedge_mask(BOX, 45.0, 10.0)
    assert 0 < mask.mean() < 1
    for particle in read_stack(tmp_path / "wedge"):
        spectrum = np.abs(np.fft.rfftn(particle.astype(np.float64)))
        assert spectrum[mask == 0].max() < 1e-4 * spectrum.max()
    assert json.loads((tmp_path / "wedge" / "simulation.json").read_text())["settings"]["wedge_tilt_degrees"] == 45


def test_per_particle_files(models: Path, clean: Path, tmp_path: Path) -> None:
    simulate(models, tmp_path / "files", "--per-structure", "4", "--seed", "3", "--no-noise", "--no-ctf",
             "--per-particle-files")
    rows = read_labels(tmp_path / "files")
    assert rows[0]["file"] == "particles/000000.mrc" and rows[11]["file"] == "particles/000011.mrc"
    assert not (tmp_path / "files" / "particles.mrcs").exists()
    stack = read_stack(clean)
    for row in rows:
        with mrcfile.open(tmp_path / "files" / row["file"]) as mrc:
            assert float(mrc.voxel_size.x) == 10.0
            np.testing.assert_array_equal(mrc.data, stack[int(row["index"])])


def test_command_line_overrides_the_manifest_which_overrides_the_defaults(tmp_path: Path) -> None:
    manifest = make_models(tmp_path / "models", "[simulation]\nsnr = 0.5\nvoxel = 12.0\n")
    simulate(manifest, tmp_path / "out", "--per-structure", "1", "--snr", "0.2")
    settings = json.loads((tmp_path / "out" / "simulation.json").read_text())["settings"]
    assert settings["snr"] == 0.2 and settings["voxel"] == 12.0 and settings["defocus_um"] == -5.0


def test_existing_output_is_kept_unless_overwrite(models: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = CliRunner().invoke(cli, ["simulate", str(models), "--out", str(out), "--box", str(BOX),
                                      "--per-structure", "1"])
    assert result.exit_code != 0 and isinstance(result.exception, DcbenchError)
    assert "--overwrite" in str(result.exception) and (out / "precious.txt").read_text() == "keep me"
    # a failing run with --overwrite (a bad setting) leaves the old folder alone too
    result = CliRunner().invoke(cli, ["simulate", str(models), "--out", str(out), "--box", "4", "--overwrite"])
    assert isinstance(result.exception, DataError) and (out / "precious.txt").exists()
    simulate(models, out, "--per-structure", "1", "--overwrite")
    assert not (out / "precious.txt").exists() and (out / "particles.mrcs").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ------------------------------------------------------------------- rotation conventions


def blobs(centres_xyz: list[tuple[float, float, float]], sigma: float = 1.5, side: int = 32) -> np.ndarray:
    """A [z, y, x] map of Gaussian blobs at positions (voxels from the box centre, x, y, z)."""
    axis = np.arange(side) - (side - 1) / 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    return sum(np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
               for cx, cy, cz in centres_xyz).astype(np.float32)


def test_random_quaternions_are_unit_and_uniform_ish() -> None:
    q = rotations.random_quaternions(20000, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    assert (q[:, 0] >= 0).all()
    # the mean rotation matrix of a uniform distribution over SO(3) is 0
    assert np.abs(rotations.quaternions_to_matrices(q).mean(0)).max() < 0.02


def test_quaternion_matrix_round_trip() -> None:
    q = rotations.random_quaternions(500, np.random.default_rng(1))
    r = rotations.quaternions_to_matrices(q)
    np.testing.assert_allclose(r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    np.testing.assert_allclose(rotations.matrices_to_quaternions(r), q, atol=1e-12)
    # 90 degrees about z takes x to y (right-handed)
    np.testing.assert_allclose(rotations.axis_angle_matrix([0, 0, 1], 90) @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_rotation_by_90_degrees_about_z_is_rot90_of_the_array() -> None:
    volume = np.random.default_rng(2).random((1, 16, 16, 16)).astype(np.float32)
    turned = rotations.rotate_volumes(volume, rotations.axis_angle_matrix([0, 0, 1], 90)).numpy()
    # feature at (x, y) -> (-y, x): output[z, y, x] = input[z, -x, y], i.e. rot90 from the x axis to the y axis
    np.testing.assert_allclose(turned[0], np.rot90(volume[0], k=1, axes=(2, 1)), atol=1e-5)


def test_rotating_by_r_then_r_transpose_recovers_a_smooth_map() -> None:
    volume = blobs([(4, 0, 0), (-3, 5, 1), (0, -2, 6)], sigma=2.5)[None]
    r = rotations.quaternions_to_matrices(rotations.random_quaternions(1, np.random.default_rng(3)))
    back = rotations.rotate_volumes(rotations.rotate_volumes(volume, r), r.transpose(0, 2, 1)).numpy()
    assert np.corrcoef(back.ravel(), volume.ravel())[0, 1] > 0.99


def test_a_feature_at_q_moves_to_r_q_plus_t() -> None:
    q = np.array([5.0, -2.0, 3.0])
    volume = blobs([tuple(q)], sigma=1.2)[None]
    r = rotations.quaternions_to_matrices(rotations.random_quaternions(1, np.random.default_rng(4)))
    t = np.array([[1.5, -0.5, 2.0]])
    moved = rotations.rotate_volumes(volume, r, t).numpy()[0].astype(np.float64)
    axis = np.arange(32) - 15.5
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    centroid = np.array([(moved * c).sum() / moved.sum() for c in (x, y, z)])
    np.testing.assert_allclose(centroid, r[0] @ q + t[0], atol=0.15)


def test_missing_wedge_mask_geometry() -> None:
    side, voxel = 16, 10.0
    mask = physics.missing_wedge_mask(side, 60.0, voxel)
    assert mask.shape == (side, side, side // 2 + 1)
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert (mask[0] == 1).all()  # k_z = 0: every tilt sees it
    assert (mask[1:, :, 0] == 0).all()  # k_x = 0, k_z != 0: along the beam, never seen
    # (k_x, k_z) = (1, 1): 45 degrees from the k_x axis, inside +-60, outside +-30; k_y does not matter
    assert (mask[1, :, 1] == 1).all() and (mask[-1, :, 1] == 1).all()
    assert (physics.missing_wedge_mask(side, 30.0, voxel)[1, :, 1] == 0).all()
    # the sampled fraction of the (k_x, k_z) plane's directions is about tilt / 90
    kz, _, kx = physics.rfft_frequencies(64, voxel)
    fine = physics.missing_wedge_mask(64, 60.0, voxel)[:, 0, :]
    ring = (np.abs(np.hypot(kz[:, 0, :], kx[0]) - 0.02) < 0.002)
    assert fine[ring].mean() == pytest.approx(60 / 90, abs=0.05)
    with pytest.raises(ValueError):
        physics.missing_wedge_mask(side, 90.0)
