"""The plugin registry: built-ins, lazy loading, third-party entry points, broken plugins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_helpers import dcbench_env, install_example_plugin, run_dcbench, write_distribution

import dcbench
from dcbench.errors import PluginError, UnknownNameError
from dcbench.registry import build_registry


def test_builtins_are_registered_lazily_with_their_source() -> None:
    registry = build_registry()
    assert {"dualcontrast", "dualcontrast-no-con-c", "dualcontrast-no-con-z"} <= set(registry.names("method"))
    assert {"digits", "mnist", "linemod"} <= set(registry.names("dataset"))
    entry = registry.get("method", "dualcontrast")
    assert entry.plugin == "dcbench" and entry.version == dcbench.__version__
    assert isinstance(entry.target, str) and entry.description


def test_list_and_help_import_no_torch(tmp_path: Path) -> None:
    code = ("import sys; from dcbench.cli import cli; "
            "[cli.main(a, standalone_mode=False) for a in (['list'], ['--help'], ['run', '--help'])]; "
            "print(sorted(m for m in ('torch', 'sklearn', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_unknown_name_suggests_close_matches() -> None:
    registry = build_registry()
    with pytest.raises(UnknownNameError) as err:
        registry.get("method", "dualcontrst")
    message = str(err.value)
    assert "did you mean 'dualcontrast'" in message and "available: " in message and "\n" not in message


class _Clash:
    __name__ = "clash-plugin"

    @dcbench.hookimpl
    def register_methods(self, register):
        register("dualcontrast", "somewhere:Else", description="a second claim")


def test_name_claimed_twice_is_an_error_naming_both_sources() -> None:
    registry = build_registry(extra_plugins=[_Clash()])
    with pytest.raises(PluginError) as err:
        registry.get("method", "dualcontrast")
    assert "'dcbench'" in str(err.value) and "'clash-plugin'" in str(err.value)
    assert any("claimed by" in p for p in registry.problems)
    # Other names are unaffected.
    assert registry.get("dataset", "digits").name == "digits"


class _RaisesWhileRegistering:
    __name__ = "raising-plugin"

    @dcbench.hookimpl
    def register_metrics(self, register):
        raise RuntimeError("boom")


def test_plugin_that_raises_while_registering_is_skipped() -> None:
    registry = build_registry(extra_plugins=[_RaisesWhileRegistering()])
    assert any("raising-plugin" in p and "boom" in p for p in registry.problems)
    assert "dscore" in registry.names("metric")


def test_lazy_target_that_fails_to_import_names_the_plugin() -> None:
    class Broken:
        __name__ = "broken-target"

        @dcbench.hookimpl
        def register_methods(self, register):
            register("ghost", "no_such_module_xyz:Ghost")

    registry = build_registry(extra_plugins=[Broken()])
    with pytest.raises(PluginError, match="'ghost' from plugin 'broken-target' failed to load"):
        registry.load("method", "ghost")


def test_third_party_plugin_installed_from_its_distribution_lists_and_runs(tmp_path: Path) -> None:
    """Build and install the documented example plugin, then use it through the real CLI."""
    site = install_example_plugin(tmp_path / "site")
    env = dcbench_env(site)
    listed = run_dcbench(["list", "--kind", "method"], tmp_path, env)
    assert listed.returncode == 0, listed.stderr
    line = next(row for row in listed.stdout.splitlines() if "pca-split" in row)
    assert "pca" in line.split() and "0.2.0" in line.split()

    run = run_dcbench(["run", "-m", "pca-split", "-d", "digits", "--seed", "3", "--runs-dir", "runs",
                       "--leaderboard-dir", "boards"], tmp_path, env)
    assert run.returncode == 0, run.stderr
    row = json.loads((tmp_path / "boards" / "digits.jsonl").read_text().splitlines()[-1])
    assert row["method"] == "pca-split" and row["seed"] == 3
    assert 0.5 < row["metrics"]["D(c|c)"] <= 1.0
    assert "pca-split" in (tmp_path / "boards" / "digits.md").read_text()
    assert list((tmp_path / "runs" / "digits" / "pca-split").glob("*/figures/transfer_grid.png"))

    # The allow-list can switch the plugin off.
    hidden = run_dcbench(["list", "--kind", "method"], tmp_path, dcbench_env(site, plugins=""))
    assert "pca-split" not in hidden.stdout


def test_plugin_that_fails_to_import_is_reported_and_skipped(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    write_distribution(site, "dcbench-broken", "1.0", "broken", "dcbench_broken_plugin",
                       "raise ImportError('missing dependency frobnicate')\n")
    result = run_dcbench(["list"], tmp_path, dcbench_env(site))
    assert result.returncode == 0
    assert "plugin 'broken' (1.0) failed to import" in result.stderr and "frobnicate" in result.stderr
    assert "dualcontrast" in result.stdout


class _WrongKinds:
    """Registers a metric class as a method, a function as a dataset, and a method under a name
    its class does not carry."""

    __name__ = "wrong-kinds"

    @dcbench.hookimpl
    def register_methods(self, register):
        register("metric-as-method", "dcbench_plugins.metrics.ari:ARI")
        register("renamed", "dcbench_plugins.dualcontrast.method:DualContrast")

    @dcbench.hookimpl
    def register_datasets(self, register):
        register("a-function", "dcbench.registry:build_registry")


@pytest.mark.parametrize("kind, name, expected", [
    ("method", "metric-as-method", "not a subclass of dcbench.api.Method"),
    ("dataset", "a-function", "not a subclass of dcbench.api.Dataset"),
    ("method", "renamed", "registered as 'renamed' but its class says name = 'dualcontrast'; make the two the same"),
])
def test_a_loaded_entry_of_the_wrong_type_or_name_is_one_line_naming_the_plugin(kind: str, name: str,
                                                                                 expected: str) -> None:
    registry = build_registry(extra_plugins=[_WrongKinds()])
    with pytest.raises(PluginError) as caught:
        registry.load(kind, name)
    message = str(caught.value)
    assert expected in message and "'wrong-kinds'" in message and "\n" not in message


def test_a_class_without_a_name_takes_its_registered_one() -> None:
    from dcbench.api import Metric

    class Nameless(Metric):
        columns = {"x": "max"}  # noqa: RUF012

        def compute(self, inputs):
            return {"x": 0.0}

    class Plugin:
        __name__ = "nameless-plugin"

        @dcbench.hookimpl
        def register_metrics(self, register):
            register("nameless", Nameless)

    assert build_registry(extra_plugins=[Plugin()]).load("metric", "nameless").name == "nameless"
