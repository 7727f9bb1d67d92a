"""Helpers of the beat tests: schedulers driven in-process, messages read back from Redis.

Tenants made here are cheap: a ``Client`` row inserted with ``bulk_create`` (no
schema is created for it) and, when asked, a schema holding copies of public's
django-celery-beat tables, made by SQL.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
    SolarSchedule,
)
from django_tenants.utils import schema_context

from tenant_schemas_celery._sql import quote_ident
from tenant_schemas_celery.scheduler import TenantAwareScheduler
from tests.project.celery import app
from tests.project.customers.models import Client

#: The task the beat tests schedule (it is never run by a worker in these tests).
TASK = "tests.project.notes.tasks.whereami"
#: The schemas that have django-celery-beat tables in every test.
BASE_SCHEMAS = ("public", "tenant1", "tenant2")
_BEAT_MODELS = (PeriodicTask, PeriodicTasks, IntervalSchedule, CrontabSchedule, SolarSchedule)
#: django-celery-beat's tables, copied into the schemas of ``sql_tenants``.
BEAT_TABLES = [model._meta.db_table for model in (*_BEAT_MODELS, ClockedSchedule)]


def broker() -> redis.Redis:
    """The Redis database the test app sends to."""
    return redis.Redis.from_url(app.conf.broker_url)


def drain(queue: str) -> list[dict[str, Any]]:
    """Return the messages sent to ``queue`` (oldest first), removing them.

    Each message is its headers, plus ``args`` and ``kwargs`` decoded from the body, and
    ``periodic_task_name``, the name of the django-celery-beat row that sent it: a header
    from django-celery-beat 2.8 on, a message property before.
    """
    client = broker()
    raw = client.lrange(queue, 0, -1)
    client.delete(queue)
    messages = []
    for item in reversed(raw):  # kombu LPUSHes: the oldest message is last
        message = json.loads(item)
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        row = message.get("properties", {}).get("periodic_task_name")
        named = {} if row is None else {"periodic_task_name": row}
        messages.append({**named, **message["headers"], "args": args, "kwargs": kwargs})
    return messages


def entry(queue: str, **fields: Any) -> dict[str, Any]:
    """A ``beat_schedule`` item: ``TASK`` every hour, sent to ``queue``, with ``fields``."""
    return {"task": TASK, "schedule": 3600, "options": {"queue": queue}, **fields}


def due_scheduler(schedule: dict[str, Any], cls: type = TenantAwareScheduler, **kwargs: Any) -> Any:
    """A scheduler ``cls(app=app, **kwargs)`` of ``schedule`` (``beat_schedule``), all of it due."""
    with beat_schedule(schedule):
        scheduler = cls(app=app, **kwargs)
    make_due(scheduler)
    return scheduler


def schemas_of(messages: list[dict[str, Any]]) -> list[str]:
    """Return the ``_schema_name`` header of each message, sorted."""
    return sorted(message["_schema_name"] for message in messages)


def every_tenant() -> list[str]:
    """The tenants an entry without ``tenant_schemas`` goes to now: those with a schema.

    Other test modules may have left tenants of their own in the session database.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT c.schema_name FROM public.{quote_ident(Client._meta.db_table)} c "
            "JOIN pg_catalog.pg_namespace n ON n.nspname = c.schema_name "
            "WHERE c.schema_name <> 'public' ORDER BY 1"
        )
        return [name for (name,) in cursor.fetchall()]


def make_due(scheduler: Any) -> None:
    """Make every entry of ``scheduler`` due now (as if it last ran two days ago)."""
    long_ago = timezone.now() - timedelta(days=2)
    schedule = getattr(scheduler, "_schedule", None) or scheduler.schedule
    for entry in schedule.values():
        entry.last_run_at = long_ago
        model = getattr(entry, "model", None)
        if model is not None:
            model.last_run_at = long_ago
    scheduler._heap = None


def run_due(scheduler: Any, limit: int = 200) -> int:
    """Tick ``scheduler`` until nothing is due; return the number of ticks that sent."""
    for sent in range(limit):
        if scheduler.tick() > 0:
            return sent
    raise AssertionError("the scheduler kept finding due entries")


@contextmanager
def beat_schedule(schedule: dict[str, Any]) -> Iterator[None]:
    """Set the app's ``beat_schedule`` for the block."""
    previous = app.conf.beat_schedule
    app.conf.beat_schedule = schedule
    try:
        yield
    finally:
        app.conf.beat_schedule = previous


def flush_stats() -> None:
    """Make this connection's table activity visible to PostgreSQL's statistics now.

    A backend publishes its counters at most once a second (PostgreSQL 15+), and
    after a recent flush only when it has been idle for 10 s: beat's change check
    would see the tests' writes late without this.
    """
    if connection.pg_version < 150000:  # the statistics collector sends every 0.5 s
        time.sleep(0.6)
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")


def clear_beat_tables(*schema_names: str) -> None:
    """Delete every django-celery-beat row of the given schemas."""
    for schema_name in schema_names:
        with schema_context(schema_name):
            for model in _BEAT_MODELS:
                model.objects.all().delete()
            ClockedSchedule.objects.all().delete()


def add_task(
    schema_name: str,
    name: str,
    every: int = 3600,
    queue: str | None = None,
    task: str = TASK,
    **fields: Any,
) -> PeriodicTask:
    """Create an enabled periodic task of ``task`` in ``schema_name``, every ``every`` seconds."""
    with schema_context(schema_name):
        interval, _ = IntervalSchedule.objects.get_or_create(every=every, period="seconds")
        return PeriodicTask.objects.create(
            name=name, task=task, interval=interval, queue=queue, **fields
        )


def statements(block: Any) -> list[str]:
    """Run ``block()`` and return the SQL statements it sent through Django."""
    sent: list[str] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        sent.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        block()
    return [sql for sql in sent if not sql.startswith("SET search_path")]


@contextmanager
def sql_tenants(
    *schema_names: str, schema: bool = True, beat_tables: bool = True
) -> Iterator[list[str]]:
    """Tenants made by SQL: a ``Client`` row each and, if asked, a schema with beat tables."""
    Client.objects.bulk_create(
        [Client(schema_name=name, name=name.upper()) for name in schema_names]
    )
    try:
        with connection.cursor() as cursor:
            for name in schema_names if schema else ():
                cursor.execute(f"CREATE SCHEMA {quote_ident(name)}")
                for table in BEAT_TABLES if beat_tables else ():
                    cursor.execute(
                        f"CREATE TABLE {quote_ident(name)}.{quote_ident(table)} "
                        f"(LIKE public.{quote_ident(table)} INCLUDING ALL)"
                    )
        yield list(schema_names)
    finally:
        drop_sql_tenants(*schema_names)


def drop_sql_tenants(*schema_names: str) -> None:
    """Delete the tenants' rows and drop their schemas, if still there."""
    connection.set_schema_to_public()
    Client.objects.filter(schema_name__in=schema_names).delete()
    with connection.cursor() as cursor:
        for name in schema_names:
            cursor.execute(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")


@pytest.fixture
def beat_db(database: None) -> Iterator[None]:
    """The session database, with no django-celery-beat rows in public, tenant1 and tenant2.

    Afterwards, the messages left in the default queue are deleted too: the database
    scheduler installs django-celery-beat's ``celery.backend_cleanup`` row, which
    ``make_due`` sends there.
    """
    connection.set_schema_to_public()
    clear_beat_tables(*BASE_SCHEMAS)
    yield
    connection.set_schema_to_public()
    clear_beat_tables(*BASE_SCHEMAS)
    broker().delete(app.conf.task_default_queue)


@pytest.fixture
def beat_queue() -> Iterator[str]:
    """A fresh queue name for the messages a test sends; the queue is deleted afterwards."""
    name = f"tsc-beat-{uuid.uuid4().hex[:8]}"
    yield name
    broker().delete(name)
