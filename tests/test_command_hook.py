"""The command hook (register_commands): built-in subcommands come from their plugins, a third-party
plugin adds its own the same way, and a broken one costs a warning, not the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from plugin_helpers import dcbench_env, run_dcbench, write_distribution

import dcbench
from dcbench import builtin_plugins
from dcbench.cli import cli
from dcbench.errors import PluginError
from dcbench.registry import build_registry

MNIST_COMMANDS = "dcbench_plugins.datasets.mnist_commands"

HELLO_PLUGIN = """
import click

import dcbench


@click.command("hello")
@click.option("--name", default="world", help="Who to greet.")
def hello(name):
    \"\"\"Say hello.\"\"\"
    click.echo(f"hello {name}")


@click.command("fetch-toy")
def fetch_toy():
    \"\"\"Fetch the toy dataset.\"\"\"
    click.echo("fetched")


@dcbench.hookimpl
def register_commands(cli):
    cli.add_command(hello)
    cli.commands["data"].add_command(fetch_toy)
"""

BROKEN_PLUGIN = """
import dcbench


@dcbench.hookimpl
def register_commands(cli):
    raise RuntimeError("no commands today")
"""


def test_builtin_commands_come_from_their_plugins() -> None:
    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0 and "simulate" in top.output and "hydra" in top.output and "data" in top.output
    assert cli.commands["simulate"].callback.__module__ == "dcbench_plugins.subtomo.commands"
    assert cli.commands["data"].commands["import-mnist"].callback.__module__ == MNIST_COMMANDS
    assert "setup" in cli.commands["hydra"].commands
    missing = runner.invoke(cli, ["simulate"])  # click's own usage error, as before
    assert missing.exit_code == 2 and "Missing argument 'MANIFEST'" in missing.output


def test_help_lists_plugin_commands_without_heavy_imports(tmp_path: Path) -> None:
    code = ("import sys; from dcbench.cli import cli; cli.main(['--help'], standalone_mode=False); "
            "print(sorted(m for m in ('torch', 'sklearn', 'scipy', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert "simulate" in out.stdout and out.stdout.strip().splitlines()[-1] == "[]"


def test_third_party_plugin_adds_commands_through_its_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    write_distribution(site, "dcbench-hello", "0.3", "hello", "dcbench_hello_plugin", HELLO_PLUGIN)
    env = dcbench_env(site)
    said = run_dcbench(["hello", "--name", "dcbench"], tmp_path, env)
    assert said.returncode == 0 and said.stdout == "hello dcbench\n" and said.stderr == ""
    fetched = run_dcbench(["data", "fetch-toy"], tmp_path, env)
    assert fetched.returncode == 0 and fetched.stdout == "fetched\n"
    listed = run_dcbench(["--help"], tmp_path, env)
    assert "hello" in listed.stdout and "simulate" in listed.stdout
    # The allow-list switches its commands off with the plugin.
    hidden = run_dcbench(["hello"], tmp_path, dcbench_env(site, plugins=""))
    assert hidden.returncode != 0 and "No such command 'hello'" in hidden.stderr


def test_plugin_whose_command_hook_raises_is_one_warning(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    write_distribution(site, "dcbench-broken-cmds", "1.0", "broken-cmds", "dcbench_broken_cmds", BROKEN_PLUGIN)
    result = run_dcbench(["data", "--help"], tmp_path, dcbench_env(site))
    assert result.returncode == 0 and "import-mnist" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: plugin 'broken-cmds' failed while adding commands: RuntimeError: no commands today"]
    assert result.stderr.count("\n") == 1


class _Replacer:
    __name__ = "replacer"

    @dcbench.hookimpl
    def register_commands(self, cli):
        cli.add_command(click.Command("run", callback=lambda: None))
        cli.commands["data"].add_command(click.Command("import-mnist", callback=lambda: None))
        cli.add_command(click.Command("extra", callback=lambda: None))


def test_a_plugin_cannot_replace_existing_commands() -> None:
    group = click.Group("dcbench")
    group.add_command(run := click.Command("run"))
    group.add_command(click.Group("data"))
    problems = build_registry(extra_plugins=[_Replacer()], entry_points=False).add_commands(group)
    assert group.commands["run"] is run and "extra" in group.commands
    assert group.commands["data"].commands["import-mnist"].callback.__module__ == MNIST_COMMANDS
    assert problems == ["plugin 'replacer' tried to replace the command 'dcbench run'; the existing one was kept",
                        "plugin 'replacer' tried to replace the command 'dcbench data import-mnist'; "
                        "the existing one was kept"]


def test_a_builtin_command_that_fails_to_import_leaves_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    table = {"commands": {"ghost": {"target": "no_such_module_xyz:command"},
                          "simulate": {"target": "dcbench_plugins.subtomo.commands:simulate_command"}}}
    monkeypatch.setattr(builtin_plugins, "_table", lambda: table)
    group = click.Group("dcbench")
    with pytest.raises(PluginError, match=r"command 'ghost' \(no_such_module_xyz:command\): ModuleNotFoundError"):
        builtin_plugins.register_commands(cli=group)
    assert list(group.commands) == ["simulate"]
