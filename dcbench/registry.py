"""The plugin registry: which methods, datasets, metrics and executors exist, and who supplied each.

Built-ins and third-party plugins go through the same pluggy hooks. Third-party packages are
found through the entry-point group "dcbench" and loaded one by one, so a plugin that fails
to import is reported and skipped instead of stopping dcbench: whatever it raises, SystemExit
included (`sys.exit()` at import), except KeyboardInterrupt, which still stops dcbench (Ctrl-C,
or SIGTERM through dcbench.interrupts: the user asked to stop). Registered names become folder
and file names, so names with path separators, `..` or no visible characters are refused. The
environment variable DCBENCH_PLUGINS, when set, is an allow-list of entry-point names (empty =
built-ins only). The same plugins may add subcommands to the command line (hook register_commands,
`Registry.add_commands`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pluggy

from dcbench import __version__, hookspecs
from dcbench.errors import PluginError, UnknownNameError, unknown_name_message

if TYPE_CHECKING:
    import click

ENTRY_POINT_GROUP = "dcbench"
ALLOW_ENV = "DCBENCH_PLUGINS"
KINDS = ("method", "dataset", "metric", "executor")
HOOKS = {"method": "register_methods", "dataset": "register_datasets", "metric": "register_metrics",
         "executor": "register_executors"}


@dataclass
class Entry:
    """One registered item; `target` is the object or a lazy "module:attr" string."""

    kind: str
    name: str
    target: Any
    description: str
    plugin: str
    version: str
    _loaded: Any = field(default=None, repr=False)

    def load(self) -> Any:
        """The registered object, importing it on first use; checked to be a subclass of its
        kind's base class and to carry the registered name (PluginError, one line, if not)."""
        if self._loaded is None:
            loaded = self._import() if isinstance(self.target, str) else self.target
            self._check(loaded)
            self._loaded = loaded
        return self._loaded

    def _check(self, loaded: Any) -> None:
        base = _base_class(self.kind)
        where = f"{self.kind} '{self.name}' from plugin '{self.plugin}'"
        if not (isinstance(loaded, type) and issubclass(loaded, base)):
            raise PluginError(f"{where} is {loaded!r}, not a subclass of {base.__module__}.{base.__qualname__}; "
                              f"register the class (see docs/plugins.md)")
        own = getattr(loaded, "name", None)
        if own is None:  # one name, given once: the registered one
            loaded.name = self.name
        elif own != self.name:  # the runner and the records would disagree on what ran
            raise PluginError(f"{where} is registered as '{self.name}' but its class says name = '{own}'; "
                              "make the two the same")

    def _import(self) -> Any:
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
            return getattr(module, attr) if attr else module
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a broken plugin (even one calling sys.exit) is reported, not fatal
            raise PluginError(
                f"{self.kind} '{self.name}' from plugin '{self.plugin}' failed to load "
                f"({self.target}): {type(exc).__name__}: {exc}"
            ) from exc


class Registry:
    """All registered items by kind and name, plus the problems met while loading plugins."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], Entry] = {}
        self._conflicts: dict[tuple[str, str], list[Entry]] = {}
        self.problems: list[str] = []
        self.plugins: dict[str, str] = {}  # plugin name -> version
        self.hooks: Any = None  # the plugin manager's hook relay, kept for the command hook

    def add(self, entry: Entry) -> None:
        if entry.kind not in KINDS:
            raise PluginError(f"unknown kind '{entry.kind}'")
        key = (entry.kind, entry.name)
        if key in self._entries:
            first = self._entries[key]
            self._conflicts.setdefault(key, [first]).append(entry)
            self.problems.append(self._conflict_message(key))
            return
        self._entries[key] = entry

    def _conflict_message(self, key: tuple[str, str]) -> str:
        sources = " and ".join(f"plugin '{e.plugin}' ({e.version})" for e in self._conflicts[key])
        return (
            f"{key[0]} name '{key[1]}' is claimed by {sources}; uninstall one, or choose plugins "
            f"with {ALLOW_ENV}=name1,name2"
        )

    def entries(self, kind: str | None = None) -> list[Entry]:
        items = [e for e in self._entries.values() if kind is None or e.kind == kind]
        return sorted(items, key=lambda e: (KINDS.index(e.kind), e.name))

    def names(self, kind: str) -> list[str]:
        return [e.name for e in self.entries(kind)]

    def get(self, kind: str, name: str) -> Entry:
        key = (kind, name)
        if key in self._conflicts:
            raise PluginError(self._conflict_message(key))
        if key not in self._entries:
            raise UnknownNameError(unknown_name_message(kind, name, self.names(kind)))
        return self._entries[key]

    def load(self, kind: str, name: str) -> Any:
        return self.get(kind, name).load()

    def add_commands(self, cli: click.Group) -> list[str]:
        """Let every plugin add its subcommands to `cli` (hook register_commands), built-ins first; returns
        the problems, one line each. A plugin that raises keeps what it added before; one that replaces an
        existing command gets it back, as a name claimed twice must not silently change `dcbench run`."""
        problems: list[str] = []
        for impl in self.hooks.register_commands.get_hookimpls() if self.hooks is not None else []:
            before = _command_tables(cli)
            try:
                impl.function(cli=cli)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # as for register_*: a broken plugin must not end dcbench
                problems.append(f"plugin '{impl.plugin_name}' failed while adding commands: "
                                f"{type(exc).__name__}: {exc}")
            for path, (group, table) in before.items():
                for name, command in table.items():
                    if group.commands.get(name) is not command:
                        group.commands[name] = command
                        problems.append(f"plugin '{impl.plugin_name}' tried to replace the command "
                                        f"'dcbench {path}{name}'; the existing one was kept")
        return problems


def _base_class(kind: str) -> type:
    """The class every plugin of `kind` must subclass (imported on first use: listing plugins
    needs neither module)."""
    from dcbench import api, executors

    return {"method": api.Method, "dataset": api.Dataset, "metric": api.Metric, "executor": executors.Executor}[kind]


def _command_tables(cli: click.Group) -> dict[str, tuple[click.Group, dict[str, click.Command]]]:
    """The commands of `cli` and of its groups one level down, by path ('', 'data ')."""
    import click

    tables = {"": (cli, dict(cli.commands))}
    for name, command in cli.commands.items():
        if isinstance(command, click.Group):
            tables[f"{name} "] = (command, dict(command.commands))
    return tables


def _allowed_names() -> set[str] | None:
    raw = os.environ.get(ALLOW_ENV)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _load_entry_points(pm: pluggy.PluginManager, registry: Registry) -> dict[str, str]:
    """Register each installed entry point on its own; return plugin name -> version."""
    allowed = _allowed_names()
    versions: dict[str, str] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        dist = getattr(ep, "dist", None)
        version = dist.version if dist is not None else "?"
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: a plugin must not end dcbench by importing it
            registry.problems.append(
                f"plugin '{ep.name}' ({version}) failed to import and was skipped: {type(exc).__name__}: {exc}"
            )
            continue
        versions[ep.name] = version
    return versions


def build_registry(extra_plugins: Iterable[Any] = (), entry_points: bool = True) -> Registry:
    """Load the built-ins, installed entry points and any in-process plugin objects."""
    from dcbench import builtin_plugins

    registry = Registry()
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin_plugins, name=builtin_plugins.PLUGIN_NAME)
    versions = {builtin_plugins.PLUGIN_NAME: __version__}
    if entry_points:
        versions.update(_load_entry_points(pm, registry))
    for plugin in extra_plugins:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        pm.register(plugin, name=name)
        versions[pm.get_name(plugin)] = "in-process"
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        registry.problems.append(f"a plugin implements a hook dcbench does not have: {exc}")
    registry.plugins = versions
    registry.hooks = pm.hook
    for kind, hook_name in HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            _call_register_hook(registry, kind, impl, versions.get(impl.plugin_name, "?"))
    return registry


def _call_register_hook(registry: Registry, kind: str, impl: Any, version: str) -> None:
    """Run one plugin's register_* hook, attributing what it registers to that plugin."""

    def register(name: str, target: Any, description: str = "") -> None:
        problem = name_problem(name)
        if problem:  # refuse this one name; the plugin's other entries stay
            registry.problems.append(f"plugin '{impl.plugin_name}' registered a {kind} {problem}; it was skipped")
            return
        registry.add(Entry(kind, name, target, str(description).strip(), impl.plugin_name, version))

    try:
        impl.function(register=register)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        registry.problems.append(
            f"plugin '{impl.plugin_name}' failed while registering {kind}s and was skipped: "
            f"{type(exc).__name__}: {exc}"
        )


def name_problem(name: object) -> str | None:
    """Why `name` cannot be a registered name (None if it can). Names become parts of paths
    (runs/<dataset>/<method>/, leaderboards/<dataset>.md, figure files), so none may leave its
    folder or be invisible."""
    if not isinstance(name, str) or not name.strip():
        return f"without a name ({name!r})"
    if "/" in name or "\\" in name or ".." in name or name == ".":
        return f"named {name!r}, which holds a path separator or '..'"
    if name != name.strip() or not name.isprintable():
        return f"named {name!r}, which has surrounding spaces or control characters"
    return None


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _default
    if _default is None:
        _default = build_registry()
    return _default
