"""`dcbench simulate`: cryo-ET subtomograms from the user's PDB/mmCIF files (docs/subtomograms.md).

Imported whenever the command line is built (registry.toml [commands]), so only click here: the
simulator (numpy, scipy, gemmi) is imported inside the command.
"""

from __future__ import annotations

from pathlib import Path

import click

from dcbench.errors import DcbenchError


@click.command("simulate")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder (created).")
@click.option("--per-structure", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Particles per structure.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for poses and noise.")
@click.option("--snr", type=float, help="Target SNR: var(signal)/var(noise) per particle over the box, signal = "
              "the CTF-filtered particle.  [default: 0.1]")
@click.option("--no-noise", is_flag=True, help="No noise (noise-free particles).")
@click.option("--defocus", type=float, help="Defocus in µm, negative = underfocus.  [default: -5]")
@click.option("--voltage", type=float, help="Acceleration voltage in kV.  [default: 300]")
@click.option("--cs", type=float, help="Spherical aberration in mm.  [default: 1.7]")
@click.option("--amplitude-contrast", type=float, help="Amplitude contrast fraction.  [default: 0.1]")
@click.option("--no-ctf", is_flag=True, help="No CTF.")
@click.option("--wedge", type=float, metavar="DEGREES", help="Missing wedge of a +-DEGREES tilt series "
              "(tilt axis y, beam z); 0 = none.  [default: none]")
@click.option("--box", type=int, help="Box side in voxels.  [default: 32]")
@click.option("--voxel", type=float, help="Voxel size in Å.  [default: 10]")
@click.option("--resolution", type=float, help="Resolution (Gaussian width) of the maps in Å.  [default: 20]")
@click.option("--max-shift", type=float, help="Shifts uniform in +-this many voxels per axis.  [default: 3]")
@click.option("--per-particle-files", is_flag=True, help="One MRC file per particle instead of one stack.")
@click.option("--overwrite", is_flag=True, help="Replace an existing non-empty output folder.")
def simulate_command(manifest: Path, out: Path, per_structure: int, seed: int, snr: float | None, no_noise: bool,
                     defocus: float | None, voltage: float | None, cs: float | None,
                     amplitude_contrast: float | None, no_ctf: bool, wedge: float | None, box: int | None,
                     voxel: float | None, resolution: float | None, max_shift: float | None,
                     per_particle_files: bool, overwrite: bool) -> None:
    """Simulate subtomograms of the structures listed in MANIFEST (TOML: [[structure]] entries with
    file, composition, conformation; optional [simulation] defaults) into the folder --out.
    Command-line settings override the manifest's, which override the paper's defaults."""
    import time

    from dcbench_plugins.subtomo.manifest import build_settings, read_manifest
    from dcbench_plugins.subtomo.writer import simulate_to_folder

    if no_noise and snr is not None:
        raise DcbenchError("give --snr or --no-noise, not both")
    started = time.perf_counter()
    parsed = read_manifest(manifest)
    given = {"snr": snr, "defocus_um": defocus, "voltage_kv": voltage, "cs_mm": cs,
             "amplitude_contrast": amplitude_contrast, "box": box, "voxel": voxel, "resolution": resolution,
             "max_shift_voxels": max_shift}
    overrides = {key: value for key, value in given.items() if value is not None}  # only options given
    if no_noise:
        overrides["snr"] = None
    if no_ctf:
        overrides["ctf"] = False
    if wedge is not None:
        overrides["wedge_tilt_degrees"] = wedge or None  # 0: no wedge
    settings = build_settings(parsed.simulation, overrides)
    folder = simulate_to_folder(parsed.entries, out, per_structure=per_structure, seed=seed, settings=settings,
                                per_particle_files=per_particle_files, overwrite=overwrite, manifest=parsed.path)
    total = len(parsed.entries) * per_structure
    click.echo(f"simulated {total} particles ({len(parsed.entries)} structures x {per_structure}) into {folder} "
               f"in {time.perf_counter() - started:.1f} s")
