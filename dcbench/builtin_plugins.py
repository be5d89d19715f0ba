"""dcbench's own plugins, registered through the same hooks as third-party ones.

The list lives in the top-level registry.toml as lazy "module:attr" targets, so listing
the registry imports no torch. Its [commands] section names the built-in subcommands of
`dcbench` (simulate, data import-mnist, hydra setup): their modules are imported whenever the
command line is built, so they import nothing heavy at the top.
"""

from __future__ import annotations

import importlib
import tomllib
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dcbench_plugins
from dcbench.errors import PluginError
from dcbench.hookspecs import Register, hookimpl

if TYPE_CHECKING:
    import click

PLUGIN_NAME = "dcbench"
# plugins/registry.toml links to the top-level registry.toml (and is a copy inside a wheel).
REGISTRY_FILE = Path(dcbench_plugins.__file__).resolve().parent / "registry.toml"


@cache
def _table() -> dict[str, Any]:
    try:
        return tomllib.loads(REGISTRY_FILE.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PluginError(
            f"built-in registry {REGISTRY_FILE} is missing; reinstall dcbench from its checkout "
            "with `pip install -e .`"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise PluginError(f"built-in registry {REGISTRY_FILE} is not valid TOML: {exc}") from exc


def _register_section(section: str, register: Register) -> None:
    for name, item in _table().get(section, {}).items():
        register(name, item["target"], description=item.get("description", ""))


@hookimpl
def register_methods(register: Register) -> None:
    _register_section("methods", register)


@hookimpl
def register_datasets(register: Register) -> None:
    _register_section("datasets", register)


@hookimpl
def register_metrics(register: Register) -> None:
    _register_section("metrics", register)


@hookimpl
def register_executors(register: Register) -> None:
    _register_section("executors", register)


@hookimpl
def register_commands(cli: click.Group) -> None:
    # One command that fails to import must not take the others with it: add the rest, then raise.
    failures = []
    for name, item in _table().get("commands", {}).items():
        module_name, _, attr = item["target"].partition(":")
        try:
            command = getattr(importlib.import_module(module_name), attr)
            (cli.commands[item["group"]] if "group" in item else cli).add_command(command, name)
        except Exception as exc:
            failures.append(f"command '{name}' ({item['target']}): {type(exc).__name__}: {exc}")
    if failures:
        raise PluginError("; ".join(failures))
