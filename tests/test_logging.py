"""Worker log lines name the schema of the task that wrote them."""

from __future__ import annotations

import logging
import time

import pytest
from django_tenants.utils import schema_context

from tenant_schemas_celery.log import SchemaNameFilter
from tests.conftest import BROKERS
from tests.project.notes import tasks
from tests.workers import worker

TIMEOUT = 60


@pytest.mark.integration
def test_worker_task_log_lines_show_the_schema(tenants):
    process = worker(BROKERS["redis"]).start()
    try:
        with schema_context("tenant2"):
            tasks.log_something.delay("hello").get(timeout=TIMEOUT)
        tasks.log_something.delay("from public").get(timeout=TIMEOUT)
    finally:
        process.stop()
    lines = [line for line in process.log().splitlines() if "logged" in line]
    assert len(lines) == 2
    assert "schema=tenant2: logged hello" in lines[0]
    assert "schema=public: logged from public" in lines[1]


def test_filter_outside_a_task_sets_a_dash_and_keeps_the_record():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "msg", None, None)
    assert SchemaNameFilter().filter(record) is True
    assert record.schema_name == "-"


@pytest.mark.integration
def test_inspect_commands_show_the_schema(tenants):
    from tests.project.celery import app

    process = worker(BROKERS["redis"], pool="threads", concurrency=2).start()
    try:
        with schema_context("tenant1"):
            running = tasks.sleep_for.delay(3)
        deadline = time.monotonic() + TIMEOUT
        active: list = []
        while not active and time.monotonic() < deadline:
            replies = app.control.broadcast(
                "tenant_active", reply=True, timeout=1, destination=[process.nodename]
            )
            active = [task for reply in replies for tasks_ in reply.values() for task in tasks_]
        running.get(timeout=TIMEOUT)
    finally:
        process.stop()
    assert [(t["id"], t["schema_name"]) for t in active] == [(running.id, "tenant1")]
