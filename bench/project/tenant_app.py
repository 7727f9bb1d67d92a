"""The library under test: a ``CeleryApp``, so the task is a ``TenantTask``."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.project.settings")

import django

django.setup()

from bench.project import stats  # noqa: E402, F401
from bench.project.body import query_note  # noqa: E402
from tenant_schemas_celery.app import CeleryApp  # noqa: E402

app = CeleryApp("bench_tenant")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.task(name="bench.query")
def query(number: int) -> int:
    """One ORM query, in the schema of the message's ``_schema_name`` header."""
    return query_note()
