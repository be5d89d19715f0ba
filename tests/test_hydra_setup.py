"""`dcbench hydra setup` (plugins/hydra/environment.py): the source in any form, clear one-line
errors, and a recorded environment that `dcbench run -m hydra` finds with no setting.

No network and no real pip run here: a fake interpreter (`--python`) makes a fake venv whose
`python -m pip` only logs (or fails as pip does) and whose `drgnai` is the stand-in. The real
build is checked by hand and by tests/test_hydra_real.py (opt-in).
"""

from __future__ import annotations

import json
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from plugin_helpers import run_dcbench
from test_hydra import STANDIN

from dcbench.errors import DcbenchError
from dcbench_plugins.hydra import environment, program

PYPROJECT = '[project]\nname = "cryodrgn-ai"\ndependencies = [\n    "cryodrgn",\n    "pillow<10",\n]\n'


def hydra_source(folder: Path) -> Path:
    """A minimal folder that looks like Hydra's source (what the setup reads of it)."""
    (folder / "src").mkdir(parents=True)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    (folder / "_version.py").write_text("__version__ = version = '1.0.0b1.dev9+gdcae5b4'\n")
    (folder / "src" / "__init__.py").write_text("")
    return folder


def fake_python(folder: Path, site: Path, pip_fails: bool = False) -> Path:
    """An interpreter for `--python`: `-m venv DIR` makes DIR/bin/python (pip only logs its
    arguments and the SCM version, or fails like pip; anything else runs this Python with `site`
    holding cryodrgn/healpy_grid.json and cryodrgnai/) and DIR/bin/drgnai (the stand-in)."""
    (site / "cryodrgn").mkdir(parents=True)
    (site / "cryodrgn" / "__init__.py").write_text("")
    (site / "cryodrgn" / "healpy_grid.json").write_text('{"1": [[0.0, 0.0]]}')
    (site / "cryodrgnai").mkdir()
    (site / "cryodrgnai" / "__init__.py").write_text("")
    pip = ('echo "ERROR: No matching distribution found for cryodrgn==2.3.0"; exit 1' if pip_fails
           else 'echo "pip $* SCM=$SETUPTOOLS_SCM_PRETEND_VERSION_FOR_CRYODRGN_AI"; exit 0')
    venv_python = (f'#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "pip" ]; then {pip}; fi\n'
                   f'PYTHONPATH={site} exec {sys.executable} "$@"\n')
    drgnai = f"#!{sys.executable}\nimport runpy\nrunpy.run_path({str(STANDIN)!r}, run_name='__main__')\n"
    maker = folder / "python3.11"
    folder.mkdir(parents=True, exist_ok=True)
    maker.write_text(f'''#!{sys.executable}
import sys
from pathlib import Path
assert sys.argv[1:3] == ["-m", "venv"], sys.argv
bin_dir = Path(sys.argv[3]) / "bin"
bin_dir.mkdir(parents=True)
for name, text in (("python", {venv_python!r}), ("drgnai", {drgnai!r})):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
''')
    maker.chmod(0o755)
    return maker


def lines(messages: list[str]) -> list[str]:
    return [m for m in messages if m.startswith("[")]


def test_the_source_comes_from_a_folder_a_wrapped_archive_or_a_zip(tmp_path: Path) -> None:
    source = hydra_source(tmp_path / "hydra-src")
    said: list[str] = []
    assert environment.fetch_source(str(source), tmp_path / "a", said.append) == tmp_path / "a"
    assert (tmp_path / "a" / "pyproject.toml").read_text() == PYPROJECT
    with tarfile.open(tmp_path / "hydra.tar.gz", "w:gz") as archive:
        archive.add(source, arcname="hydra-src")  # wrapped in one folder, as the shared snapshot is
    environment.fetch_source(str(tmp_path / "hydra.tar.gz"), tmp_path / "b", said.append)
    assert (tmp_path / "b" / "src" / "__init__.py").is_file()
    with zipfile.ZipFile(tmp_path / "hydra.zip", "w") as archive:
        for path in source.rglob("*"):
            archive.write(path, path.relative_to(source))  # not wrapped
    environment.fetch_source(str(tmp_path / "hydra.zip"), tmp_path / "c", said.append)
    assert (tmp_path / "c" / "_version.py").is_file() and not (tmp_path / "c.fetch").exists()
    assert environment.scm_version(tmp_path / "c") == "1.0.0b1.dev9+gdcae5b4"
    assert environment.declared_dependencies(tmp_path / "c") == ["cryodrgn", "pillow<10"]


@pytest.mark.parametrize("kind", ["missing", "not-an-archive", "corrupt", "not-hydra", "empty"])
def test_a_bad_source_is_one_line_saying_what_to_give(tmp_path: Path, kind: str) -> None:
    path = tmp_path / {"not-an-archive": "notes.txt", "corrupt": "hydra.tar.gz"}.get(kind, "src")
    if kind in ("not-an-archive", "corrupt"):
        path.write_bytes(b"\x1f\x8b not really gzip")
    elif kind == "not-hydra":
        path.mkdir()
        (path / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    elif kind == "empty":
        path.mkdir()
    with pytest.raises(DcbenchError) as error:
        environment.fetch_source(str(path), tmp_path / "dest", lambda _: None)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert {"missing": "does not exist", "not-an-archive": "neither a folder nor an archive",
            "corrupt": "not a readable archive", "not-hydra": "is not Hydra's",
            "empty": "no Hydra source"}[kind] in message
    assert not (tmp_path / "dest").exists() and not (tmp_path / "dest.fetch").exists()


def test_torch_is_pinned_to_dcbenchs_own_version_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment.metadata, "version", lambda name: "2.14.1+cu130")
    assert environment.torch_requirement("") == ["torch==2.14.1"]
    assert environment.torch_requirement("2.9.1") == ["torch==2.9.1"]
    assert environment.torch_requirement(">=2.3,<2.15") == ["torch>=2.3,<2.15"]
    assert environment.torch_requirement("none") == []


def test_setup_builds_checks_and_records_the_environment_that_runs_then_find(tmp_path: Path) -> None:
    source = hydra_source(tmp_path / "hydra-src")
    python = fake_python(tmp_path / "fake", tmp_path / "site")
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"  # dcbench, but no drgnai on PATH
    env = dict(os.environ, DCBENCH_HYDRA_HOME=str(tmp_path / "home"), PATH=path)
    env.pop(program.ENV_VAR, None)
    prefix = tmp_path / "hydra-env"
    result = run_dcbench(["hydra", "setup", "--source", str(source), "--prefix", str(prefix), "--python", str(python),
                          "--torch", "2.14.1"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert [s[:5] for s in steps] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]
    assert "Hydra is ready" in result.stdout and str(tmp_path / "home" / "environment.json") in result.stdout

    log = (prefix / "setup.log").read_text()
    # dependencies first, with the pins and without the Python flag; then Hydra alone, with it
    assert "pip install --disable-pip-version-check torch==2.14.1 numpy<2 pandas<2 matplotlib<3.9 " \
           "cryodrgn==2.3.0 cryodrgn pillow<10 SCM=" in log
    (build,) = prefix.glob("build-*")
    assert f"--ignore-requires-python --no-deps {build / 'src'} SCM=1.0.0b1.dev9+gdcae5b4" in log
    assert "Installation was successful!" in log
    assert (tmp_path / "site" / "cryodrgnai" / "healpy_grid.json").read_text() == '{"1": [[0.0, 0.0]]}'
    record = json.loads((tmp_path / "home" / "environment.json").read_text())
    assert record["drgnai"] == str(build / "venv" / "bin" / "drgnai") and record["source"] == str(source)
    assert json.loads((prefix / "environment.json").read_text()) == record
    assert (source / "pyproject.toml").read_text() == PYPROJECT and not (source / "build").exists()  # untouched

    # `dcbench run -m hydra` now finds it with no setting (here: the stand-in behind the fake venv)
    run = run_dcbench(["run", "-m", "hydra", "-d", "digits", "--epochs", "3", "--set", "pose_search_epochs=2",
                       "--set", "data.train_size=40", "--set", "data.test_size=20", "--no-leaderboard"], tmp_path, env)
    assert run.returncode == 0, run.stderr
    (run_dir,) = (tmp_path / "runs" / "digits" / "hydra").iterdir()
    adapter = json.loads((run_dir / "hydra" / "adapter.json").read_text())
    assert adapter["exe"] == str((build / "venv" / "bin" / "drgnai").resolve())

    # a failed rebuild leaves the working environment and its record as they were
    broken = fake_python(tmp_path / "broken", tmp_path / "site-broken", pip_fails=True)
    failed = run_dcbench(["hydra", "setup", "--source", str(source), "--prefix", str(prefix), "--python", str(broken)],
                         tmp_path, env)
    assert failed.returncode == 1 and "pip install of Hydra's dependencies failed" in failed.stderr
    assert list(prefix.glob("build-*")) == [build] and (build / "venv" / "bin" / "drgnai").is_file()
    assert json.loads((tmp_path / "home" / "environment.json").read_text()) == record

    # a rebuild into the same prefix replaces the old build once it works; something else is refused
    again = run_dcbench(["hydra", "setup", "--source", str(source), "--prefix", str(prefix), "--python", str(python)],
                        tmp_path, env)
    assert again.returncode == 0, again.stderr
    (rebuilt,) = prefix.glob("build-*")
    assert rebuilt != build and json.loads((tmp_path / "home" / "environment.json").read_text())["drgnai"] == str(
        rebuilt / "venv" / "bin" / "drgnai")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("")
    refused = run_dcbench(["hydra", "setup", "--source", str(source), "--prefix", str(tmp_path / "other")],
                          tmp_path, env)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'other'} exists and is not a Hydra environment dcbench built; choose an empty or new "
        "--prefix"]


def test_a_pip_failure_is_one_line_with_pips_error_and_the_log(tmp_path: Path) -> None:
    source = hydra_source(tmp_path / "hydra-src")
    python = fake_python(tmp_path / "fake", tmp_path / "site", pip_fails=True)
    env = dict(os.environ, DCBENCH_HYDRA_HOME=str(tmp_path / "home"))
    result = run_dcbench(["hydra", "setup", "--source", str(source), "--prefix", str(tmp_path / "env"),
                          "--python", str(python)], tmp_path, env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: pip install of Hydra's dependencies failed (exit status 1): ERROR: No matching distribution found "
        f"for cryodrgn==2.3.0; full log: {tmp_path / 'env' / 'setup.log'}")
    assert "Traceback" not in result.stderr and not (tmp_path / "home" / "environment.json").exists()
    no_python = run_dcbench(["hydra", "setup", "--source", str(source), "--prefix", str(tmp_path / "env"),
                             "--python", str(tmp_path / "no-python")], tmp_path, env)
    assert no_python.stderr.strip().splitlines()[-1] == (
        f"error: creating the virtual environment: cannot start {tmp_path / 'no-python'} (No such file or "
        "directory); check --python")
    missing = run_dcbench(["hydra", "setup", "--source", str(tmp_path / "nowhere")], tmp_path, env)
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: Hydra source {tmp_path / 'nowhere'} does not exist; give its folder, archive or URL")
