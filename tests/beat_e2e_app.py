"""The app of the end-to-end beat tests: the test project's, with tasks and a beat schedule.

``celery beat`` runs with ``-A tests.beat_e2e_app``; the worker imports this module
with ``-I`` for the tasks. Runs are recorded in the Redis list ``TSC_BEAT_E2E_KEY``, as
``{"entry", "due", "schema"}``: one ``due`` value per due run of an entry.

``TSC_BEAT_E2E_SCHEDULE`` picks the schedule: ``"static"`` (default) for the in-memory
schedulers, whose entries pass their due time as an argument; ``"rows"`` for
``TenantAwareDatabaseScheduler``, whose rows run ``ROW_TASK``; ``"zoned"`` for one
``tenant_timezone`` crontab entry. A row's arguments are fixed
JSON, so beat stamps each message of it with its due time (``DUE_HEADER``) as it publishes
it. Beat records every message it publishes in ``TSC_BEAT_E2E_KEY:sent``, the same way.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import redis
from celery.beat import BeatLazyFunc
from celery.schedules import crontab
from celery.signals import before_task_publish
from django.conf import settings
from django.db import connection

from tests.project.celery import app

KEY = os.environ.get("TSC_BEAT_E2E_KEY", "tsc-tests:beat-e2e")
INTERVAL = float(os.environ.get("TSC_BEAT_E2E_INTERVAL", "1"))
TASK = "tests.beat_e2e_app.record_run"
ROW_TASK = "tests.beat_e2e_app.record_row_run"
#: The headers of a row's message that hold its row's name and the due time of its run.
ENTRY_HEADER, DUE_HEADER = "tsc_e2e_entry", "tsc_e2e_due"


def events() -> redis.Redis:
    """The Redis database of the tests' records (``tests.project.notes.tasks.events``)."""
    return redis.Redis.from_url(f"{settings.REDIS_URL}/12")


def _record(key: str, entry: str, due: float, schema_name: str) -> None:
    events().rpush(key, json.dumps({"entry": entry, "due": due, "schema": schema_name}))


@app.task(name=TASK, ignore_result=True)
def record_run(entry: str, due: float) -> None:
    """Record that ``entry``'s run due at ``due`` ran in the active schema."""
    _record(KEY, entry, due, connection.schema_name)


@app.task(name=ROW_TASK, bind=True, ignore_result=True)
def record_row_run(self: Any) -> None:
    """Record that this row's run due at the time beat stamped ran in the active schema."""
    request = self.request
    _record(
        KEY, getattr(request, ENTRY_HEADER), getattr(request, DUE_HEADER), connection.schema_name
    )


#: Each row's current due run: ``(due, time of its last message)``.
_runs: dict[str, tuple[float, float]] = {}


@before_task_publish.connect(weak=False)
def _stamp_due(
    sender: Any = None, body: Any = None, headers: Any = None, properties: Any = None, **_: Any
) -> None:
    """In beat: record each message as sent; give a row's message the due time of its run.

    A due run's messages are published together (one per schema, within milliseconds);
    the runs of an entry are at least ``INTERVAL`` apart. A message published within
    ``INTERVAL / 2`` of the entry's previous one belongs to the same run.
    """
    if sender == TASK:
        (name, *_rest), kwargs, _embed = body
        due = kwargs["due"]
    elif sender == ROW_TASK:
        # The row's name: a header from django-celery-beat 2.8 on, a property before
        name = headers.get("periodic_task_name") or properties["periodic_task_name"]
        now = time.time()
        due, last = _runs.get(name, (now, -INTERVAL))
        if now - last > INTERVAL / 2:
            due = now
        _runs[name] = (due, now)
        headers.update({ENTRY_HEADER: name, DUE_HEADER: due})
    else:
        return
    _record(f"{KEY}:sent", name, due, headers["_schema_name"])


def _entry(name: str, **fields: Any) -> dict[str, Any]:
    # BeatLazyFunc is evaluated once per due run: every tenant's message carries the same value.
    return {
        "task": TASK,
        "schedule": INTERVAL,
        "args": (name,),
        "kwargs": {"due": BeatLazyFunc(time.time)},
        **fields,
    }


_SCHEDULE = os.environ.get("TSC_BEAT_E2E_SCHEDULE", "static")
if _SCHEDULE == "zoned":
    # Due every minute of Tokyo's current and next hour in each tenant's zone (the tenant
    # model's ``timezone``): never at the same time in UTC, Europe or America.
    _hour = datetime.now(ZoneInfo("Asia/Tokyo")).hour
    app.conf.beat_schedule = {
        "tokyo-hours": _entry(
            "tokyo-hours",
            schedule=crontab(minute="*", hour=f"{_hour},{(_hour + 1) % 24}"),
            tenant_timezone="timezone",
        )
    }
elif _SCHEDULE == "rows":
    # Installed as the public row "every-tenant@__all_tenants_only__"; the test adds others.
    app.conf.beat_schedule = {"every-tenant": {"task": ROW_TASK, "schedule": INTERVAL}}
else:
    app.conf.beat_schedule = {
        "every-tenant": _entry("every-tenant"),
        "public-only": _entry("public-only", tenant_schemas=["public"]),
    }
