"""dcbench's own plugins, registered through the same hooks as third-party ones.

The list lives in the top-level registry.toml as lazy "module:attr" targets, so listing
the registry imports no torch.
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import dcbench_plugins
from dcbench.errors import PluginError
from dcbench.hookspecs import Register, hookimpl

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
