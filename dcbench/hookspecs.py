"""The pluggy hooks a dcbench plugin may implement.

Each register_<kind>s hook (methods, datasets, metrics, executors) receives a `register`
callback; the host owns validation, name collisions and provenance. A plugin module looks like:

    import dcbench

    @dcbench.hookimpl
    def register_methods(register):
        register("my-method", "my_package.method:MyMethod", description="what it does")

The second argument is the class itself or a lazy "module:attr" string, which dcbench imports
only when the item is used (so `dcbench list` stays fast). The hook register_commands instead
receives the `dcbench` click group and adds subcommands to the command line itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:  # click is only needed by the command line
    import click

PROJECT = "dcbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    def __call__(self, name: str, target: Any, description: str = "") -> None: ...


@hookspec
def register_methods(register: Register) -> None:
    """Register Method classes: register(name, cls_or_'module:attr', description=...)."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register Dataset classes."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register Metric classes."""


@hookspec
def register_executors(register: Register) -> None:
    """Register sweep Executor classes (dcbench.executors.Executor): where sweep cells run."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands or groups to the `dcbench` command line: cli.add_command(command), or
    cli.commands["data"].add_command(command) for a `dcbench data` subcommand. Called each time the
    command line is built, so the module must import nothing heavy at the top (import torch inside
    the command function). Existing commands cannot be replaced."""
