"""Build throwaway distributions that register dcbench plugins through entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "examples" / "dcbench-pca"


def install_example_plugin(target: Path) -> Path:
    """pip-install the documented example plugin (docs/examples/dcbench-pca) into `target`."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE)],
        check=True, capture_output=True, text=True,
    )
    return target


def write_distribution(site: Path, dist: str, version: str, entry_name: str, module: str, source: str) -> None:
    """A minimal installed distribution: a module plus a .dist-info with an entry point."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    # The folder name carries the normalised name (dashes as underscores), as pip writes it:
    # importlib.metadata would read "dcbench-broken-0.1" as distribution "dcbench", version "broken-0.1".
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[dcbench]\n{entry_name} = {module}\n")


def dcbench_env(site: Path | None = None, plugins: str | None = None) -> dict[str, str]:
    """Environment for a `dcbench` subprocess that sees the distributions in `site`."""
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if plugins is None:
        env.pop("DCBENCH_PLUGINS", None)
    else:
        env["DCBENCH_PLUGINS"] = plugins
    return env


def run_dcbench(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcbench.cli", *args], cwd=cwd, env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=600)
