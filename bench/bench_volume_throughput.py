"""3D (1x32x32x32 volume) training throughput of DualContrast, SpatialVAE and Harmony: the code
at an older commit (default 3439e9f, before the 3D speed-ups) against the current checkout, on
CPU, in one process.

The old plugin modules are imported from a worktree of that commit under another package name
(`old_dcbench_plugins`); both versions share the current dcbench core (training loop, fused
Adam), get the same seed (so the same initial weights) and the same random volumes. Rounds
alternate old / new / old / ... so that noise from other work on the machine hits both alike;
volumes/s are medians over rounds. Also reported: analytic conv/linear FLOPs per training volume
(forward hooks, as bench_dualcontrast_throughput.flops_per_image) and the fraction of the
machine's measured fp32 matmul throughput that the median achieves.

    git worktree add /tmp/dcbench-3439e9f 3439e9f
    python bench/bench_volume_throughput.py [--steps 3] [--rounds 5] [--json out.json]

Results and discussion: docs/performance.md, "Volumes (3D)".
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import json
import platform
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_dualcontrast_throughput as bench2d  # noqa: E402  (bench/ is not a package)

from dcbench.records import cpu_model  # noqa: E402
from dcbench.torchkit import TorchMethod, make_adam, retain_freed_memory  # noqa: E402

SHAPE = (1, 32, 32, 32)
PACKAGE = "dcbench_plugins"
OLD_PACKAGE = "old_dcbench_plugins"
METHOD_MODULES = {"dualcontrast": "dualcontrast.method", "spatialvae": "spatialvae.method",
                  "harmony": "harmony.method"}
CLASSES = {"dualcontrast": "DualContrast", "spatialvae": "SpatialVAE", "harmony": "Harmony"}


# ------------------------------------------------------------------------- old code
@contextlib.contextmanager
def _swapped_package(root: Path) -> Iterator[None]:
    """While active, `dcbench_plugins` is the package in root/plugins (its absolute imports of
    its own modules then resolve there too); the current modules are put back afterwards."""
    current = {k: v for k, v in sys.modules.items() if k == PACKAGE or k.startswith(PACKAGE + ".")}
    for k in current:
        del sys.modules[k]
    spec = importlib.util.spec_from_file_location(PACKAGE, root / "plugins" / "__init__.py",
                                                  submodule_search_locations=[str(root / "plugins")])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    try:
        yield
    finally:
        for k in [k for k in sys.modules if k == PACKAGE or k.startswith(PACKAGE + ".")]:
            sys.modules[OLD_PACKAGE + k[len(PACKAGE):]] = sys.modules.pop(k)
        sys.modules.update(current)


def load_old_methods(root: Path, names: list[str]) -> dict[str, type[TorchMethod]]:
    """{name: method class} from the plugins of the checkout at root, as old_dcbench_plugins.*."""
    if not (root / "plugins" / "__init__.py").is_file():
        raise SystemExit(f"no checkout at {root}: git worktree add {root} 3439e9f")
    with _swapped_package(root):
        modules: dict[str, ModuleType] = {n: importlib.import_module(f"{PACKAGE}.{METHOD_MODULES[n]}") for n in names}
    return {n: getattr(modules[n], CLASSES[n]) for n in names}


def load_new_methods(names: list[str]) -> dict[str, type[TorchMethod]]:
    return {n: getattr(importlib.import_module(f"{PACKAGE}.{METHOD_MODULES[n]}"), CLASSES[n]) for n in names}


# ------------------------------------------------------------------------- FLOPs
def flops_per_volume(name: str, method: TorchMethod) -> int:
    """Analytic conv/linear FLOPs per training volume of one method's step (pass structure as
    in bench2d.flops_per_image: 2 per MAC forward, +2 weight and +2 input gradient backward)."""
    f, macs = bench2d.pass_flops, bench2d.layer_macs
    model, x = method.model, torch.zeros(1, *SHAPE)
    if name == "spatialvae":
        cfg = method.config
        h, layers = int(cfg["generator_hidden"]), int(cfg["generator_layers"])
        # Per (voxel, volume) row: the first layer (coordinates + 1) -> h, hidden h -> h, out h -> 1.
        row = [(4 * h, True), *[(h * h, False)] * (layers - 1), (h, False)]
        return f(macs(model.encoder, x), backward=True, input_grad=False) + x.numel() * f(row, backward=True,
                                                                                         input_grad=False)
    code = torch.zeros(1, int(method.config["latent_dim"]))
    enc = macs(model.encoder, x)
    if name == "harmony":  # encode x and T(x), decode both canonical images
        return 2 * f(enc, backward=True, input_grad=False) + 2 * f(macs(model.decoder, code), backward=True)
    dec = macs(model.decoder, code, code.clone())
    # x and x': encoder + decoder forward and backward; the generated pair: decoder forward,
    # encoder forward and backward (no gradient into the generated volumes).
    return 4 * f(enc, backward=True, input_grad=False) + 2 * f(dec, backward=True) + 2 * f(dec)


# ------------------------------------------------------------------------- timing
def trainer(name: str, method: TorchMethod, data: torch.Tensor, batch_size: int) -> Callable[[int], int]:
    """run(steps) -> volumes trained on: DualContrast and Harmony through train_epoch (the code
    their fit runs each epoch), SpatialVAE through train_step on consecutive batches."""
    method.config["batch_size"] = batch_size
    optimizer = method.make_optimizer() if hasattr(method, "make_optimizer") else make_adam(
        method.model.parameters(), lr=float(method.config["lr"]))
    per_epoch = len(data) // batch_size

    def run(steps: int) -> int:
        done = 0
        while done < steps:
            n = min(steps - done, per_epoch)
            if name == "spatialvae":
                method.model.train()
                for i in range(n):
                    method.train_step(data[i * batch_size:(i + 1) * batch_size], optimizer)
            else:
                method.train_epoch(data, optimizer, max_steps=n)
            done += n
        return done * batch_size

    return run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, default=Path("/tmp/dcbench-3439e9f"), help="checkout of the old commit")
    parser.add_argument("--methods", default="dualcontrast,harmony,spatialvae")
    parser.add_argument("--steps", type=int, default=3, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each version, alternating")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each version first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--volumes", type=int, default=200, help="random volumes in memory")
    parser.add_argument("--spatialvae-batch", type=int, default=4,
                        help="SpatialVAE's batch (paper: 50, ~1 min a step here; its cost per volume does not "
                             "depend on the batch: 4 volumes are one block of its fused loss)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    retain_freed_memory()  # process-wide: the default for all three methods on CPU
    names = args.methods.split(",")
    versions = {"old": load_old_methods(args.old, names), "new": load_new_methods(names)}
    data = torch.randn(args.volumes, *SHAPE, generator=torch.Generator().manual_seed(args.seed))
    peak = bench2d.matmul_gflops(args.threads)
    results: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
                    "python": platform.python_version()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "matmul_gflops": peak, "methods": {},
    }
    for name in names:
        classes = {v: versions[v][name] for v in versions}
        methods = {v: cls(cls.default_config("paper", SHAPE), SHAPE, "cpu", args.seed) for v, cls in classes.items()}
        batch = args.spatialvae_batch if name == "spatialvae" else int(methods["new"].config["batch_size"])
        runs = {v: trainer(name, m, data, batch) for v, m in methods.items()}
        for run in runs.values():
            run(args.warmup)
        per_round: dict[str, list[float]] = {v: [] for v in runs}
        for r in range(args.rounds):
            for v, run in runs.items():
                per_round[v].append(bench2d.timed(run, args.steps))
            print(f"{name} round {r + 1}/{args.rounds}: " + ", ".join(f"{v} {per_round[v][-1]:.2f}" for v in runs)
                  + " vol/s", flush=True)
        medians = {v: statistics.median(x) for v, x in per_round.items()}
        flops = flops_per_volume(name, methods["new"])
        results["methods"][name] = {
            "batch_size": batch, "volumes_per_s": per_round, "median_volumes_per_s": medians,
            "ratio": medians["new"] / medians["old"],
            "round_ratios": [a / b for a, b in zip(per_round["new"], per_round["old"])],
            "flops_per_volume": flops,
            "achieved_gflops": {v: medians[v] * flops / 1e9 for v in medians},
            "fraction_of_matmul": {v: medians[v] * flops / 1e9 / peak for v in medians},
        }
        del methods, runs
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def print_table(results: dict[str, Any]) -> None:
    peak = results["matmul_gflops"]
    print(f"\nfp32 matmul 1024^3: {peak:.0f} GFLOP/s ({results['machine']['threads']} threads)")
    print("| method (batch) | old vol/s | new vol/s | ratio (per round min-max) | GFLOP/volume "
          "| % of matmul old / new |")
    print("|---|---|---|---|---|---|")
    for name, r in results["methods"].items():
        m, frac, rr = r["median_volumes_per_s"], r["fraction_of_matmul"], r["round_ratios"]
        print(f"| {name} ({r['batch_size']}) | {m['old']:.2f} | {m['new']:.2f} | **{r['ratio']:.2f}** "
              f"({min(rr):.2f}-{max(rr):.2f}) | {r['flops_per_volume'] / 1e9:.2f} | "
              f"{100 * frac['old']:.1f} / {100 * frac['new']:.1f} |")


if __name__ == "__main__":
    main()
