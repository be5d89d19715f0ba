"""Test isolation: no installed third-party plugin leaks into tests, no real cache is touched."""

from __future__ import annotations

import pytest

import dcbench.registry


@pytest.fixture(autouse=True)
def isolated_dcbench(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Built-ins only, unless a test sets DCBENCH_PLUGINS itself.
    monkeypatch.setenv("DCBENCH_PLUGINS", "")
    monkeypatch.setenv("DCBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setattr(dcbench.registry, "_default", None)
