"""TenantAwareDatabaseScheduler: django-celery-beat rows of every schema in one schedule.

Real PostgreSQL (public, tenant1, tenant2, plus tenants made by SQL) and Redis; the
scheduler is driven through ``tick()``, ``sync()`` and ``schedule``.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import PeriodicTask, PeriodicTasks
from django_tenants.utils import schema_context

from tenant_schemas_celery.db_scheduler import TenantAwareDatabaseScheduler
from tests.beat_helpers import (
    TASK,
    add_task,
    beat_schedule,
    drain,
    entry,
    every_tenant,
    flush_stats,
    make_due,
    run_due,
    schemas_of,
    sql_tenants,
    statements,
)
from tests.project.celery import app

pytestmark = pytest.mark.usefixtures("beat_db")


@pytest.fixture
def started() -> Any:
    """Start schedulers for the test (settled: rows they wrote read back); close them after."""
    schedulers: list[Any] = []

    def start(
        schedule: dict[str, Any] | None = None, cls: type = TenantAwareDatabaseScheduler
    ) -> Any:
        with beat_schedule(schedule or {}):
            scheduler = cls(app=app)
        schedulers.append(scheduler)
        scheduler.check_interval = 0
        flush_stats()
        with scheduler._lenient_conflicts():
            scheduler.schedule  # noqa: B018
        return scheduler

    yield start
    for scheduler in schedulers:
        scheduler.close()


def names(scheduler: Any) -> list[str]:
    """The scheduler's entries, without Celery's own ``celery.backend_cleanup``."""
    with scheduler._lenient_conflicts():
        return sorted(name for name in scheduler.schedule if not name.startswith("celery."))


def row(schema_name: str, name: str) -> PeriodicTask:
    with schema_context(schema_name):
        return PeriodicTask.objects.get(name=name)


def changed() -> None:
    """Let the next check see the writes made so far (see ``flush_stats``)."""
    flush_stats()


# One schedule over every schema ----------------------------------------------------------


def test_rows_of_every_schema_run_in_their_schema(beat_queue: str, started: Any) -> None:
    for schema_name in ("public", "tenant1", "tenant2"):
        add_task(schema_name, f"job@{schema_name}", queue=beat_queue)
    scheduler = started()
    assert names(scheduler) == ["job@public", "job@tenant1", "job@tenant2"]
    assert {scheduler.schedule[f"job@{s}"].schema_name for s in ("public", "tenant1")} == {
        "public",
        "tenant1",
    }
    make_due(scheduler)
    run_due(scheduler)
    messages = drain(beat_queue)
    assert {m["periodic_task_name"]: m["_schema_name"] for m in messages} == {
        "job@public": "public",
        "job@tenant1": "tenant1",
        "job@tenant2": "tenant2",
    }


def test_a_tenant_row_cannot_send_to_another_schema(beat_queue: str, started: Any) -> None:
    headers = json.dumps({"_schema_name": "tenant2", "_all_tenants_only": True})
    add_task("tenant1", "sneaky", queue=beat_queue, headers=headers)
    scheduler = started()
    make_due(scheduler)
    run_due(scheduler)
    assert schemas_of(drain(beat_queue)) == ["tenant1"]


def test_public_rows_may_target_a_schema_or_every_tenant_with_spread(
    beat_queue: str, started: Any
) -> None:
    # Rows as the PyPI package stored beat_schedule entries (they carry over)
    add_task("public", "one@tenant2", queue=beat_queue, headers='{"_schema_name": "tenant2"}')
    headers = '{"_all_tenants_only": true, "_tenant_spread_seconds": 60}'
    add_task("public", "all@__all_tenants_only__", queue=beat_queue, headers=headers)
    scheduler = started()
    make_due(scheduler)
    run_due(scheduler)
    messages = drain(beat_queue)
    assert schemas_of(messages) == sorted([*every_tenant(), "tenant2"])
    spread = [m for m in messages if m["periodic_task_name"].startswith("all@")]
    assert all(m["eta"] for m in spread)
    assert all("_all_tenants_only" not in m for m in messages)


def test_a_reload_does_not_send_again_what_already_ran(beat_queue: str, started: Any) -> None:
    add_task("tenant1", "job@tenant1", queue=beat_queue)
    scheduler = started()
    make_due(scheduler)
    run_due(scheduler)
    assert schemas_of(drain(beat_queue)) == ["tenant1"]
    # When another schema changes, the schedule is reloaded and the heap rebuilt
    add_task("tenant2", "new@tenant2", queue=beat_queue)
    changed()
    assert "new@tenant2" in scheduler.schedule
    run_due(scheduler)
    # Then job@tenant1, which just ran, is not sent again (nor is the new row, not due yet)
    assert drain(beat_queue) == []


# Duplicate names --------------------------------------------------------------------------


def test_duplicate_name_raises_from_schedule(started: Any) -> None:
    add_task("tenant1", "dup")
    add_task("tenant2", "dup")
    scheduler = started()  # starting does not raise
    with pytest.raises(ValueError) as raised:
        scheduler.schedule  # noqa: B018
    assert str(raised.value) == (
        "duplicate periodic task name: 'dup'. Previously seen in schema: 'tenant1'."
    )


def test_beat_loop_logs_duplicates_and_keeps_scheduling(
    beat_queue: str, caplog: Any, started: Any
) -> None:
    caplog.set_level(logging.ERROR, logger="celery.beat")
    add_task("tenant1", "dup", queue=beat_queue)
    add_task("tenant2", "dup", queue=beat_queue)
    add_task("tenant2", "other", queue=beat_queue)
    scheduler = started()
    make_due(scheduler)
    run_due(scheduler)
    messages = drain(beat_queue)
    assert sorted((m["periodic_task_name"], m["_schema_name"]) for m in messages) == [
        ("dup", "tenant1"),
        ("other", "tenant2"),
    ]
    errors = [r.getMessage() for r in caplog.records if "Duplicate" in r.getMessage()]
    assert errors
    assert errors[0].startswith("beat: Duplicate periodic task name 'dup' in schemas 'tenant1'")
    assert "'tenant2'" in errors[0]


# Bookkeeping in the row's own schema -----------------------------------------------------------


def test_run_count_is_saved_in_the_rows_schema_only(beat_queue: str, started: Any) -> None:
    # Given rows with the same primary key in tenant1 and tenant2
    ran = add_task("tenant1", "ran", queue=beat_queue)
    add_task("tenant2", "bystander", queue=beat_queue, id=ran.pk, enabled=False)
    scheduler = started()
    make_due(scheduler)
    run_due(scheduler)
    scheduler.sync()
    assert schemas_of(drain(beat_queue)) == ["tenant1"]
    ran = row("tenant1", "ran")
    bystander = row("tenant2", "bystander")
    assert (ran.total_run_count, bystander.total_run_count) == (1, 0)
    assert ran.last_run_at is not None and bystander.last_run_at is None


def test_static_entry_saves_its_runs_on_its_own_public_row(beat_queue: str, started: Any) -> None:
    schedule = {"static": entry(beat_queue, tenant_schemas=["tenant1"])}
    scheduler = started(schedule)
    static = row("public", "static@tenant1")
    assert json.loads(static.headers) == {"_schema_name": "tenant1"}
    # A tenant1 row shares the static row's primary key
    add_task("tenant1", "same-pk", queue=beat_queue, id=static.pk, enabled=False)
    make_due(scheduler)
    run_due(scheduler)
    scheduler.sync()
    assert schemas_of(drain(beat_queue)) == ["tenant1"]
    assert row("public", "static@tenant1").total_run_count == 1
    assert row("tenant1", "same-pk").total_run_count == 0


def test_static_entries_honour_tenant_schemas(beat_queue: str, started: Any) -> None:
    schedule = {
        "everyone": entry(beat_queue),
        "listed": entry(beat_queue, tenant_schemas=["public", "tenant2"]),
        "spread": entry(beat_queue, tenant_schemas=["tenant1"], tenant_spread_seconds=30),
    }
    scheduler = started(schedule)
    assert names(scheduler) == [
        "everyone@__all_tenants_only__",
        "listed@public",
        "listed@tenant2",
        "spread@tenant1",
    ]
    assert json.loads(row("public", "spread@tenant1").headers) == {
        "_schema_name": "tenant1",
        "_tenant_spread_seconds": 30.0,
    }
    make_due(scheduler)
    run_due(scheduler)
    messages = drain(beat_queue)
    assert sorted((m["periodic_task_name"].split("@")[0], m["_schema_name"]) for m in messages) == [
        *(("everyone", tenant) for tenant in every_tenant()),
        ("listed", "public"),
        ("listed", "tenant2"),
        ("spread", "tenant1"),
    ]


@pytest.mark.parametrize("schema_name", ["public", "tenant1"])
def test_one_off_task_runs_once_then_is_disabled_in_its_schema(
    beat_queue: str, schema_name: str, started: Any
) -> None:
    other = "tenant2"
    once = add_task(schema_name, f"once@{schema_name}", queue=beat_queue, one_off=True)
    add_task(other, "same-pk", queue=beat_queue, id=once.pk, one_off=True, enabled=False)
    scheduler = started()
    make_due(scheduler)
    run_due(scheduler)
    assert schemas_of(drain(beat_queue)) == [schema_name]
    # The next due check disables it, in its own schema only
    make_due(scheduler)
    run_due(scheduler)
    scheduler.sync()
    assert drain(beat_queue) == []
    once = row(schema_name, f"once@{schema_name}")
    assert (once.enabled, once.total_run_count) == (False, 0)
    assert row(other, "same-pk").last_run_at is None


def test_expired_task_is_disabled_in_its_schema(beat_queue: str, started: Any) -> None:
    past = timezone.now() - timedelta(minutes=1)
    expired = add_task("tenant1", "expired", queue=beat_queue, expires=past)
    add_task("tenant2", "same-pk", queue=beat_queue, id=expired.pk)
    scheduler = started()
    make_due(scheduler)
    run_due(scheduler)
    assert schemas_of(drain(beat_queue)) == ["tenant2"]
    assert row("tenant1", "expired").enabled is False
    assert row("tenant2", "same-pk").enabled is True


# Changes ---------------------------------------------------------------------------------


def test_created_edited_disabled_and_deleted_rows_are_picked_up(
    beat_queue: str, started: Any
) -> None:
    scheduler = started()
    assert "job" not in scheduler.schedule
    job = add_task("tenant2", "job", queue=beat_queue)
    changed()
    assert scheduler.schedule["job"].schema_name == "tenant2"
    with schema_context("tenant2"):
        job.kwargs = '{"edited": true}'
        job.save()
    changed()
    assert scheduler.schedule["job"].kwargs == {"edited": True}
    with schema_context("tenant2"):
        job.enabled = False
        job.save()
    changed()
    assert "job" not in scheduler.schedule
    with schema_context("tenant2"):
        job.enabled = True
        job.save()
        changed()
        assert "job" in scheduler.schedule
        job.delete()
    changed()
    assert "job" not in scheduler.schedule


def test_orm_changes_are_seen_by_the_next_check_at_once(beat_queue: str, started: Any) -> None:
    """Changes through the ORM reach PostgreSQL's statistics when their transaction ends.

    PostgreSQL 15+ holds back a connection's counters for up to 10 s when it published
    them less than a second before: back-to-back edits, with no ``flush_stats()``, are
    only seen at once because the library forces the publication.
    """
    if connection.pg_version < 150000:
        pytest.skip("PostgreSQL < 15 publishes counters every 0.5 s (statistics collector)")
    scheduler = started()
    job = add_task("tenant2", "job", queue=beat_queue)
    assert scheduler.schedule["job"].schema_name == "tenant2"
    for version in range(3):
        with schema_context("tenant2"):
            job.kwargs = json.dumps({"version": version})
            job.save()
        assert scheduler.schedule["job"].kwargs == {"version": version}
    with schema_context("tenant2"):
        job.delete()
    assert "job" not in scheduler.schedule


def test_schedule_sees_an_orm_change_at_the_next_read(beat_queue: str) -> None:
    """As django-celery-beat's ``DatabaseScheduler``: no interval between two reads."""
    if connection.pg_version < 150000:
        pytest.skip("PostgreSQL < 15 publishes counters every 0.5 s (statistics collector)")
    with beat_schedule({}):
        scheduler = TenantAwareDatabaseScheduler(app=app)  # its default check_interval
    try:
        job = add_task("tenant1", "job", queue=beat_queue)
        assert scheduler.schedule["job"].schema_name == "tenant1"
        with schema_context("tenant1"):
            job.kwargs = '{"edited": true}'
            job.save()
        assert scheduler.schedule["job"].kwargs == {"edited": True}
        add_task("public", "public-job", queue=beat_queue)
        assert "public-job" in scheduler.schedule
        # A duplicate name made the same way raises at that read
        add_task("tenant2", "job", queue=beat_queue)
        with pytest.raises(ValueError, match="duplicate periodic task name: 'job'"):
            scheduler.schedule  # noqa: B018
    finally:
        scheduler.close()


def test_the_beat_loop_checks_once_per_wake_up(beat_queue: str, started: Any) -> None:
    # A burst of due entries is sent without a check between two of them; the loop
    # checks again when it wakes up from sleeping.
    for index in range(5):
        add_task("tenant1", f"job{index}", queue=beat_queue)
    scheduler = started()
    scheduler.check_interval = 300  # only the wake-ups check, during this test
    make_due(scheduler)
    checks: list[int] = []
    survey = scheduler._survey
    scheduler._survey = lambda *args: checks.append(1) or survey(*args)  # type: ignore[method-assign]
    assert run_due(scheduler) == len(scheduler.schedule) == 6  # celery.backend_cleanup too
    assert len(checks) == 2  # the first tick, and the read just above
    add_task("tenant2", "late", queue=beat_queue)
    changed()
    scheduler.tick()  # woken up after a sleep: the change is seen
    assert len(checks) == 3
    assert "late" in scheduler._schedule
    assert len(drain(beat_queue)) == 5


def test_rows_are_picked_up_in_a_schema_without_change_tracking_row(
    beat_queue: str, started: Any
) -> None:
    scheduler = started()
    # A row inserted with SQL (no django-celery-beat signal), in a schema that has no
    # PeriodicTasks row at all
    add_task("tenant1", "template", queue=beat_queue)
    with schema_context("tenant1"):
        PeriodicTasks.objects.all().delete()
        template = PeriodicTask.objects.get(name="template")
    flush_stats()
    scheduler.schedule  # noqa: B018
    with connection.cursor() as cursor:
        cursor.execute(
            'INSERT INTO "tenant1".django_celery_beat_periodictask (name, task, args, kwargs, '
            "enabled, total_run_count, date_changed, description, interval_id, one_off, headers) "
            "VALUES ('raw', %s, '[]', '{}', true, 0, now(), '', %s, false, '{}')",
            [TASK, template.interval_id],
        )
    changed()
    assert scheduler.schedule["raw"].schema_name == "tenant1"


def test_every_schema_is_read_again_every_full_read_interval(beat_queue: str, started: Any) -> None:
    add_task("tenant1", "job", queue=beat_queue)
    scheduler = started()
    # An UPDATE with SQL: no change tracking, and no counter that a check reads
    with connection.cursor() as cursor:
        cursor.execute(
            'UPDATE "tenant1".django_celery_beat_periodictask SET kwargs = %s WHERE name = %s',
            ['{"raw": true}', "job"],
        )
    # Changes in another schema are read, the rest of the schedule is kept
    add_task("tenant2", "other", queue=beat_queue)
    changed()
    assert scheduler.schedule["other"].schema_name == "tenant2"
    assert scheduler.schedule["job"].kwargs == {}
    # Once full_read_interval has passed since the last full read, whatever was read
    # meanwhile, every schema is read
    scheduler.full_read_interval = 0
    assert scheduler.schedule["job"].kwargs == {"raw": True}


def test_a_full_read_keeps_the_entries_of_unchanged_rows(beat_queue: str, started: Any) -> None:
    add_task("tenant1", "same", queue=beat_queue)
    add_task("tenant1", "edited", queue=beat_queue)
    add_task("tenant2", "rescheduled", queue=beat_queue)
    scheduler = started()
    before = dict(scheduler.schedule)
    with connection.cursor() as cursor:  # untracked edits: only a full read sees them
        cursor.execute(
            'UPDATE "tenant1".django_celery_beat_periodictask SET kwargs = %s WHERE name = %s',
            ['{"raw": true}', "edited"],
        )
        cursor.execute(
            'UPDATE "tenant2".django_celery_beat_intervalschedule SET every = 7 '
            'WHERE id = (SELECT interval_id FROM "tenant2".django_celery_beat_periodictask '
            "WHERE name = 'rescheduled')"
        )
    scheduler.full_read_interval = 0
    after = scheduler.schedule
    # An unchanged row keeps its entry (no entry is built again for it)...
    assert after["same"] is before["same"]
    # ...an edited row or schedule gets a new one
    assert after["edited"] is not before["edited"]
    assert after["edited"].kwargs == {"raw": True}
    assert after["rescheduled"] is not before["rescheduled"]
    assert after["rescheduled"].schedule.run_every.total_seconds() == 7
    # A run counted and saved: the row read again matches the entry
    scheduler.full_read_interval = 300
    new_entry = scheduler.reserve(after["same"])
    scheduler.sync()
    scheduler.full_read_interval = 0
    assert scheduler.schedule["same"] is new_entry


def test_tenants_created_or_dropped_while_running(beat_queue: str, started: Any) -> None:
    scheduler = started()
    with sql_tenants("late"):
        add_task("late", "job@late", queue=beat_queue)
        changed()
        assert scheduler.schedule["job@late"].schema_name == "late"
    assert "job@late" not in scheduler.schedule


def test_readiness_and_get_queryset_apply(beat_queue: str, caplog: Any, started: Any) -> None:
    caplog.set_level(logging.WARNING, logger="celery.beat")

    class ReadyOnly(TenantAwareDatabaseScheduler):
        @classmethod
        def get_queryset(cls) -> Any:
            return super().get_queryset().exclude(schema_name="tenant2")

    add_task("tenant1", "job@tenant1", queue=beat_queue)
    add_task("tenant2", "job@tenant2", queue=beat_queue)
    with sql_tenants("no_tables", beat_tables=False), sql_tenants("no_schema", schema=False):
        scheduler = started(cls=ReadyOnly)
        assert names(scheduler) == ["job@tenant1"]
        scheduler.schedule  # noqa: B018
    logged = [r.getMessage() for r in caplog.records]
    assert sum("'no_tables'" in message for message in logged) == 1
    assert sum("'no_schema'" in message for message in logged) == 1


def test_a_broken_schema_is_skipped_and_the_others_load(
    beat_queue: str, caplog: Any, started: Any
) -> None:
    # Given a schema whose task table lacks a column (a migration half-way)
    add_task("tenant1", "job@tenant1", queue=beat_queue)
    with sql_tenants("halfway"):
        with connection.cursor() as cursor:
            cursor.execute(
                'ALTER TABLE "halfway".django_celery_beat_periodictask DROP COLUMN headers'
            )
        scheduler = started()
        assert "job@tenant1" in scheduler.schedule
    assert "beat: Cannot read the beat tables of schema 'halfway'" in caplog.text


def test_database_errors_are_logged_and_the_loop_goes_on(caplog: Any, started: Any) -> None:
    class Failing(TenantAwareDatabaseScheduler):
        fail = False

        @classmethod
        def get_queryset(cls) -> Any:
            queryset = super().get_queryset()
            return queryset.extra(where=["no_such_column = 1"]) if cls.fail else queryset

    scheduler = started(cls=Failing)
    Failing.fail = True
    assert scheduler.tick() > 0
    assert "beat: Database error while checking for changes" in caplog.text
    Failing.fail = False
    assert scheduler.tick() > 0


# Scale ---------------------------------------------------------------------------------------


def test_statements_do_not_grow_with_tenants(beat_queue: str, started: Any) -> None:
    base = 1 + len(every_tenant())  # public and the tenants already there
    counts = {}
    for count in (14, 34):
        names = [f"scale{index:02d}" for index in range(count)]
        with sql_tenants(*names):
            for name in names:
                add_task(name, f"job@{name}", queue=beat_queue)
            scheduler = started()
            scheduler.batch_size = 10
            scheduler.read_connections = 1  # all statements on the connection counted here
            # A full read: a fixed number (one finding the empty task tables, which are not
            # read), plus 2 per batch of 10 schemas with rows
            scheduler.change_check.force_full_read()  # a full read is due
            full = statements(lambda scheduler=scheduler: scheduler.schedule)
            check = statements(lambda scheduler=scheduler: scheduler.schedule)
            with schema_context(names[0]):
                job = PeriodicTask.objects.get()
                job.kwargs = '{"x": 1}'
                job.save()
            changed()
            reload = statements(lambda scheduler=scheduler: scheduler.schedule)
            assert scheduler.schedule[f"job@{names[0]}"].kwargs == {"x": 1}
            counts[count] = (len(full), len(check), len(reload))
    # (the same whether public, tenant1 and tenant2 are read or skipped as empty)
    batches = {count: -(-(count + base) // 10) for count in counts}
    assert counts[34][0] - counts[14][0] == 2 * (batches[34] - batches[14]) == 4
    assert counts[14][1] == counts[34][1] == 1
    assert counts[14][2] == counts[34][2]


def test_a_check_without_change_fetches_one_row(beat_queue: str, started: Any) -> None:
    with sql_tenants("quiet_a", "quiet_b"):
        add_task("quiet_a", "job@quiet_a", queue=beat_queue)
        scheduler = started()
        scheduler.schedule  # noqa: B018 -- the first check after the full read
        # Nothing changed: one statement, one row (a digest), whatever the tenant count
        assert fetched(lambda: scheduler.schedule) == [1]
        add_task("quiet_b", "job@quiet_b", queue=beat_queue)
        changed()
        # A change: the digest differs, then every schema's signature is read (public,
        # quiet_a, quiet_b and the tenants other tests left)
        rows = fetched(lambda: scheduler.schedule)
        assert rows[0] == 1 and rows[1] >= 3
        assert scheduler.schedule["job@quiet_b"].schema_name == "quiet_b"
        assert fetched(lambda: scheduler.schedule) == [1]


def fetched(block: Any) -> list[int]:
    """Run ``block()``; return the number of rows of each statement it sent through Django."""
    counts: list[int] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)
        if not sql.startswith("SET search_path"):
            counts.append(context["cursor"].rowcount)
        return result

    with connection.execute_wrapper(record):
        block()
    return counts


def test_large_reads_skip_empty_task_tables(beat_queue: str, started: Any) -> None:
    with sql_tenants("idle_a", "idle_b", "busy_a"):
        add_task("busy_a", "job@busy_a", queue=beat_queue)
        scheduler = started()
        scheduler.batch_size = 1  # a large read: more schemas than batch_size
        scheduler.read_connections = 1
        names = ["idle_a", "idle_b", "busy_a"]
        rows: list[Any] = []
        sent = statements(lambda: rows.extend(scheduler.enabled_models(names)))
        assert [row.name for row in rows] == ["job@busy_a"]
        read = " ".join(sql for sql in sent if "pg_relation_size" not in sql)
        assert '"busy_a"' in read
        assert '"idle_a"' not in read and '"idle_b"' not in read
        # A row added later to an empty table is read, by the full read and by a reload
        add_task("idle_b", "job@idle_b", queue=beat_queue)
        assert {row.name for row in scheduler.enabled_models(names)} == {
            "job@busy_a",
            "job@idle_b",
        }
        changed()
        assert scheduler.schedule["job@idle_b"].schema_name == "idle_b"
