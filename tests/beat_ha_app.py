"""The app of the beat high-availability tests: the test project's, with leader election on.

``celery beat -A tests.beat_ha_app -S tests.beat_ha_schedulers.<Scheduler>``; the worker
imports this module with ``-I`` for the task. Only with ``TSC_HA_KEY`` set (in those
processes, never in pytest's, whose app it would change) does it configure the app: the
environment sets ``TSC_HA_KEY`` (the
Redis lists of the records, and the leader key), ``TSC_HA_FAILOVER`` (seconds),
``TSC_HA_ELECTION`` (``"0"``: off) and ``TSC_HA_SCHEDULE`` (``"static"``: one
``beat_schedule`` entry ``ha-tick`` every ``INTERVAL`` seconds, in public; ``"rows"``: none,
the test adds django-celery-beat rows).

Beat stamps every message it publishes (header ``STAMP_HEADER``) with the entry's name,
the last run the entry was advanced from (``base``; and ``next``, the run it was advanced
to, for a row), the sending beat's pid and the time, and records the stamp in
``KEY:sent``; the worker records the stamp of every run in ``KEY``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery.signals import before_task_publish

from tests.beat_e2e_app import events
from tests.project.celery import app

KEY = os.environ.get("TSC_HA_KEY", "tsc-tests:beat-ha")
INTERVAL = 1.0
TASK = "tests.beat_ha_app.record_run"
STAMP_HEADER = "tsc_ha_stamp"

#: The stamp of the entry being sent (set by the schedulers of ``tests.beat_ha_schedulers``).
_current: dict[str, Any] = {}


def stamp(entry: Any) -> None:
    """Note that ``entry`` (not yet advanced: ``last_run_at`` is its previous run) is sent next."""
    model = getattr(entry, "model", None)
    _current.clear()
    _current.update(
        entry=entry.name,
        base=entry.last_run_at.timestamp(),
        next=None if model is None else model.last_run_at.timestamp(),
        pid=os.getpid(),
    )


@app.task(name=TASK, bind=True, ignore_result=True)
def record_run(self: Any) -> None:
    """Record the stamp of this run."""
    events().rpush(KEY, json.dumps(getattr(self.request, STAMP_HEADER)))


@before_task_publish.connect(weak=False)
def _stamp_message(sender: Any = None, headers: Any = None, **_: Any) -> None:
    if sender != TASK or not _current:
        return
    record = {**_current, "t": time.time(), "schema": headers["_schema_name"]}
    headers[STAMP_HEADER] = record
    events().rpush(f"{KEY}:sent", json.dumps(record))


if "TSC_HA_KEY" in os.environ:  # in the tests' processes only, not in pytest's own
    app.conf.update(
        beat_tenant_leader_election=os.environ.get("TSC_HA_ELECTION", "1") == "1",
        beat_tenant_leader_key=KEY,
        beat_tenant_failover_seconds=float(os.environ.get("TSC_HA_FAILOVER", "3")),
    )
    rows = os.environ.get("TSC_HA_SCHEDULE", "static") == "rows"
    app.conf.beat_schedule = (
        {}
        if rows
        else {"ha-tick": {"task": TASK, "schedule": INTERVAL, "tenant_schemas": ["public"]}}
    )
