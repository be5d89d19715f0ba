"""Build the maps that `subtomo-proteins` ships: run once by a maintainer, with gemmi and the
structure files (../shared/structures), and commit the result.

    python scripts/build_protein_maps.py [--structures ../shared/structures]

Writes plugins/datasets/data/subtomo_proteins.npz (the noise-free maps, float32) and
subtomo_proteins.json (what each map is: PDB ID, description, the motion applied, and how far it
is from its composition's first map). Maps use the simulator's core at the paper's settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from dcbench_plugins.datasets.subtomo_proteins import DATA_DIR, MAPS_FILE, METADATA_FILE, map_difference
from dcbench_plugins.subtomo import motions
from dcbench_plugins.subtomo.protein_models import build_models
from dcbench_plugins.subtomo.simulate import SimulationSettings, reference_maps

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=Path, default=ROOT.parent / "shared" / "structures")
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "subtomo-proteins-maps.png")
    args = parser.parse_args()
    settings = SimulationSettings()
    models = build_models(args.structures)
    maps = reference_maps(models, settings)
    compositions = list(dict.fromkeys(m.composition for m in models))
    entries, first = [], {}
    for index, model in enumerate(models):
        base = first.setdefault(model.composition, index)
        same_atoms = len(model.coords) == len(models[base].coords) and model.pdb_id == models[base].pdb_id
        entries.append({
            "name": model.name, "composition": model.composition, "conformation": model.conformation,
            "pdb_id": model.pdb_id, "description": model.description,
            "map_difference": round(map_difference(maps[index], maps[base]), 4),
            "map_correlation": round(float(np.corrcoef(maps[index].ravel(), maps[base].ravel())[0, 1]), 4),
            "rmsd_angstrom": round(motions.rmsd(model.coords, models[base].coords), 2) if same_atoms else None,
            "atoms": len(model.coords)})
    sources = {m.pdb_id: hashlib.sha256((args.structures / f"{m.pdb_id}.pdb.gz").read_bytes()).hexdigest()
               for m in models}
    metadata = {"settings": {"box": settings.box, "voxel": settings.voxel, "resolution": settings.resolution},
                "compositions": compositions, "maps": entries, "source_sha256": sources,
                "built_by": "scripts/build_protein_maps.py (dcbench_plugins.subtomo.protein_models)"}
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / MAPS_FILE, maps=maps.astype(np.float32))
    (args.out / METADATA_FILE).write_text(json.dumps(metadata, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    draw_maps(maps, entries, compositions, args.figure)
    for entry in entries:
        print(f"{entry['name']:38s} {entry['pdb_id']}  map difference {entry['map_difference']:.3f}")
    print(f"wrote {args.out / MAPS_FILE}, {args.out / METADATA_FILE} and {args.figure}")


def draw_maps(maps: np.ndarray, entries: list[dict], compositions: list[str], target: Path) -> None:
    """One row per composition, one column per conformation: each map's projections along z and y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(sum(e["composition"] == c for e in entries) for c in compositions)
    figure, axes = plt.subplots(len(compositions), columns, figsize=(2.2 * columns, 2.6 * len(compositions)))
    for row, composition in enumerate(compositions):
        members = [i for i, e in enumerate(entries) if e["composition"] == composition]
        for column, ax in enumerate(axes[row]):
            ax.axis("off")
            if column >= len(members):
                continue
            index = members[column]
            pair = np.concatenate([maps[index].sum(0), maps[index].sum(1)], axis=1)  # along z | along y
            ax.imshow(pair, cmap="gray_r")
            entry = entries[index]
            ax.set_title(f"{entry['conformation']}\n{entry['pdb_id']}  diff {entry['map_difference']:.2f}", fontsize=7)
    figure.suptitle("subtomo-proteins: noise-free maps, projected along z | along y (rows: compositions)", fontsize=9)
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
