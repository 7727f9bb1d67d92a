"""The web side of tests/test_results.py, run as its own process with django-celery-results.

    TSC_RESULTS_LAYOUT=shared|both|tenant TSC_PG_DB=... python -m tests.results_probe setup
    TSC_RESULTS_LAYOUT=shared|both|tenant TSC_PG_DB=... python -m tests.results_probe run POOL

``setup`` migrates the (empty) database and creates the tenants; ``run`` sends tasks from
tenant1 (a worker of the same settings consumes them), reads each back as a web request of
tenant1 would (``schema_context``: ``AsyncResult.state`` and ``get()``), finds the schemas
whose ``django_celery_results_taskresult`` table holds the task's row, and prints one JSON
line: {case: {"stored": {schema: status}, "tenant_reads": state, "get": value}}.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.project.settings")

import django

django.setup()

from celery.result import AsyncResult  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django_tenants.utils import schema_context  # noqa: E402

from tests.project import deploy_tasks  # noqa: E402
from tests.project.celery import app  # noqa: E402
from tests.project.customers.models import Client, Domain  # noqa: E402

SCHEMAS = ("public", "tenant1", "tenant2")


def setup() -> None:
    call_command("migrate_schemas", shared=True, verbosity=0)
    for name in SCHEMAS[1:]:
        tenant = Client(schema_name=name, name=name.upper())
        tenant.save(verbosity=0)
        Domain.objects.create(domain=f"{name}.example.com", tenant=tenant, is_primary=True)


def stored(task_id: str) -> dict[str, str]:
    """schema -> status of the task's row, for every schema whose results table has it."""
    found = {}
    with schema_context("public"), connection.cursor() as cursor:
        for name in SCHEMAS:
            cursor.execute("SELECT to_regclass(%s)", [f'"{name}".django_celery_results_taskresult'])
            if cursor.fetchone()[0] is None:
                continue
            cursor.execute(
                f'SELECT status FROM "{name}".django_celery_results_taskresult WHERE task_id = %s',
                [task_id],
            )
            row = cursor.fetchone()
            if row is not None:
                found[name] = row[0]
    return found


def tenant_reads(task_id: str, get_timeout: float = 0.0) -> dict[str, Any]:
    """What a web request of tenant1 sees: the state, and get()'s value (or its error)."""
    with schema_context("tenant1"):
        result = AsyncResult(task_id, app=app)
        value: Any = None
        if get_timeout:
            try:
                value = repr(result.get(timeout=get_timeout, propagate=False, interval=0.1))
            except Exception as exc:  # a timeout: the request cannot see the result
                value = f"{type(exc).__name__}"
        state = AsyncResult(task_id, app=app).state
    return {"stored": stored(task_id), "tenant_reads": state, "get": value}


def wait_stored(task_id: str, status: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while status not in stored(task_id).values() and time.monotonic() < deadline:
        time.sleep(0.1)


def revoke() -> dict[str, Any]:
    """Revoke a task of tenant1 before it arrives, after a task of tenant2 ran; read it back.

    The worker writes REVOKED outside any task: at the revoke (Celery 5.7) and when the
    message arrives and is discarded.
    """
    with schema_context("tenant2"):
        deploy_tasks.result_ok.delay().get(timeout=30)
    task_id = str(uuid.uuid4())
    app.control.revoke(task_id)
    wait_stored(task_id, "REVOKED", timeout=5)  # the worker has seen the revoke (Celery 5.7)
    time.sleep(0.5)
    with schema_context("tenant1"):
        deploy_tasks.result_ok.apply_async(task_id=task_id)
    wait_stored(task_id, "REVOKED", timeout=8)
    time.sleep(1)
    return tenant_reads(task_id, get_timeout=2)


def run(pool: str, main_process_writes: bool = True) -> dict[str, Any]:
    report: dict[str, Any] = {}
    # received: a task prefetched while the worker's only process is busy (tenant2's task)
    with schema_context("tenant2"):
        deploy_tasks.result_sleep.delay(3)
    with schema_context("tenant1"):
        queued = deploy_tasks.result_ok.delay()
    time.sleep(1)
    report["received"] = tenant_reads(queued.id)
    with schema_context("tenant1"):
        queued.get(timeout=30)
    if main_process_writes:
        report["revoked"] = revoke()
    # started (track_started)
    with schema_context("tenant1"):
        started = deploy_tasks.result_started.delay(3)
    wait_stored(started.id, "STARTED")
    report["started"] = tenant_reads(started.id)
    with schema_context("tenant1"):
        started.get(timeout=30)
    with schema_context("tenant1"):
        ok = deploy_tasks.result_ok.delay()
        failed = deploy_tasks.result_fail.delay()
    report["success"] = tenant_reads(ok.id, get_timeout=20)
    report["failure"] = tenant_reads(failed.id, get_timeout=20)
    if pool == "prefork" and main_process_writes:
        # a hard time limit: the main process records the failure
        with schema_context("tenant1"):
            limited = deploy_tasks.result_time_limit.delay()
        wait_stored(limited.id, "FAILURE", timeout=8)
        report["failure_time_limit"] = tenant_reads(limited.id, get_timeout=2)
    return report


if __name__ == "__main__":
    if sys.argv[1] == "setup":
        setup()
    elif sys.argv[1] == "revoke":
        print(json.dumps(revoke()))
    else:
        writes = "--task-writes-only" not in sys.argv
        print(json.dumps(run(sys.argv[2], main_process_writes=writes)))
