"""beat_sql: the database scheduler's statements, against the real PostgreSQL.

Schemas are public, tenant1, tenant2 and tenants made by SQL (see ``beat_helpers``).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.db import DatabaseError, InterfaceError, connection
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks
from django_tenants.utils import schema_context

from tenant_schemas_celery._sql import queryset_sql
from tenant_schemas_celery.beat_sql import (
    by_schema,
    counters_tracked,
    logged_database_errors,
    read_enabled,
    read_signatures,
    schema_of,
    schemas_with_task_pages,
    select_per_schema,
    signatures_sql,
    update_row,
)
from tenant_schemas_celery.targets import tenant_queryset
from tests.beat_helpers import TASK, add_task, flush_stats, sql_tenants, statements

pytestmark = pytest.mark.usefixtures("beat_db")

#: One row per schema: its name and the number of its periodic tasks.
COUNT_TASKS = 'SELECT %s, count(*) FROM {schema}."django_celery_beat_periodictask"'


def survey(known: str | None = None) -> tuple[str, dict[str, Any] | None]:
    sql, params = signatures_sql("public", *queryset_sql(tenant_queryset(), "schema_name"))
    with connection.cursor() as cursor:
        return read_signatures(cursor, sql, params, known)


# The change check -------------------------------------------------------------------------


def test_signatures_of_every_schema_and_their_digest() -> None:
    with sql_tenants("sig_bare", beat_tables=False), sql_tenants("sig_full"):
        flush_stats()
        digest, found = survey()
        assert found is not None
        assert {"public", "tenant1", "tenant2", "sig_bare", "sig_full"} <= found.keys()
        assert found["sig_bare"] is None  # no beat tables
        assert len(found["sig_full"]) == 4
        # The same digest: one statement, the signatures not read
        sent = statements(lambda: survey(digest))
        assert len(sent) == 1 and survey(digest) == (digest, None)
        # A row added: another digest, and that schema's signature only differs
        add_task("sig_full", "job")
        flush_stats()
        changed, again = survey(digest)
        assert changed != digest and again is not None
        assert again["sig_full"] != found["sig_full"]
        assert again["public"] == found["public"]


def test_counters_are_tracked() -> None:
    assert counters_tracked(connection) is True


# Reading rows -----------------------------------------------------------------------------


def test_select_per_schema_reads_a_batch_in_one_statement() -> None:
    add_task("tenant1", "one")
    names = ["public", "tenant1", "tenant2"]
    rows: list[Any] = []
    with connection.cursor() as cursor:
        sent = statements(
            lambda: rows.extend(select_per_schema(cursor, names, 10, COUNT_TASKS, lambda n: [n]))
        )
    assert len(sent) == 1
    assert rows == [("public", 0), ("tenant1", 1), ("tenant2", 0)]


def test_a_failing_batch_is_read_one_by_one(caplog: Any) -> None:
    caplog.set_level(logging.ERROR, logger="celery.beat")
    add_task("tenant1", "one")
    with sql_tenants("no_beat", beat_tables=False), connection.cursor() as cursor:
        rows = select_per_schema(
            cursor, ["public", "no_beat", "tenant1"], 10, COUNT_TASKS, lambda n: [n]
        )
    assert rows == [("public", 0), ("tenant1", 1)]
    errors = [message for (_, _, message) in caplog.record_tuples]
    assert len(errors) == 1
    assert errors[0].startswith("beat: Cannot read the beat tables of schema 'no_beat': ")


def test_rows_carry_their_schema_and_the_schedule_of_that_schema() -> None:
    # Given interval rows with the same primary key in two schemas
    for schema_name, every in (("tenant1", 60), ("tenant2", 120)):
        with schema_context(schema_name):
            IntervalSchedule.objects.create(id=9001, every=every, period="seconds")
            PeriodicTask.objects.create(name=f"job@{schema_name}", task=TASK, interval_id=9001)
            PeriodicTask.objects.create(name="off", task=TASK, interval_id=9001, enabled=False)
    connection.set_schema_to_public()
    rows = read_enabled(connection, ["tenant1", "tenant2"], 1)
    assert sorted((schema_of(r), r.name, r.interval.every) for r in rows) == [
        ("tenant1", "job@tenant1", 60),
        ("tenant2", "job@tenant2", 120),
    ]
    grouped = by_schema(rows, ["public", "tenant1", "tenant2"])
    assert {name: [r.name for r in part] for name, part in grouped.items()} == {
        "public": [],
        "tenant1": ["job@tenant1"],
        "tenant2": ["job@tenant2"],
    }


def test_empty_task_tables_are_found_without_reading_them() -> None:
    with sql_tenants("pages_empty", "pages_busy"), connection.cursor() as cursor:
        add_task("pages_busy", "job")
        connection.set_schema_to_public()
        assert schemas_with_task_pages(cursor, ["pages_empty", "pages_busy"]) == ["pages_busy"]


# Writing rows -----------------------------------------------------------------------------


def test_update_row_writes_its_schema_only_and_may_mark_the_change() -> None:
    ran = add_task("tenant1", "ran")
    add_task("tenant2", "bystander", id=ran.pk)
    with schema_context("tenant1"):
        before = PeriodicTasks.last_change()
    update_row("tenant1", ran.pk, {"total_run_count": 5})
    with schema_context("tenant1"):
        assert PeriodicTask.objects.get(pk=ran.pk).total_run_count == 5
        assert PeriodicTasks.last_change() == before
    update_row("tenant1", ran.pk, {"enabled": False}, signal_change=True)
    with schema_context("tenant1"):
        row = PeriodicTask.objects.get(pk=ran.pk)
        assert row.enabled is False and row.date_changed > ran.date_changed
        assert PeriodicTasks.last_change() == row.date_changed
    with schema_context("tenant2"):
        other = PeriodicTask.objects.get(pk=ran.pk)
        assert (other.total_run_count, other.enabled) == (0, True)


# Database errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "interface_error", "logged"),
    [
        (DatabaseError("down"), "warned", (logging.ERROR, "failed: DatabaseError('down')")),
        (InterfaceError("lost"), "warned", (logging.WARNING, "warned")),
        (InterfaceError("lost"), None, (logging.ERROR, "failed: InterfaceError('lost')")),
    ],
)
def test_database_errors_are_logged_and_the_block_left(
    caplog: Any, raised: Exception, interface_error: str | None, logged: tuple[int, str]
) -> None:
    caplog.set_level(logging.WARNING, logger="celery.beat")
    with logged_database_errors("failed: %r", interface_error) as attempt:
        raise raised
    assert attempt.failed
    assert caplog.record_tuples == [("celery.beat", *logged)]


def test_other_errors_propagate(caplog: Any) -> None:
    with logged_database_errors("failed: %r") as attempt:
        pass
    assert not attempt.failed
    with pytest.raises(ValueError), logged_database_errors("failed: %r"):
        raise ValueError("not the database")
    assert caplog.record_tuples == []
