"""`dcbench simulate` end to end at the paper's size, against the 60 s target on 2 cores.

Writes the 18 procedural pseudo-atomic models (3 compositions x 6 conformations,
`dcbench_plugins.subtomo.procedural`) as gzipped mmCIF files with gemmi, plus a manifest, into a
temporary folder; then times `python -m dcbench.cli simulate MANIFEST --out DIR` as a subprocess
with the default settings (32^3 box of 1 nm, CTF, SNR 0.1): starting Python, reading the atoms,
making the maps, simulating 18 x 1,000 particles and writing the 2.4 GB stack, labels and
references. Prints seconds, particles/s and the ratio to the target, with the machine's load
average (other work on the machine slows the run).

    python bench/bench_simulate.py [--per-structure 1000] [--out DIR] [--json results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dcbench.records import cpu_model
from dcbench_plugins.subtomo import procedural

TARGET_S = 60.0


def write_model(model: procedural.AtomicModel, path: Path) -> None:
    """One pseudo-atom per residue, its element the one whose atomic number is its weight (7: N),
    so that read_atoms gives back the model's weights; gzipped mmCIF."""
    import gzip

    import gemmi

    structure = gemmi.Structure()
    structure.name = model.name
    structure.cell = gemmi.UnitCell(1, 1, 1, 90, 90, 90)  # no crystal: a placeholder cell, as for EM models
    gemmi_model = gemmi.Model("1")
    chain = gemmi.Chain("A")
    for number, (xyz, weight) in enumerate(zip(model.coords, model.weights), 1):
        element = gemmi.Element(int(round(weight)))
        residue = gemmi.Residue()
        residue.name, residue.seqid = "UNK", gemmi.SeqId(number, " ")
        atom = gemmi.Atom()
        atom.name, atom.element, atom.pos, atom.occ = element.name, element, gemmi.Position(*xyz), 1.0
        residue.add_atom(atom)
        chain.add_residue(residue)
    gemmi_model.add_chain(chain)
    structure.add_model(gemmi_model)
    structure.setup_entities()
    path.write_bytes(gzip.compress(structure.make_mmcif_document().as_string().encode(), compresslevel=6))


def write_inputs(folder: Path, seed: int = 0) -> Path:
    """The 18 models and their manifest; returns the manifest's path."""
    lines = ["# the 18 procedural complexes of dcbench_plugins.subtomo.procedural, as gzipped mmCIF"]
    for model in procedural.complexes(seed):
        file = f"{model.name}.cif.gz"
        write_model(model, folder / file)
        lines += ["", "[[structure]]", f'file = "{file}"', f'composition = "{model.composition}"',
                  f'conformation = "{model.conformation}"', f'name = "{model.name}"']
    manifest = folder / "manifest.toml"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def load_average() -> tuple[float, float, float]:
    return os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-structure", type=int, default=1000)
    parser.add_argument("--out", type=Path, help="keep the simulated folder here (default: a temporary "
                        "folder, deleted afterwards)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="dcbench-bench-simulate-"))
    try:
        started = time.perf_counter()
        manifest = write_inputs(work)
        inputs_s = time.perf_counter() - started
        out = args.out or work / "out"
        load_before = load_average()
        command = [sys.executable, "-m", "dcbench.cli", "simulate", str(manifest), "--out", str(out),
                   "--per-structure", str(args.per_structure), "--overwrite"]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        load_after = load_average()
        if result.returncode != 0:
            raise SystemExit(f"dcbench simulate failed:\n{result.stderr[-3000:]}")
        size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(work / "out", ignore_errors=True)

    particles = 18 * args.per_structure
    scaled = seconds * 18000 / particles  # the paper's size, scaled linearly when run smaller
    results: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "logical_cpus": len(os.sched_getaffinity(0)),
                    "python": platform.python_version(), "load_average_before": load_before,
                    "load_average_after": load_after},
        "particles": particles,
        "inputs_s": inputs_s,
        "seconds": seconds,
        "particles_per_s": particles / seconds,
        "output_bytes": size,
        "target_s": TARGET_S,
        "ratio_to_target": scaled / TARGET_S,
        "command_summary": result.stdout.strip(),
        "numpy": np.__version__,
    }
    print(f"wrote 18 gzipped mmCIF models and a manifest in {inputs_s:.1f} s")
    print(result.stdout.strip())
    print(f"dcbench simulate, end to end: {particles} particles in {seconds:.1f} s = {particles / seconds:.0f} "
          f"particles/s, {size / 1e9:.2f} GB written; {'18,000 particles (scaled): ' if particles != 18000 else ''}"
          f"{scaled:.1f} s = {scaled / TARGET_S:.2f} x the {TARGET_S:.0f} s target")
    print(f"load average (1, 5, 15 min) before {_fmt(load_before)}, after {_fmt(load_after)} on "
          f"{results['machine']['logical_cpus']} CPUs ({results['machine']['cpu']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def _fmt(load: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in load)


if __name__ == "__main__":
    main()
