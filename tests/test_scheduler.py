"""TenantAwareScheduler and TenantAwarePersistentScheduler, driven through ``tick()``.

Messages are sent to Redis and read back from the test's own queue.
"""

from __future__ import annotations

import logging
import shelve
from datetime import datetime, timedelta
from typing import Any

import pytest
from celery.beat import ScheduleEntry
from django.utils import timezone

from tenant_schemas_celery.exceptions import TenantConfigurationError
from tenant_schemas_celery.scheduler import (
    TenantAwarePersistentScheduler,
    TenantAwareScheduleEntry,
    TenantAwareScheduler,
    expand_entry,
)
from tenant_schemas_celery.spread import spread_offset
from tests.beat_helpers import (
    TASK,
    beat_schedule,
    drain,
    drop_sql_tenants,
    due_scheduler,
    entry,
    every_tenant,
    make_due,
    run_due,
    schemas_of,
    sql_tenants,
    statements,
)
from tests.project.celery import app

pytestmark = pytest.mark.usefixtures("beat_db")


# Entry names and validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"tenant_schemas": ["public", "tenant1"]}, ["job@public", "job@tenant1"]),
        ({"tenant_schemas": "tenant1"}, ["job@tenant1"]),
        ({}, ["job@__all_tenants_only__"]),
        ({"tenant_schemas": []}, []),
    ],
)
def test_entry_names_follow_the_pypi_scheme(fields: dict[str, Any], names: list[str]) -> None:
    assert sorted(expand_entry("job", {"task": TASK, "schedule": 60, **fields})) == names


def test_a_per_schema_entry_carries_its_schema_header() -> None:
    expanded = expand_entry(
        "job",
        {"task": TASK, "schedule": 60, "options": {"headers": {"x": 1}}, "tenant_schemas": ["t1"]},
    )
    assert expanded["job@t1"]["options"]["headers"] == {"x": 1, "_schema_name": "t1"}
    assert "tenant_schemas" not in expanded["job@t1"]  # Celery's fields only


def test_targets_and_spread_are_kept_as_headers() -> None:
    # The entry sent to every tenant has the PyPI package's marker header; a
    # tenant_schemas entry drops a stale one, and the reverse.
    fields = {"task": TASK, "schedule": 60, "tenant_spread_seconds": 30}
    stale = {"options": {"headers": {"_schema_name": "t9", "_all_tenants_only": True}}}
    every = expand_entry("job", {**fields, **stale})["job@__all_tenants_only__"]
    assert every["options"]["headers"] == {"_all_tenants_only": True, "_tenant_spread_seconds": 30}
    listed = expand_entry("job", {**fields, **stale, "tenant_schemas": ["t1"]})["job@t1"]
    assert listed["options"]["headers"] == {"_schema_name": "t1", "_tenant_spread_seconds": 30}
    entry = TenantAwareScheduleEntry(name="job@t1", app=app, **listed)
    assert (entry.tenant_schemas, entry.tenant_spread_seconds) == (("t1",), 30)


def test_celery_builtin_tasks_run_once_in_public() -> None:
    expanded = expand_entry(
        "celery.backend_cleanup", {"task": "celery.backend_cleanup", "schedule": 60}
    )
    assert list(expanded) == ["celery.backend_cleanup"]
    assert expanded["celery.backend_cleanup"]["options"]["headers"] == {"_schema_name": "public"}


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"tenant_schemas": ["pg_catalog"]}, TenantConfigurationError),
        ({"tenant_schemas": ["a'b"]}, TenantConfigurationError),
        ({"tenant_schemas": 3}, TenantConfigurationError),
        ({"tenant_spread_seconds": -1}, TenantConfigurationError),
        ({"tenant_spread_seconds": "300"}, TenantConfigurationError),
        # Celery cannot compute these ETAs: OverflowError at every send before the cap
        ({"tenant_spread_seconds": float("inf")}, TenantConfigurationError),
        ({"tenant_spread_seconds": 1e12}, TenantConfigurationError),
        ({"tenant_spread_seconds": 10**400}, TenantConfigurationError),
        ({"tenant_spread_seconds": 365 * 24 * 3600 + 1}, TenantConfigurationError),
    ],
)
def test_malformed_tenant_options_are_rejected(fields: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        expand_entry("job", {"task": TASK, "schedule": 60, **fields})


def test_a_bad_entry_is_logged_and_the_others_are_kept(beat_queue: str, caplog: Any) -> None:
    # Given one malformed entry among good ones
    schedule = {
        "bad": entry(beat_queue, tenant_schemas=["no'quote"]),
        "good": entry(beat_queue, tenant_schemas=["public"]),
    }
    # When beat starts, then it does not fail and schedules the good entry only
    scheduler = due_scheduler(schedule)
    assert "good@public" in scheduler.schedule
    assert not [name for name in scheduler.schedule if name.startswith("bad")]
    assert "beat: Ignoring schedule entry 'bad': tenant_schemas holds \"no'quote\", not a " in (
        caplog.text
    )


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"tenant_schemas": ["tenant1", ["x"]]}, "tenant_schemas holds ['x'], not a usable"),
        ({"tenant_spread_seconds": float("inf")}, "tenant_spread_seconds must be a number"),
    ],
)
def test_errors_name_the_entry_and_the_option(
    beat_queue: str, caplog: Any, fields: dict[str, Any], error: str
) -> None:
    scheduler = due_scheduler({"bad": entry(beat_queue, **fields)})
    run_due(scheduler)
    assert drain(beat_queue) == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(
        f"beat: Ignoring schedule entry 'bad': {error}"
    )


# Sending --------------------------------------------------------------------------------


def test_entry_without_tenant_schemas_runs_in_every_tenant(beat_queue: str) -> None:
    scheduler = due_scheduler({"job": entry(beat_queue)})
    run_due(scheduler)
    messages = drain(beat_queue)
    assert schemas_of(messages) == every_tenant()
    assert "public" not in schemas_of(messages)
    assert all(message["celery_beat_task"] for message in messages)


def test_tenant_schemas_entry_runs_in_those_schemas_public_included(beat_queue: str) -> None:
    # There is no Client row for the public schema: public is a valid target anyway.
    scheduler = due_scheduler({"job": entry(beat_queue, tenant_schemas=["public", "tenant2"])})
    run_due(scheduler)
    assert schemas_of(drain(beat_queue)) == ["public", "tenant2"]


def test_readme_readiness_example(beat_queue: str) -> None:
    # The README's subclass, with the test project's notion of "ready" (no `ready` field here).
    class MyTenantAwareScheduler(TenantAwareScheduler):
        @classmethod
        def get_queryset(cls) -> Any:
            return super().get_queryset().filter(name="TENANT1")

    schedule = {
        "all": entry(beat_queue),
        "listed": entry(beat_queue, tenant_schemas=["public", "tenant1", "tenant2"]),
    }
    scheduler = due_scheduler(schedule, MyTenantAwareScheduler)
    run_due(scheduler)
    assert schemas_of(drain(beat_queue)) == ["public", "tenant1", "tenant1"]


def test_tenant_without_a_schema_yet_is_skipped_and_logged_once(
    beat_queue: str, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="celery.beat")
    with sql_tenants("unmigrated", schema=False):
        scheduler = due_scheduler({"job": entry(beat_queue)})
        run_due(scheduler)
        make_due(scheduler)
        run_due(scheduler)
    assert schemas_of(drain(beat_queue)) == sorted(every_tenant() * 2)
    skipped = [r for r in caplog.records if "'unmigrated'" in r.getMessage()]
    assert len(skipped) == 1
    assert skipped[0].getMessage().startswith("beat: Skipping tenant schema 'unmigrated'")


def test_tenants_created_and_deleted_while_running_are_picked_up(beat_queue: str) -> None:
    tenants = every_tenant()
    scheduler = due_scheduler({"job": entry(beat_queue)})
    run_due(scheduler)
    assert schemas_of(drain(beat_queue)) == tenants
    # When a tenant is created, it gets the next due run
    with sql_tenants("newcomer"):
        make_due(scheduler)
        run_due(scheduler)
        assert schemas_of(drain(beat_queue)) == sorted([*tenants, "newcomer"])
    # And once deleted, it gets no more
    make_due(scheduler)
    run_due(scheduler)
    assert schemas_of(drain(beat_queue)) == tenants


def test_spread_gives_each_tenant_a_stable_offset(beat_queue: str) -> None:
    scheduler = due_scheduler({"job": entry(beat_queue, tenant_spread_seconds=300)})
    etas = []
    for _ in range(2):
        before = timezone.now()
        run_due(scheduler)
        etas.append({m["_schema_name"]: m["eta"] for m in drain(beat_queue)})
        for schema_name, eta in etas[-1].items():
            offset = spread_offset(schema_name, 300)
            delay = datetime.fromisoformat(eta) - before
            assert abs(delay.total_seconds() - offset) < 2
        make_due(scheduler)
    assert etas[0].keys() == set(every_tenant())


def test_entries_of_other_classes_go_to_their_schema_header(beat_queue: str) -> None:
    # Celery's own ScheduleEntry has no tenant options: it runs where its header says
    plain = ScheduleEntry(
        name="plain",
        task=TASK,
        schedule=timedelta(hours=1),
        options={"queue": beat_queue, "headers": {"_schema_name": "tenant1"}},
        app=app,
    )
    scheduler = due_scheduler({"plain": plain})
    run_due(scheduler)
    assert schemas_of(drain(beat_queue)) == ["tenant1"]


def test_failing_entry_is_logged_and_the_others_are_sent(beat_queue: str, caplog: Any) -> None:
    # Given an entry whose arguments cannot be serialized
    schedule = {
        "broken": entry(beat_queue, args=[object()], tenant_schemas=["tenant1"]),
        "fine": entry(beat_queue, tenant_schemas=["tenant2"]),
    }
    scheduler = due_scheduler(schedule)
    run_due(scheduler)
    assert schemas_of(drain(beat_queue)) == ["tenant2"]
    assert "beat: Sending 'broken@tenant1'" in caplog.text


def test_fan_out_queries_do_not_grow_with_tenants(beat_queue: str) -> None:
    tenants = len(every_tenant())
    scheduler = due_scheduler({"job": entry(beat_queue)})
    few = statements(lambda: run_due(scheduler))
    with sql_tenants(*(f"many{index:02d}" for index in range(20))):
        make_due(scheduler)
        many = statements(lambda: run_due(scheduler))
        assert len(drain(beat_queue)) == tenants + (tenants + 20)
    assert len(many) == len(few) == 1


# Persistence ----------------------------------------------------------------------------


def test_persistent_schedule_survives_restarts_and_config_changes(
    beat_queue: str, tmp_path: Any
) -> None:
    filename = str(tmp_path / "schedule")
    schedule = {
        "job": entry(beat_queue, tenant_schemas=["tenant1"]),
        "gone": entry(beat_queue, tenant_schemas=["tenant2"]),
    }
    first = due_scheduler(schedule, TenantAwarePersistentScheduler, schedule_filename=filename)
    run_due(first)
    ran_at = first.schedule["job@tenant1"].last_run_at
    first.close()
    assert schemas_of(drain(beat_queue)) == ["tenant1", "tenant2"]

    # When beat restarts with another config: "job" spreads and also runs in public,
    # "gone" is removed
    schedule = {
        "job": entry(beat_queue, tenant_schemas=["tenant1", "public"], tenant_spread_seconds=5)
    }
    with beat_schedule(schedule):
        second = TenantAwarePersistentScheduler(app=app, schedule_filename=filename)
    # Then the run history is kept and the entries follow the config
    assert sorted(second.schedule) == ["job@public", "job@tenant1"]
    kept = second.schedule["job@tenant1"]
    assert kept.last_run_at == ran_at
    assert kept.tenant_spread_seconds == 5
    run_due(second)
    second.close()
    assert drain(beat_queue) == []  # tenant1 ran just before; public counts from now

    with shelve.open(filename) as store:
        stored = store["entries"]["job@tenant1"]
    assert isinstance(stored, TenantAwareScheduleEntry)
    assert stored.tenant_schemas == ("tenant1",)


def test_entries_pickled_by_older_versions_still_load(beat_queue: str, tmp_path: Any) -> None:
    # Given a schedule file written by the PyPI package: same class path, Celery's 8
    # pickled fields (older releases added tenant_schemas as a 9th), its old marker header
    filename = str(tmp_path / "schedule")
    due_scheduler(
        {"job": entry(beat_queue)}, TenantAwarePersistentScheduler, schedule_filename=filename
    ).close()
    old = ScheduleEntry(
        name="job@__all_tenants_only__",
        task=TASK,
        schedule=timedelta(hours=1),
        options={"queue": beat_queue, "headers": {"_all_tenants_only": True}},
        last_run_at=timezone.now() - timedelta(days=2),
        total_run_count=7,
        app=app,
    )
    _, fields = old.__reduce__()
    assert TenantAwareScheduleEntry(*fields, ["tenant1"]).tenant_schemas is None  # 9 fields
    with shelve.open(filename, writeback=True) as store:
        store["entries"]["job@__all_tenants_only__"] = TenantAwareScheduleEntry(*fields)
    # When beat restarts, then the entry keeps its history and runs in every tenant
    with beat_schedule({"job": entry(beat_queue)}):
        second = TenantAwarePersistentScheduler(app=app, schedule_filename=filename)
    assert second.schedule["job@__all_tenants_only__"].total_run_count == 7
    run_due(second)
    messages = drain(beat_queue)
    second.close()
    assert schemas_of(messages) == every_tenant()
    assert all("_all_tenants_only" not in message for message in messages)


def test_drop_sql_tenants_is_idempotent() -> None:
    # The helper used above cleans up even after a failed test.
    drop_sql_tenants("never-created")
