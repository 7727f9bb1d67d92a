"""The PyPI package tenant-schemas-celery, for side-by-side benchmarks, in its own environment.

The PyPI package has the same import path as this repository's library
(``tenant_schemas_celery``), so the two can never share a process. This module
makes a throw-away virtual environment, on demand, holding the PyPI package
and the same versions of Celery, Django, django-tenants and the drivers as the
running interpreter (read with ``importlib.metadata`` and pinned), and a
directory that exposes the repository's ``bench`` and ``tests`` packages (as
symbolic links) but not its ``tenant_schemas_celery``, so that the PyPI package
is the one imported there. The benchmark scripts run their PyPI variants with
that environment's Python, with :func:`child_environment` and the working
directory :func:`import_root`.

Nothing of the PyPI package is copied into the repository: it is installed by
pip and measured.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
#: The PyPI release compared against.
PYPI_VERSION = "5.0.0"
#: Distributions whose versions the throw-away environment copies from this one.
PINNED = (
    "celery",
    "kombu",
    "billiard",
    "vine",
    "amqp",
    "Django",
    "asgiref",
    "django-tenants",
    "psycopg2-binary",
    "psycopg2",
    "redis",
    "packaging",  # kombu's Redis transport imports it
)
#: Set in a PyPI child process; the scripts then leave ``sys.path`` alone.
CHILD_VARIABLE = "BENCH_PYPI_CHILD"


def default_location() -> Path:
    """Return where the environment lives unless ``--pypi-venv`` says otherwise."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tsc-bench" / f"pypi-{PYPI_VERSION}"


def requirements() -> list[str]:
    """Return the pip requirements: the PyPI package and this interpreter's versions."""
    pins = [f"tenant-schemas-celery=={PYPI_VERSION}"]
    for name in PINNED:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def python_of(location: Path) -> Path:
    """Return the interpreter of the environment at ``location``."""
    return location / "bin" / "python"


def ensure_environment(location: Path | None = None, quiet: bool = False) -> Path:
    """Create (or reuse) the throw-away environment; return its Python.

    The environment is reused when the requirements it was made with (kept in
    ``bench-requirements.json``) are today's; otherwise it is made again.
    """
    location = location or default_location()
    wanted = requirements()
    marker = location / "bench-requirements.json"
    python = python_of(location)
    if python.exists() and marker.exists() and json.loads(marker.read_text()) == wanted:
        ensure_import_root(location)
        return python
    output = subprocess.DEVNULL if quiet else None
    base = getattr(sys, "_base_executable", sys.executable)
    print(f"making {location} with {' '.join(wanted)}", file=sys.stderr, flush=True)
    subprocess.run([base, "-m", "venv", "--clear", str(location)], check=True, stdout=output)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *wanted],
        check=True,
        stdout=output,
    )
    marker.write_text(json.dumps(wanted))
    ensure_import_root(location)
    return python


def import_root(location: Path | None = None) -> Path:
    """Return the directory a child imports ``bench`` and ``tests`` from."""
    return (location or default_location()) / "import-root"


def ensure_import_root(location: Path) -> Path:
    """Make :func:`import_root`: links to the repository's ``bench`` and ``tests`` only."""
    path = import_root(location)
    path.mkdir(parents=True, exist_ok=True)
    for package in ("bench", "tests"):
        link = path / package
        target = ROOT / package
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return path


def child_environment(location: Path | None = None, **extra: str) -> dict[str, str]:
    """Return the environment of a process that must import the PyPI package.

    ``PYTHONPATH`` is only :func:`import_root` (never the repository root, whose
    ``tenant_schemas_celery`` would win over the installed one).
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.pop("VIRTUAL_ENV", None)
    env["PYTHONPATH"] = str(import_root(location))
    env[CHILD_VARIABLE] = "1"
    env.update(extra)
    return env


def is_child() -> bool:
    """Whether this process is a PyPI child (see :func:`child_environment`)."""
    return os.environ.get(CHILD_VARIABLE) == "1"


def check_pypi_imported() -> str:
    """In a child: make sure the PyPI release is the one imported; return a description."""
    import tenant_schemas_celery

    where = Path(tenant_schemas_celery.__file__).resolve()
    if ROOT in where.parents:
        raise RuntimeError(f"the repository's library was imported from {where}, not PyPI's")
    version = importlib.metadata.version("tenant-schemas-celery")
    if version != PYPI_VERSION:
        raise RuntimeError(f"tenant-schemas-celery {version} is installed, not {PYPI_VERSION}")
    return f"tenant-schemas-celery {version} from PyPI ({where.parent})"
