"""The app of the end-to-end beat test: the test project's, with a task and a beat schedule.

``celery beat`` runs with ``-A tests.beat_e2e_app``; the worker imports this module
with ``-I`` for the task. Runs are recorded in the Redis list ``TSC_BEAT_E2E_KEY``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery.beat import BeatLazyFunc
from django.db import connection

from tests.project.celery import app

KEY = os.environ.get("TSC_BEAT_E2E_KEY", "tsc-tests:beat-e2e")
INTERVAL = float(os.environ.get("TSC_BEAT_E2E_INTERVAL", "1"))
TASK = "tests.beat_e2e_app.record_run"


@app.task(name=TASK)
def record_run(entry: str, due: float) -> None:
    """Record that ``entry``'s run due at ``due`` ran in the active schema."""
    from tests.project.notes.tasks import events  # models: only once Django is set up

    events().rpush(KEY, json.dumps({"entry": entry, "due": due, "schema": connection.schema_name}))


def _entry(name: str, **fields: Any) -> dict[str, Any]:
    # BeatLazyFunc is evaluated once per due run: every tenant's message carries the same value.
    return {
        "task": TASK,
        "schedule": INTERVAL,
        "args": (name,),
        "kwargs": {"due": BeatLazyFunc(time.time)},
        **fields,
    }


app.conf.beat_schedule = {
    "every-tenant": _entry("every-tenant"),
    "public-only": _entry("public-only", tenant_schemas=["public"]),
}
