"""The clients the runner judges: what each CLIENT argument means, where its SDK is installed, and
how its driver starts.

Versions and local paths are installed on first use into a cache outside the repo's tracked files
(`$KERNEL_CONFORM_CACHE`, else `$XDG_CACHE_HOME/kernel-conform`, else `~/.cache/kernel-conform`)
and reused: a Python SDK with `pip install --target` (one folder per Python minor version, as its
compiled dependencies are), a Node SDK with `npm install --prefix`. A local path is keyed by its
contents' file times and sizes, so that a changed checkout is installed again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = Path(__file__).resolve().parent / "drivers"
PINNED_NODE = ROOT / "tests" / "node"  # the pinned @onkernel/sdk, which scripts/setup installs
PYPI_NAME, NPM_NAME = "kernel", "@onkernel/sdk"
UNDICI = "undici@6.29.1"  # the ProxyAgent the Node driver hands the SDK, as tests/node pins it
DEFAULT_CLIENTS = ("reference", "python", "node")
VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!-]*$")
SKIPPED_DIRS = frozenset({".git", "node_modules", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache"})
INSTALL_TIMEOUT = 600  # seconds for one pip or npm install


class SetupError(Exception):
    """A client that cannot be set up: the run stops before any case (exit status 2)."""


@dataclass(frozen=True)
class Client:
    spec: str  # as given on the command line: the matrix's column
    argv: tuple[str, ...]  # the driver's command
    env: dict[str, str] = field(default_factory=dict)  # added to the driver's environment


def cache_dir() -> Path:
    if found := os.environ.get("KERNEL_CONFORM_CACHE"):
        return Path(found).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "kernel-conform"


def prepare(spec: str, cache: Path | None = None) -> Client:
    """The client a CLIENT argument names, installed if need be (SetupError when it cannot be)."""
    cache = cache or cache_dir()
    python = (sys.executable, str(DRIVERS / "python_sdk.py"))
    if spec == "reference":
        return Client(spec, (sys.executable, str(DRIVERS / "reference.py")))
    if spec == "python":
        return Client(spec, python)
    if spec.startswith("python=="):
        target = install_python(f"{PYPI_NAME}=={version_of(spec, 'python==')}", cache)
        return Client(spec, python, {"PYTHONPATH": str(target)})
    if spec.startswith("python="):
        path = local_path(spec, "python=")
        target = install_python(str(path), cache, fingerprint(path))
        return Client(spec, python, {"PYTHONPATH": str(target)})
    if spec == "node":
        if not (PINNED_NODE / "node_modules" / NPM_NAME).is_dir():
            raise SetupError(
                f"{spec}: the pinned Node SDK is missing: run scripts/setup (it needs node and npm)"
            )
        return node_client(spec, PINNED_NODE)
    if spec.startswith("node@"):
        return node_client(spec, install_node(f"{NPM_NAME}@{version_of(spec, 'node@')}", cache))
    if spec.startswith("node="):
        path = local_path(spec, "node=")
        return node_client(spec, install_node(str(path), cache, fingerprint(path)))
    if spec.startswith("cmd="):
        try:
            argv = tuple(shlex.split(spec[len("cmd=") :]))
        except ValueError as e:
            raise SetupError(f"{spec}: {e}") from None
        if not argv:
            raise SetupError(f"{spec}: no command given")
        if shutil.which(argv[0]) is None:
            raise SetupError(f"{spec}: {argv[0]!r} is no program that can be run")
        return Client(spec, argv)
    raise SetupError(
        f"unknown client {spec!r} (want reference, python, python==VERSION, python=PATH, node, "
        "node@VERSION, node=PATH or cmd=COMMAND)"
    )


def version_of(spec: str, prefix: str) -> str:
    version = spec[len(prefix) :]
    if not VERSION.match(version):
        raise SetupError(f"{spec}: {version!r} is not a version")
    return version


def local_path(spec: str, prefix: str) -> Path:
    path = Path(spec[len(prefix) :]).expanduser().resolve()
    if not path.exists():
        raise SetupError(f"{spec}: {path} does not exist")
    return path


def node_client(spec: str, prefix: Path) -> Client:
    node = shutil.which("node")
    if node is None:
        raise SetupError(f"{spec}: node is not installed (the Node driver needs Node.js 20 or newer)")
    return Client(spec, (node, str(DRIVERS / "node_sdk.mjs")), {"KERNEL_CONFORM_NODE_PREFIX": str(prefix)})


def fingerprint(path: Path) -> str:
    """Changes when a file under `path` is added, removed, resized or touched."""
    digest = hashlib.sha256()
    if path.is_file():
        stat = path.stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:12]
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            stat = (Path(folder) / name).stat()
            digest.update(
                f"{Path(folder, name).relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()[:12]


def slot(cache: Path, kind: str, what: str, version: str | None) -> Path:
    """The cache folder for one install. A local path's folder is named by the path and its
    fingerprint (`version`); the folders of its older contents are removed."""
    if version is None:
        return cache / kind / re.sub(r"[^A-Za-z0-9.=@+-]", "_", what)
    key = hashlib.sha256(what.encode()).hexdigest()[:12]
    for old in (cache / kind).glob(f"path-{key}-*"):
        if old.name != f"path-{key}-{version}":
            shutil.rmtree(old, ignore_errors=True)
    return cache / kind / f"path-{key}-{version}"


def install_python(requirement: str, cache: Path, version: str | None = None) -> Path:
    """`pip install --target` of the SDK (and its dependencies) for this Python, once."""
    minor = f"py{sys.version_info.major}.{sys.version_info.minor}"
    target = slot(cache, f"python-{minor}", requirement, version)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"]
    return installed(target, lambda into: [*pip, str(into), requirement], requirement)


def install_node(package: str, cache: Path, version: str | None = None) -> Path:
    """`npm install --prefix` of the SDK and undici, once (a local folder is copied, not linked)."""
    npm = shutil.which("npm")
    if npm is None:
        raise SetupError(f"{package}: npm is not installed")
    target = slot(cache, "node", package, version)
    flags = ["--no-audit", "--no-fund", "--install-links"]
    return installed(
        target, lambda into: [npm, "install", "--prefix", str(into), *flags, package, UNDICI], package
    )


def installed(target: Path, command: Callable[[Path], list[str]], what: str) -> Path:
    """Install into a fresh folder next to `target`, then move it there: an interrupted install
    leaves no half-filled cache entry. `command(folder)` is the install's argv."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=target.parent))
    log.info("installing %s into %s (first use; reused afterwards)", what, target)
    try:
        done = subprocess.run(command(staging), capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
            raise SetupError(f"cannot install {what}:\n{tail}")
        staging.rename(target)
    except subprocess.TimeoutExpired:
        raise SetupError(f"cannot install {what}: no answer within {INSTALL_TIMEOUT} s") from None
    except OSError as e:
        raise SetupError(f"cannot install {what}: {e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
