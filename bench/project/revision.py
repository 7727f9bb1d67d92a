"""Which revision of tenant_schemas_celery a benchmark measured."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def library_revision() -> str:
    """Return ``<commit> (clean|modified)`` for ``tenant_schemas_celery/`` in this checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "tenant_schemas_celery"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    state = "with uncommitted changes" if dirty else "clean"
    return f"tenant_schemas_celery at {commit} ({state})"
