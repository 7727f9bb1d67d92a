"""inspection: ``celery inspect tenant_scheduled`` lists a real worker's ETA tasks and schemas.

(``tenant_active`` is tested in ``test_logging.py``.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import pytest
from django_tenants.utils import schema_context

from tenant_schemas_celery.spread import spread_offset
from tests.conftest import BROKERS
from tests.project.celery import app
from tests.project.notes import tasks
from tests.workers import ROOT, CeleryProcess, worker

pytestmark = pytest.mark.integration
TASK = "tests.project.notes.tasks.whereami"
COUNTDOWN = 300
SPREAD = 600


def scheduled(process: CeleryProcess) -> list[dict[str, Any]]:
    """What ``tenant_scheduled`` replies, through the public broadcast API."""
    replies = app.control.broadcast(
        "tenant_scheduled", reply=True, timeout=1, destination=[process.nodename]
    )
    return [row for reply in replies for rows in reply.values() for row in rows]


def scheduled_by_cli(process: CeleryProcess) -> list[dict[str, Any]]:
    """What ``celery inspect tenant_scheduled --json`` prints for the worker."""
    output = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.project.celery", "inspect",
         "tenant_scheduled", "-d", process.nodename, "-t", "5", "--json"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "TSC_BROKER_URL": BROKERS["redis"]},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows: list[dict[str, Any]] = json.loads(output)[process.nodename]
    return rows


def eta(row: dict[str, Any]) -> float:
    return datetime.fromisoformat(row["eta"]).timestamp()


@pytest.mark.parametrize("pool", ["solo", "threads"])  # the event loop's timer; a timer thread
def test_tenant_scheduled_lists_countdown_and_spread_tasks_with_their_schema(
    tenants: Any, pool: str
) -> None:
    # The two spread offsets are far from 0: each message waits in the worker's timer
    offsets = {schema_name: spread_offset(schema_name, SPREAD) for schema_name in tenants}
    assert min(offsets.values()) > 60, offsets
    process = worker(BROKERS["redis"], pool=pool).start()
    try:
        # Given tasks with a countdown sent from two tenants, and a spread run to both
        sent_at = time.time()
        countdown = {}
        for schema_name in tenants:
            with schema_context(schema_name):
                countdown[tasks.whereami.apply_async(countdown=COUNTDOWN).id] = schema_name
        spread = tasks.whereami.delay_for_tenants(tenants=list(tenants), spread_seconds=SPREAD)
        spread_ids = {spread[name].id: name for name in tenants}
        # When the worker holds the four of them (none is due before minutes)
        rows: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while len(rows) < 4 and time.monotonic() < deadline:
            rows = scheduled(process)
        by_cli = scheduled_by_cli(process)
    finally:
        process.stop()
        app.control.purge()  # the messages the worker held went back to the queue
    # Then tenant_scheduled lists each one with its schema, its task and its ETA, soonest first
    assert {row["id"]: row["schema_name"] for row in rows} == {**countdown, **spread_ids}, rows
    assert {row["name"] for row in rows} == {TASK}
    assert {row["worker_pid"] for row in rows} == {None}
    assert [eta(row) for row in rows] == sorted(eta(row) for row in rows)
    for row in rows:
        if row["id"] in countdown:
            assert abs(eta(row) - (sent_at + COUNTDOWN)) < 30, row
        else:  # each tenant's spread run at its own offset
            assert abs(eta(row) - (sent_at + offsets[row["schema_name"]])) < 30, row
    # And `celery inspect tenant_scheduled --json` prints the same
    assert by_cli == rows
