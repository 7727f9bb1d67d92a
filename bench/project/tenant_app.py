"""The library under test: a ``CeleryApp``, so the task is a ``TenantTask``.

``tenant_schemas_celery`` is whichever the interpreter imports: this
repository's library from the repository's environment, or the PyPI package in
its throw-away environment (``bench/project/pypi.py``; such a worker checks that
the PyPI release is indeed the one imported).
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.project.settings")

import django

django.setup()

from bench.project import pypi, stats  # noqa: E402, F401
from bench.project.body import query_note  # noqa: E402

if pypi.is_child():
    pypi.check_pypi_imported()

from tenant_schemas_celery.app import CeleryApp  # noqa: E402

app = CeleryApp("bench_tenant")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.task(name="bench.query")
def query(number: int) -> int:
    """One ORM query, in the schema of the message's ``_schema_name`` header."""
    return query_note()
