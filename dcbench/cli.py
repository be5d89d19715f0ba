"""The `dcbench` command line. Imports nothing heavy (no torch) until a command needs it.

Plugins add their own subcommands through the hook register_commands (`dcbench simulate`,
`dcbench data import-mnist` and `dcbench hydra setup` are the built-ins' own, listed in registry.toml).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import click

from dcbench import __version__, exits
from dcbench.errors import DcbenchError, format_warning

warnings.formatwarning = format_warning  # dcbench's own warnings (a skipped leaderboard line): one line each


def _report_problems(registry) -> None:
    for problem in registry.problems:
        click.echo(f"warning: {problem}", err=True)


class _PluginCommands(click.Group):
    """The root group: the plugins' commands are added the first time a command is looked up or listed,
    so that `dcbench --version` loads no plugin, and one whose register_commands fails is one warning."""

    _plugins_added = False

    def _add_plugin_commands(self) -> None:
        if self._plugins_added:
            return
        self._plugins_added = True
        from dcbench.registry import get_registry

        for problem in get_registry().add_commands(self):
            click.echo(f"warning: {problem}", err=True)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._add_plugin_commands()
        return super().get_command(ctx, cmd_name)


@click.group(cls=_PluginCommands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dcbench")
def cli() -> None:
    """Benchmark unsupervised content-transformation disentanglement methods."""


@cli.command("list")
@click.option("--kind", type=click.Choice(["method", "dataset", "metric", "executor"]), help="Only this kind.")
def list_command(kind: str | None) -> None:
    """List registered methods, datasets, metrics and sweep executors with their source plugin and version."""
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
@click.option("--checkpoint-every", "checkpoint_every", default=60.0, show_default=True, type=click.FloatRange(min=0),
              metavar="SECONDS", help="Save the training state (for --resume) at most this often; 0: every epoch.")
@click.option("--resume", is_flag=True, help="Finish this cell: continue its latest unfinished run (killed, "
              "interrupted or failed) from its last epoch checkpoint, or do nothing if it has a finished run.")
def run_command(method: str, dataset: str, metrics: tuple[str, ...], seed: int, preset: str,
                epochs: int | None, device: str, assignments: tuple[str, ...], data_root: Path | None,
                runs_dir: Path, leaderboard_dir: Path, no_leaderboard: bool, checkpoint_every: float,
                resume: bool) -> None:
    """Train METHOD on DATASET, score it, record the run and update the leaderboard."""
    from dcbench.config import RunSpec, parse_assignments
    from dcbench.interrupts import as_error, sigterm_as_interrupt
    from dcbench.registry import get_registry
    from dcbench.runner import execute

    spec = RunSpec(method=method, dataset=dataset, metrics=list(metrics), seed=seed, preset=preset,
                   epochs=epochs, device=device, overrides=parse_assignments(assignments),
                   data_root=data_root, runs_dir=runs_dir,
                   leaderboard_dir=None if no_leaderboard else leaderboard_dir, checkpoint_every_s=checkpoint_every)
    registry = get_registry()
    _report_problems(registry)
    try:
        with sigterm_as_interrupt():
            result = execute(spec, registry, resume=resume)
    except KeyboardInterrupt as exc:  # exits 130 (Ctrl-C) or 143 (SIGTERM)
        raise as_error(exc, "the run folder records how far it got, and the same command with --resume "
                       "continues it") from None
    if result.already_finished:
        click.echo(f"this cell already has a finished run, nothing to do: {result.run_dir}")
        return
    if result.resumed:
        click.echo(f"continued the unfinished run {result.run_dir}")
    click.echo(f"run folder: {result.run_dir}")
    click.echo("metrics: " + ", ".join(f"{k} = {v:.4f}" for k, v in result.metrics.items()))
    if result.leaderboard is not None:
        click.echo(f"leaderboard: {result.leaderboard}\n")
        click.echo(result.leaderboard.read_text(encoding="utf-8"))


@cli.command("sweep")
@click.option("--method", "-m", "methods", required=True, multiple=True,
              help="Method names, comma-separated or repeated.")
@click.option("--dataset", "-d", "datasets", required=True, multiple=True,
              help="Dataset names, comma-separated or repeated.")
@click.option("--seeds", default="0", show_default=True, help="Seeds: 0-4, 0,3,7-9 ...")
@click.option("--metric", "metrics", multiple=True, help="Metric names (default: each dataset's).")
@click.option("--preset", default="quick", show_default=True, type=click.Choice(["quick", "paper"]))
@click.option("--epochs", type=int, help="Override the preset's number of epochs.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help="As for `dcbench run`, for every cell.")
@click.option("--data-root", type=click.Path(path_type=Path), help="Where the datasets' files are.")
@click.option("--runs-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--leaderboard-dir", type=click.Path(path_type=Path), default=Path("leaderboards"), show_default=True)
@click.option("--no-leaderboard", is_flag=True, help="Do not add the runs to the leaderboards.")
@click.option("--executor", default="local", show_default=True, help="Where cells run (see `dcbench list`).")
@click.option("--executor-option", "executor_options", multiple=True, metavar="KEY=VALUE",
              help="Executor setting, e.g. partition=gpu, time=600, gpus=1 for slurm.")
@click.option("--jobs", "-j", default=1, show_default=True, type=int, help="Cells at a time.")
@click.option("--retries", default=1, show_default=True, type=click.IntRange(min=0),
              help="Retries of a failed cell (continuing its run folder).")
@click.option("--overwrite", default="only-missing", show_default=True,
              type=click.Choice(["only-missing", "always", "never"]),
              help="What to do with cells that have records: only-missing skips finished cells and continues "
                   "unfinished ones; always reruns all; never leaves any cell with a record alone.")
@click.option("--checkpoint-every", "checkpoint_every", default=60.0, show_default=True, type=click.FloatRange(min=0),
              metavar="SECONDS", help="Save the training state (for --resume) at most this often; 0: every epoch.")
@click.option("--dry-run", is_flag=True, help="Print what each cell would do and stop.")
def sweep_command(methods: tuple[str, ...], datasets: tuple[str, ...], seeds: str, metrics: tuple[str, ...],
                  preset: str, epochs: int | None, device: str, assignments: tuple[str, ...], data_root: Path | None,
                  runs_dir: Path, leaderboard_dir: Path, no_leaderboard: bool, executor: str,
                  executor_options: tuple[str, ...], jobs: int, retries: int, overwrite: str, checkpoint_every: float,
                  dry_run: bool) -> None:
    """Run every METHOD x DATASET x SEED cell, skipping finished cells, continuing unfinished
    ones, retrying failures; one progress bar over cells and a summary table at the end."""
    import time

    from dcbench import sweep
    from dcbench.config import RunSpec, parse_assignments
    from dcbench.registry import get_registry

    registry = get_registry()
    _report_problems(registry)
    template = RunSpec(method="", dataset="", metrics=sweep.split_names(metrics), preset=preset, epochs=epochs,
                       device=device, overrides=parse_assignments(assignments), data_root=data_root,
                       runs_dir=runs_dir, leaderboard_dir=None if no_leaderboard else leaderboard_dir,
                       checkpoint_every_s=checkpoint_every)
    executor_cls = registry.load("executor", executor)
    cells = sweep.plan_cells(sweep.split_names(methods), sweep.split_names(datasets), sweep.parse_seeds(seeds),
                             template, overwrite, registry)
    options = parse_assignments(executor_options)
    if dry_run:
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:  # checks the executor's options, writes nothing
            description = executor_cls(jobs, Path(scratch), options).describe()
        click.echo(f"{len(cells)} cells; {description}\n")
        click.echo(sweep.plan_table(cells))
        return
    sweep.check_not_all_refused(cells)  # this, --jobs and the executor's options: before the sweep folder exists
    folder = sweep.new_sweep_folder(runs_dir, create=False)
    runner = executor_cls(jobs, folder, options)
    folder.mkdir(parents=True)
    header = {"command": sys.argv, "executor": runner.describe(), "overwrite": overwrite, "retries": retries}
    todo = sum(c.action in ("run", "continue") for c in cells)
    click.echo(f"sweep {folder}: {len(cells)} cells, {todo} to run; {runner.describe()}; logs in {folder / 'logs'}",
               err=True)
    for cell in cells:
        if cell.action == "refuse":
            click.echo(f"refused: {cell.label}: {cell.reason}", err=True)
    started = time.perf_counter()
    from dcbench.interrupts import as_error, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # stopping the sweep stops its cells, whose records say "interrupted"
            sweep.run_cells(cells, runner, folder, retries)
    except KeyboardInterrupt as exc:  # exits 130 (Ctrl-C) or 143 (SIGTERM)
        raise as_error(exc, "the same command continues the unfinished cells") from None
    finally:
        header["seconds"] = round(time.perf_counter() - started, 1)
        sweep.write_summary(folder, cells, header)
    click.echo(sweep.summary_table(cells))
    bad = [c for c in cells if c.status in ("failed", "refused")]
    click.echo(f"\nsummary: {folder / 'summary.md'}", err=True)
    if bad:
        raise DcbenchError(f"{len(bad)} of {len(cells)} cells failed or were refused; see the summary above "
                           f"and the logs in {folder / 'logs'}")


def reported_numbers(dataset: str) -> tuple[Mapping[str, Mapping[str, float]], str]:
    """The paper's numbers a board shows as *reported* rows, and their source, for a registered
    dataset; none for a board whose dataset is not registered here. Every re-render passes them
    (a render without them drops those rows from the page)."""
    from dcbench.registry import get_registry  # lazily: `dcbench --help` imports no plugins

    registry = get_registry()
    if dataset not in registry.names("dataset"):
        return {}, ""
    dataset_cls = registry.load("dataset", dataset)
    return dataset_cls.reported, dataset_cls.reported_source


@cli.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--load-data", is_flag=True, help="Name the classes by loading the run's dataset again (runs whose "
              "codes.npz has no names); without it such runs show label ids.")
@click.option("--leaderboard-dir", type=click.Path(path_type=Path), help="Also link the report from this board "
              "(seed 0: the run's row is appended again with its files published; its metrics are unchanged).")
def report_command(run_dir: Path, load_data: bool, leaderboard_dir: Path | None) -> None:
    """(Re)write the classification report of the finished run RUN_DIR from its codes.npz (no retraining)."""
    from dcbench.classification_report import rewrite, run_dataset

    click.echo(rewrite(run_dir, load_data))
    if leaderboard_dir is not None:
        from dcbench import leaderboard

        dataset = run_dataset(run_dir)
        board = leaderboard.republish(leaderboard_dir, dataset, run_dir, *reported_numbers(dataset))
        click.echo(f"updated {board}" if board else f"{leaderboard_dir}: no seed-0 row of {run_dir}; unchanged")


@cli.command("score")
@click.argument("run_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--metric", "metrics", multiple=True, required=True, help="Metric name; repeat for several.")
@click.option("--leaderboard", "board", metavar="DATASET", help="Score the run of every latest row of this board.")
@click.option("--leaderboard-dir", type=click.Path(path_type=Path), default=Path("leaderboards"), show_default=True)
@click.option("--device", help="auto, cpu or cuda.  [default: the run's own]")
def score_command(run_dirs: tuple[Path, ...], metrics: tuple[str, ...], board: str | None, leaderboard_dir: Path,
                  device: str | None) -> None:
    """Score finished runs RUN_DIRS (or a board's runs) again from their codes and checkpoint, without
    retraining; merges into metrics.json, notes it in provenance.json and updates their leaderboard rows."""
    from dcbench.registry import get_registry
    from dcbench.rescore import score

    registry = get_registry()
    _report_problems(registry)
    score(list(run_dirs), list(metrics), board, leaderboard_dir, registry, device, echo=click.echo)


@cli.command("calibrate")
@click.option("--dataset", "-d", required=True, help="Dataset name (see `dcbench list`).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Seeds: 0-4, 0,3,7-9 ...")
@click.option("--set", "assignments", multiple=True, metavar="data.OPTION=VALUE", help="As for `dcbench run`.")
@click.option("--data-root", type=click.Path(path_type=Path), help="Where the dataset's files are.")
@click.option("--runs-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--leaderboard-dir", type=click.Path(path_type=Path), default=Path("leaderboards"), show_default=True)
def calibrate_command(dataset: str, seeds: str, assignments: tuple[str, ...], data_root: Path | None, runs_dir: Path,
                      leaderboard_dir: Path) -> None:
    """Add a dataset's reference rows to its leaderboard: labels as codes (ceiling) and shuffled labels
    (floor), scored by its ARI and AUC-FSC metrics on its data (docs/calibration.md)."""
    from dcbench.calibration import run_calibration

    board = run_calibration(dataset, seeds, assignments, data_root, runs_dir, leaderboard_dir,
                            echo=lambda line: click.echo(line, err=True))
    if board is not None:  # None: the page could not be re-rendered (a warning said why)
        click.echo(board.read_text(encoding="utf-8"))


@cli.command("leaderboard")
@click.argument("dataset", required=False)
@click.option("--leaderboard-dir", type=click.Path(path_type=Path), default=Path("leaderboards"),
              show_default=True)
def leaderboard_command(dataset: str | None, leaderboard_dir: Path) -> None:
    """Re-render and print the leaderboard of DATASET (or list the leaderboards there)."""
    from dcbench import leaderboard
    from dcbench.errors import unknown_name_message

    available = sorted(p.stem for p in Path(leaderboard_dir).glob("*.jsonl"))
    if dataset is None:
        click.echo("\n".join(available) if available else f"no leaderboards in {leaderboard_dir} yet")
        return
    if dataset not in available:
        raise DcbenchError(unknown_name_message("leaderboard", dataset, available))
    path = leaderboard.render(leaderboard_dir, dataset, *reported_numbers(dataset))
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
@click.option("--dry-run", is_flag=True, help="Print the runs it would do (and programs they would start) and stop.")
@click.option("--allow-external", is_flag=True, help="Let the runs start the programs outside dcbench that the rows' "
              "settings name (e.g. hydra's exe); without it such rows are refused. See --dry-run.")
def reproduce_command(dataset: str, presets: tuple[str, ...], methods: tuple[str, ...], leaderboard_dir: Path,
                      into: Path, runs_dir: Path, device: str, data_root: Path | None, dry_run: bool,
                      allow_external: bool) -> None:
    """Rerun every row of DATASET's leaderboard with its recorded settings (method, seed, preset,
    epochs, --set overrides, metrics) and write the new rows to a separate leaderboard."""
    from dcbench import reproduce
    from dcbench.interrupts import sigterm_as_interrupt
    from dcbench.registry import get_registry
    from dcbench.runner import execute

    cells = reproduce.load_cells(leaderboard_dir, dataset, list(presets), list(methods))
    click.echo(f"{len(cells)} runs to reproduce from {leaderboard_dir / (dataset + '.jsonl')}", err=True)
    registry = get_registry()
    _report_problems(registry)
    planned = reproduce.plan_runs(cells, runs_dir, into, device, data_root, registry)  # every row, before any runs
    if dry_run:
        click.echo("\n".join(reproduce.dry_run_lines(planned)))
        return
    reproduce.check_external(planned, allow_external)
    board = None
    with sigterm_as_interrupt():
        for number, run in enumerate(planned, 1):
            click.echo(f"[{number}/{len(planned)}] {reproduce.command_line(run.cell)}", err=True)
            board = execute(run.spec, registry).leaderboard
    if board is not None:
        click.echo(board.read_text(encoding="utf-8"))


@cli.group("data")
def data_group() -> None:
    """Prepare datasets that cannot be downloaded at run time."""
    # Empty here: dataset plugins add their subcommands (register_commands), e.g. import-mnist.


def main() -> None:
    """Entry point: failures become one line on stderr and a non-zero exit (dcbench.exits)."""
    try:
        cli.main(standalone_mode=False)
    except (Exception, KeyboardInterrupt) as exc:
        sys.exit(exits.report(exc))


if __name__ == "__main__":
    main()
