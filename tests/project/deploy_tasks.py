"""Tasks of the deployment tests (connections, async code, results).

Workers load them with ``celery worker -I tests.project.deploy_tasks``.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.db import connection
from django_tenants.utils import tenant_context

from tests.project.celery import app
from tests.project.notes.models import Note


def seen_here() -> dict[str, Any]:
    """What the ORM sees on the calling thread: schema, server search_path, notes."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('search_path'), pg_backend_pid()")
        search_path, pid = cursor.fetchone()
    return {
        "schema": connection.schema_name,
        "search_path": search_path,
        "pid": pid,
        "notes": sorted(Note.objects.values_list("text", flat=True)),
        "thread": threading.get_ident(),
    }


@app.task
def session_info() -> dict[str, Any]:
    """The task's schema, its PostgreSQL session (backend pid) and what it reads."""
    return seen_here()


def _in_tenant(tenant: Any, func: Any) -> Any:
    with tenant_context(tenant):
        return func()


async def _orm_from_async(thread_sensitive: bool, tenant: Any = None) -> dict[str, Any]:
    func = seen_here if tenant is None else functools.partial(_in_tenant, tenant, seen_here)
    return await sync_to_async(func, thread_sensitive=thread_sensitive)()


@app.task
def async_orm(mode: str) -> dict[str, Any]:
    """Run the ORM from async code in the task body, as ``mode`` says; report where it ran."""
    task_thread = threading.get_ident()
    if mode == "async_to_sync":  # sync_to_async's default: thread_sensitive=True
        seen = async_to_sync(_orm_from_async)(True)
    elif mode == "thread_sensitive_false":
        seen = async_to_sync(_orm_from_async)(False)
    elif mode == "asyncio_run":
        seen = asyncio.run(_orm_from_async(True))
    elif mode == "tenant_context_inside":  # the workaround for the two above
        seen = async_to_sync(_orm_from_async)(False, connection.tenant)
    else:
        raise ValueError(mode)
    return {**seen, "same_thread": seen["thread"] == task_thread, "task": connection.schema_name}


@app.task(bind=True)
def result_sleep(self: Any, seconds: float) -> str:
    time.sleep(seconds)
    return connection.schema_name


@app.task(bind=True, track_started=True)
def result_started(self: Any, seconds: float) -> str:
    time.sleep(seconds)
    return connection.schema_name


@app.task
def result_ok() -> str:
    return connection.schema_name


@app.task
def result_fail() -> None:
    raise ValueError(f"failed in {connection.schema_name}")


@app.task(time_limit=1)
def result_time_limit() -> None:
    time.sleep(30)
