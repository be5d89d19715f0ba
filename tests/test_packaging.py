"""The hand-kept package list in pyproject.toml names every package folder.

The editable install finds any subpackage through the package-dir mapping, so a folder missing
from `[tool.setuptools] packages` still imports in the checkout and only goes missing from a
wheel. This reads the list itself instead of relying on an import.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_folders() -> dict[str, Path]:
    """Dotted name -> folder for every folder holding Python modules under each package-dir root."""
    found: dict[str, Path] = {}
    for top, folder in _setuptools()["package-dir"].items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            relative = path.parent.relative_to(base)
            if "__pycache__" in relative.parts:
                continue
            found[".".join((top, *relative.parts))] = path.parent
    return found


def test_every_package_folder_is_listed_for_packaging() -> None:
    listed = set(_setuptools()["packages"])
    missing = sorted(name for name in _package_folders() if name not in listed)
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_every_package_folder_has_an_init() -> None:
    # A folder of modules without __init__.py is a namespace package, which the list would
    # also have to name and which a plugin's relative imports cannot rely on.
    bare = sorted(name for name, folder in _package_folders().items() if not (folder / "__init__.py").exists())
    assert not bare, f"package folders without __init__.py: {bare}"


def test_every_listed_package_exists() -> None:
    folders = _package_folders()
    stale = sorted(name for name in _setuptools()["packages"] if name not in folders)
    assert not stale, f"listed in pyproject.toml but no such package folder: {stale}"
