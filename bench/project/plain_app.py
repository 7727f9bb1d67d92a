"""The floor: a plain ``celery.Celery`` app, no tenant handling; tasks query in public."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.project.settings")

import django

django.setup()

from celery import Celery  # noqa: E402

from bench.project import stats  # noqa: E402, F401
from bench.project.body import query_note  # noqa: E402

app = Celery("bench_plain")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.task(name="bench.query")
def query(number: int) -> int:
    """One ORM query, in whatever schema the connection is on (public)."""
    return query_note()
