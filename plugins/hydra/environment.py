"""`dcbench hydra setup`: build Hydra's own Python environment from its source, in one step.

Hydra (package `cryodrgn-ai`, command `drgnai`) is GPL-3 software that dcbench runs as an external
program, so it gets its own virtual environment, never dcbench's. What the build does and why:

- the source (a folder, a .tar.gz/.tgz/.tar/.zip archive, or an http(s) URL of one, or a git URL)
  is copied into BUILD/src (BUILD = PREFIX/build-<time>: a rebuild is made beside the working
  environment and replaces it only once it passes the test below), so the environment does not
  depend on the user's copy lasting and the user's copy is never written to;
- BUILD/venv is a fresh venv of the given Python. A first `pip install` puts in Hydra's declared
  dependencies (read from its pyproject.toml) with the pins that work: numpy<2 (Hydra calls
  np.product, gone in NumPy 2), cryodrgn==2.3.0 (the pairing Hydra's maintainers support; it needs
  pandas<2), matplotlib<3.9 (cryodrgn 2.3.0's seaborn<0.12 calls matplotlib.cm.register_cmap,
  removed in 3.9) and torch at the version dcbench itself uses (pip reuses that wheel instead of
  downloading a CUDA build of several GB). A second puts in Hydra alone with
  `--ignore-requires-python --no-deps`: Hydra declares Python < 3.11 but runs on 3.11, and the flag
  must not reach the dependencies (pip would then pick releases that need a newer Python);
- healpy_grid.json, which Hydra's repository leaves out, is copied from the installed cryodrgn
  into the installed Hydra package (byte-identical; without it Hydra falls back to healpy);
- `drgnai test` must print "Installation was successful!";
- HOME/environment.json records where `drgnai` is; program.find_drgnai() reads it, so no setting
  is needed afterwards. HOME is $DCBENCH_HYDRA_HOME, else $XDG_DATA_HOME/dcbench/hydra, else
  ~/.local/share/dcbench/hydra, and is also the default PREFIX.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import click

from dcbench.errors import DcbenchError

HOME_ENV = "DCBENCH_HYDRA_HOME"
RECORD = "environment.json"
CRYODRGN = "cryodrgn==2.3.0"
# np.product (Hydra); cryodrgn 2.3.0 declares pandas<2; its seaborn<0.12 needs matplotlib.cm.register_cmap
PINS = ("numpy<2", "pandas<2", "matplotlib<3.9")
ARCHIVES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".zip")
VERSIONS = ("cryodrgn-ai", "cryodrgn", "torch", "numpy", "pandas", "matplotlib")
Say = Callable[[str], None]


def home() -> Path:
    """Where the record (and, by default, the environment) lives."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base).expanduser() / "dcbench" / "hydra"


def recorded_drgnai() -> Path | None:
    """The `drgnai` that `dcbench hydra setup` recorded, if the record and the program are there."""
    try:
        record = json.loads((home() / RECORD).read_text(encoding="utf-8"))
        exe = Path(record["drgnai"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return exe if exe.is_file() and os.access(exe, os.X_OK) else None


# ----------------------------------------------------------------------------- the source


def _project_root(folder: Path) -> Path:
    """The folder holding Hydra's pyproject.toml: `folder` itself, else one of its subfolders
    (archives usually wrap the project in one folder)."""
    if (folder / "pyproject.toml").is_file():
        candidates = [folder]
    else:
        candidates = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "pyproject.toml").is_file())
    for candidate in candidates:
        text = (candidate / "pyproject.toml").read_text(encoding="utf-8", errors="replace")
        if re.search(r'^name\s*=\s*"cryodrgn-ai"', text, re.M):
            return candidate
    if candidates:
        raise DcbenchError(f"{candidates[0] / 'pyproject.toml'} is not Hydra's (it does not name the package "
                           "cryodrgn-ai); give the Hydra source (ml-struct-bio/hydra)")
    raise DcbenchError(f"no Hydra source in {folder} (no pyproject.toml there or one folder down); "
                       "give Hydra's source folder, its archive or its URL")


def _extract(archive: Path, dest: Path) -> None:
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as handle:
                handle.extractall(dest)  # zipfile drops absolute paths and '..' itself
        else:
            with tarfile.open(archive) as handle:
                if not hasattr(tarfile, "data_filter"):  # Python < 3.11.4: no extraction filters
                    raise DcbenchError(f"unpacking {archive} safely needs Python >= 3.11.4; unpack it yourself "
                                       "and give the folder")
                handle.extractall(dest, filter="data")  # refuses links and paths leaving dest
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]  # tarfile's reasons span lines
        raise DcbenchError(f"{archive} is not a readable archive ({reason}); give a .tar.gz, .tgz, .tar or .zip "
                           "of Hydra's source, or its folder") from None


def _download(url: str, folder: Path, say: Say) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1]) or "hydra-source"
    target = folder / name
    say(f"downloading {url}")
    import urllib.request  # here: `dcbench` starts without loading http and ssl
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out)
    except (OSError, ValueError) as exc:
        raise DcbenchError(f"could not download {url} ({exc}); download it yourself and give the file") from None
    return target


def fetch_source(source: str, dest: Path, say: Say) -> Path:
    """Put Hydra's source under `dest` (a folder that must not exist yet) and return its project root."""
    work = dest.parent / (dest.name + ".fetch")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        is_url = re.match(r"^[a-z][a-z0-9+.-]*://", source) is not None
        if source.startswith("git+") or (is_url and source.endswith(".git")):
            url = source.removeprefix("git+")
            say(f"cloning {url}")
            try:
                done = subprocess.run(["git", "clone", "--quiet", url, str(work / "clone")], capture_output=True,
                                      text=True, stdin=subprocess.DEVNULL)
            except OSError as exc:
                raise DcbenchError(f"cannot run git to clone {url} ({exc.strerror or exc}); install git, or give "
                                   "an archive or folder of Hydra's source") from None
            if done.returncode:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise DcbenchError(f"git clone {url} failed: {last}")
            root = _project_root(work / "clone")
        else:
            path = _download(source, work, say) if is_url else Path(source).expanduser()
            if path.is_dir():
                root = _project_root(path)
            elif path.is_file():
                if not path.name.endswith(ARCHIVES) and not (tarfile.is_tarfile(path) or zipfile.is_zipfile(path)):
                    raise DcbenchError(f"{path} is neither a folder nor an archive ({', '.join(ARCHIVES)}); "
                                       "give Hydra's source folder, its archive or its URL")
                _extract(path, work / "unpacked")
                root = _project_root(work / "unpacked")
            else:
                raise DcbenchError(f"Hydra source {source} does not exist; give its folder, archive or URL")
        shutil.copytree(root, dest, symlinks=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def scm_version(src: Path) -> str:
    """Hydra's version for setuptools_scm, which cannot read it without git metadata: the one in
    the source's _version.py, else 0+unknown."""
    text = (src / "_version.py").read_text(encoding="utf-8") if (src / "_version.py").is_file() else ""
    found = re.search(r"""^__version__\s*=\s*version\s*=\s*['"]([^'"]+)['"]""", text, re.M)
    return found.group(1) if found else "0+unknown"


def declared_dependencies(src: Path) -> list[str]:
    """The dependencies Hydra's pyproject.toml declares (installed first, without the Python flag)."""
    import tomllib

    try:
        with open(src / "pyproject.toml", "rb") as handle:
            return [str(x) for x in tomllib.load(handle)["project"].get("dependencies", [])]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise DcbenchError(f"cannot read Hydra's dependencies from {src / 'pyproject.toml'} ({exc}); "
                           "is the source complete?") from None


# ----------------------------------------------------------------------------- the environment


def torch_requirement(torch: str) -> list[str]:
    """'' (the default): torch at dcbench's own version; 'none': no pin; else a version or specifier."""
    if torch == "none":
        return []
    if not torch:
        try:
            torch = metadata.version("torch").split("+", 1)[0]
        except metadata.PackageNotFoundError:
            return []
    return [f"torch{torch}" if torch[0] in "<>=!~" else f"torch=={torch}"]


def _run(argv: list[str], log: Path, what: str, env: dict[str, str] | None = None) -> None:
    """Run argv with its output appended to `log`; a failure is one line with the step's first
    pip-style ERROR line (else its last line) and the log's path."""
    with open(log, "ab") as handle:
        handle.write(f"\n$ {' '.join(argv)}\n".encode())
        handle.flush()
        start = handle.tell()
        try:
            code = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=env).returncode
        except OSError as exc:
            raise DcbenchError(f"{what}: cannot start {argv[0]} ({exc.strerror or exc}); check --python") from None
    if code:
        with open(log, "rb") as handle:
            handle.seek(start)
            lines = [x.strip() for x in handle.read().decode("utf-8", "replace").splitlines() if x.strip()]
        errors = [x for x in lines if x.startswith("ERROR")] or lines[-1:]
        shown = errors[0][:240] if errors else "no output"
        raise DcbenchError(f"{what} failed (exit status {code}): {shown}; full log: {log}")


def _package_dir(python: Path, module: str, log: Path) -> Path:
    code = f"import importlib.util as u; print(list(u.find_spec({module!r}).submodule_search_locations)[0])"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode:
        raise DcbenchError(f"the new environment has no `{module}` package; see {log}")
    return Path(done.stdout.strip())


def _versions(python: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, sys\nv = {}\nfor n in sys.argv[1:]:\n"
            "    try: v[n] = m.version(n)\n    except m.PackageNotFoundError: pass\nprint(json.dumps(v))")
    done = subprocess.run([str(python), "-c", code, *VERSIONS], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else {}


def build(source: str, prefix: Path, python: str = "", torch: str = "", say: Say = print) -> dict[str, object]:
    """Build Hydra's environment in `prefix` from `source` and record it; returns the record.

    Each build goes into a folder of its own (PREFIX/build-<time>/src and venv: a venv cannot be
    moved, its scripts name their interpreter by absolute path). Only when the new one passes
    `drgnai test` does the record point at it and older builds go, so a failed rebuild leaves the
    working environment and its record as they were."""
    prefix = prefix.expanduser().absolute()
    if prefix.is_file() or (prefix.exists() and not _ours(prefix)):
        raise DcbenchError(f"{prefix} exists and is not a Hydra environment dcbench built; choose an empty "
                           "or new --prefix")
    started = time.monotonic()
    prefix.mkdir(parents=True, exist_ok=True)
    log = prefix / "setup.log"
    log.write_text(f"dcbench hydra setup --source {source} --prefix {prefix}\n", encoding="utf-8")
    folder = prefix / f"build-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"
    try:
        drgnai, venv_python = _build_into(folder, source, python, torch, log, say)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # half a build is of no use; the log stays
        raise

    local = Path(source).expanduser()
    shown = str(local.resolve()) if local.exists() else source  # a relative path means nothing later
    record: dict[str, object] = {
        "drgnai": str(drgnai), "prefix": str(prefix), "python": str(venv_python), "source": shown,
        "versions": _versions(venv_python), "built": datetime.now(UTC).isoformat(timespec="seconds"),
        "minutes": round((time.monotonic() - started) / 60, 1)}
    text = json.dumps(record, indent=2) + "\n"
    _write_atomically(prefix / RECORD, text)
    home().mkdir(parents=True, exist_ok=True)
    _write_atomically(home() / RECORD, text)  # what find_drgnai() reads
    for old in _builds(prefix):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return record


def _ours(prefix: Path) -> bool:
    """Whether `prefix` holds only what a setup writes (empty, or after a failed first build: its log)."""
    return all(p.name in ("setup.log", RECORD) or p.name.startswith("build-") for p in prefix.iterdir())


def _builds(prefix: Path) -> list[Path]:
    return sorted(p for p in prefix.glob("build-*") if p.is_dir()) if prefix.is_dir() else []


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def _build_into(folder: Path, source: str, python: str, torch: str, log: Path, say: Say) -> tuple[Path, Path]:
    """The five steps, into `folder`; returns (drgnai, the venv's python)."""
    say(f"[1/5] Hydra's source from {source} -> {folder / 'src'}")
    src = fetch_source(source, folder / "src", say)

    interpreter = python or sys.executable
    say(f"[2/5] a new virtual environment of {interpreter} -> {folder / 'venv'}")
    _run([interpreter, "-m", "venv", str(folder / "venv")], log, "creating the virtual environment")
    venv_python = folder / "venv" / "bin" / "python"

    requirements = [*torch_requirement(torch), *PINS, CRYODRGN, *declared_dependencies(src)]
    say(f"[3/5] pip install {' '.join(requirements)}, then Hydra itself (minutes; log: {log})")
    pip = [str(venv_python), "-m", "pip", "install", "--disable-pip-version-check"]
    _run([*pip, *requirements], log, "pip install of Hydra's dependencies")
    env = dict(os.environ)
    if not (src / ".git").exists():
        env["SETUPTOOLS_SCM_PRETEND_VERSION_FOR_CRYODRGN_AI"] = scm_version(src)
    _run([*pip, "--ignore-requires-python", "--no-deps", str(src)], log, "pip install of Hydra", env)

    say("[4/5] healpy_grid.json from cryodrgn -> Hydra's package")
    grid = _package_dir(venv_python, "cryodrgn", log) / "healpy_grid.json"
    if not grid.is_file():
        raise DcbenchError(f"the installed cryodrgn has no {grid.name} ({grid}); install {CRYODRGN} (see {log})")
    shutil.copyfile(grid, _package_dir(venv_python, "cryodrgnai", log) / grid.name)

    drgnai = folder / "venv" / "bin" / "drgnai"
    say("[5/5] drgnai test")
    start = log.stat().st_size
    _run([str(drgnai), "test"], log, "drgnai test", dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    with open(log, "rb") as handle:
        handle.seek(start)
        if b"Installation was successful!" not in handle.read():
            raise DcbenchError(f"drgnai test did not say 'Installation was successful!'; see {log}")
    return drgnai, venv_python


# ----------------------------------------------------------------------------- the command


@click.group("hydra")
def hydra_group() -> None:
    """Hydra (the external `drgnai` program behind method `hydra`)."""


@hydra_group.command("setup")
@click.option("--source", required=True, metavar="PATH_OR_URL",
              help="Hydra's source: a folder, a .tar.gz/.tgz/.tar/.zip archive, an http(s) URL of one, or a git URL.")
@click.option("--prefix", type=click.Path(path_type=Path), default=None,
              help=f"Where the environment goes (default: ${HOME_ENV}, else ~/.local/share/dcbench/hydra).")
@click.option("--python", "python", default="", metavar="PYTHON",
              help="The interpreter for Hydra's venv (default: dcbench's; Hydra declares 3.7-3.10, runs on 3.11).")
@click.option("--torch", "torch", default="", metavar="VERSION",
              help="torch for Hydra's venv (default: dcbench's own version, reused from pip's cache or "
                   "the local wheel; 'none': let pip choose, which may download a CUDA build of several GB).")
def setup_command(source: str, prefix: Path | None, python: str, torch: str) -> None:
    """Build Hydra's own Python environment from SOURCE and record it, so that `dcbench run -m hydra`
    finds `drgnai` with no setting."""
    record = build(source, prefix or home(), python, torch, say=lambda line: click.echo(line, err=True))
    versions = ", ".join(f"{k} {v}" for k, v in dict(record["versions"]).items())  # type: ignore[call-overload]
    click.echo(f"Hydra is ready: {record['drgnai']} ({versions}; {record['minutes']} min); "
               f"recorded in {home() / RECORD}")
