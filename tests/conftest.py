"""Test isolation: no installed third-party plugin leaks into tests, no real cache or Hydra environment is
touched; tests marked real_hydra run only with --real-hydra."""

from __future__ import annotations

import pytest

import dcbench.registry

REAL_HYDRA_OPTION = "--real-hydra"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(REAL_HYDRA_OPTION, action="store_true",
                     help="also run the tests marked real_hydra, which run Hydra's real `drgnai` (minutes on a CPU; "
                          "build its environment first: dcbench hydra setup --source PATH_OR_URL)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Opt-in: CI and plain runs skip them, with how to enable them, whether or not Hydra is installed.
    if config.getoption(REAL_HYDRA_OPTION):
        return
    skip = pytest.mark.skip(reason=f"runs the real Hydra program (minutes); opt in with `pytest {REAL_HYDRA_OPTION} "
                                   "tests/test_hydra_real.py` after `dcbench hydra setup --source PATH_OR_URL`")
    for item in items:
        if "real_hydra" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def isolated_dcbench(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Built-ins only, unless a test sets DCBENCH_PLUGINS itself.
    monkeypatch.setenv("DCBENCH_PLUGINS", "")
    monkeypatch.setenv("DCBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    # No Hydra environment that `dcbench hydra setup` built on this machine: tests say which drgnai they use.
    monkeypatch.setenv("DCBENCH_HYDRA_HOME", str(tmp_path_factory.mktemp("hydra-home")))
    monkeypatch.setattr(dcbench.registry, "_default", None)
