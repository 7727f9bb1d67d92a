"""The tenant fan-out composed with Celery's extension points and other schedulers.

* Every message goes through ``Scheduler.apply_async(entry, producer=..., advance=False)``,
  once per schema, with that schema active on django-tenants' connection, in the three
  schedulers of the package.
* ``TenantAwareSchedulerMixin`` on top of django-celery-beat's ``DatabaseScheduler`` (with
  authentik's entry class) and celery-redbeat's ``RedBeatScheduler`` keeps every
  ``beat_schedule`` entry and sends each to its tenants.

Real PostgreSQL and Redis; the schedulers are driven through ``tick()``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from tenant_schemas_celery.db_scheduler import TenantAwareDatabaseScheduler
from tenant_schemas_celery.scheduler import TenantAwarePersistentScheduler, TenantAwareScheduler
from tests.beat_compose_schedulers import AuthentikScheduler
from tests.beat_helpers import (
    TASK,
    add_task,
    beat_schedule,
    broker,
    drain,
    due_scheduler,
    entry,
    every_tenant,
    flush_stats,
    make_due,
    run_due,
    schemas_of,
    statements,
)
from tests.project.celery import app

pytestmark = pytest.mark.usefixtures("beat_db")


def recording(cls: type) -> type:
    """``cls`` with an ``apply_async`` that records each call, then sends as usual."""

    class Recording(cls):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.calls: list[tuple[str, str, str, bool, bool]] = []
            super().__init__(*args, **kwargs)

        def apply_async(
            self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
        ) -> Any:
            self.calls.append(
                (
                    entry.name,
                    connection.schema_name,
                    entry.options["headers"].get("_schema_name"),
                    advance,
                    producer is not None,
                )
            )
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)

    return Recording


@pytest.mark.parametrize("cls", [TenantAwareScheduler, TenantAwarePersistentScheduler])
def test_every_message_goes_through_apply_async_in_its_schema(
    cls: type, beat_queue: str, tmp_path: Any
) -> None:
    schedule = {
        "all": entry(beat_queue),
        "listed": entry(beat_queue, tenant_schemas=["public", "tenant2"]),
    }
    scheduler = due_scheduler(
        schedule, recording(cls), schedule_filename=str(tmp_path / "schedule")
    )
    connection.set_schema_to_public()
    run_due(scheduler)
    scheduler.close()
    tenants = every_tenant()
    assert sorted(scheduler.calls) == sorted(
        [("all@__all_tenants_only__", s, s, False, True) for s in tenants]
        + [(f"listed@{s}", s, s, False, True) for s in ("public", "tenant2")]
    )
    assert schemas_of(drain(beat_queue)) == sorted([*tenants, "public", "tenant2"])
    assert connection.schema_name == "public"  # the fan-out restores the active schema


def test_database_scheduler_rows_go_through_apply_async_in_their_schema(
    beat_queue: str,
) -> None:
    add_task("public", "row@public", queue=beat_queue)
    add_task("tenant1", "row@tenant1", queue=beat_queue)
    add_task("public", "row@all", queue=beat_queue, headers='{"_all_tenants_only": true}')
    schedule = {"code": entry(beat_queue, tenant_schemas=["tenant2"])}
    with beat_schedule(schedule):
        scheduler = recording(TenantAwareDatabaseScheduler)(app=app)
    try:
        flush_stats()
        make_due(scheduler)
        run_due(scheduler)
    finally:
        scheduler.close()
    calls = [call for call in scheduler.calls if not call[0].startswith("celery.")]
    tenants = every_tenant()
    assert sorted(calls) == sorted(
        [
            ("row@public", "public", "public", False, True),
            ("row@tenant1", "tenant1", "tenant1", False, True),
            ("code@tenant2", "tenant2", "tenant2", False, True),
        ]
        + [("row@all", s, s, False, True) for s in tenants]
    )
    messages = [m for m in drain(beat_queue) if not m["periodic_task_name"].startswith("celery.")]
    assert schemas_of(messages) == sorted(["public", "tenant1", "tenant2", *tenants])


@pytest.mark.skipif(
    not hasattr(__import__("kombu").Producer, "batch"),
    reason="this kombu has no Producer.batch: messages are sent one by one",
)
def test_apply_async_sends_keep_one_producer_and_the_pipelined_writes(beat_queue: str) -> None:
    scheduler = recording(TenantAwareScheduler)(app=app, lazy=True)
    producer = scheduler.producer
    publishes: list[Any] = []
    batches: list[int] = []
    publish, batch = producer.publish, producer.batch
    producer.publish = lambda *args, **kwargs: publishes.append(1) or publish(*args, **kwargs)
    producer.batch = lambda size: batches.append(size) or batch(size)
    every = scheduler.Entry(
        name="job@__all_tenants_only__",
        task=TASK,
        schedule=3600,
        options={"queue": beat_queue, "headers": {"_all_tenants_only": True}},
        app=app,
    )
    sent = statements(lambda: scheduler.apply_entry(every, producer=producer))
    scheduler.close()
    tenants = every_tenant()
    assert len(sent) == 1  # the tenants, with their schemas' existence; none per tenant
    assert batches == [1000] and len(publishes) == len(tenants)
    assert {call[4] for call in scheduler.calls} == {True}  # each call got the producer
    assert schemas_of(drain(beat_queue)) == tenants


def test_the_scheduler_syncs_after_a_fan_out_in_the_schema_active_before(
    beat_queue: str,
) -> None:
    # Celery's apply_async syncs when it is time to; in the middle of a fan-out a tenant
    # schema is active, where a base scheduler's unqualified writes would land.
    class Syncing(TenantAwareScheduler):
        sync_every = 0  # time to sync at every message

        def sync(self) -> None:
            self.synced_in = [*getattr(self, "synced_in", []), connection.schema_name]

    scheduler = due_scheduler({"all": entry(beat_queue)}, Syncing)
    connection.set_schema_to_public()
    scheduler.synced_in = []
    run_due(scheduler)
    assert len(drain(beat_queue)) == len(every_tenant())
    assert scheduler.synced_in and set(scheduler.synced_in) == {"public"}


# Other schedulers -------------------------------------------------------------------------


def test_mixin_over_database_scheduler_keeps_every_entry(beat_queue: str, caplog: Any) -> None:
    schedule = {
        "all": entry(beat_queue),
        "listed": entry(beat_queue, tenant_schemas=["public", "tenant1"]),
    }
    with beat_schedule(schedule):
        scheduler = AuthentikScheduler(app=app)
    try:
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert {"all@__all_tenants_only__", "listed@public", "listed@tenant1"} <= set(
            scheduler.schedule
        )
        assert "celery.backend_cleanup" in scheduler.schedule
        assert scheduler.schedule["all@__all_tenants_only__"].options["headers"][
            "_all_tenants_only"
        ]
        make_due(scheduler)
        run_due(scheduler)
    finally:
        scheduler.close()
    messages = drain(beat_queue)
    assert schemas_of(messages) == sorted([*every_tenant(), "public", "tenant1"])
    assert all("_all_tenants_only" not in message for message in messages)
    cleanup = drain(app.conf.task_default_queue)
    assert {m["_schema_name"] for m in cleanup if m["task"] == "celery.backend_cleanup"} == {
        "public"
    }


@pytest.fixture
def redbeat_app() -> Iterator[str]:
    """The test app configured for celery-redbeat, with its own key prefix."""
    pytest.importorskip("redbeat")
    prefix = f"tsc-redbeat-{uuid.uuid4().hex[:8]}:"
    settings = {
        "redbeat_redis_url": app.conf.broker_url,
        "redbeat_key_prefix": prefix,
        "redbeat_lock_key": None,
    }
    previous = {key: app.conf.get(key) for key in settings}
    app.conf.update(settings)
    try:
        yield prefix
    finally:
        app.conf.update(previous)
        for attribute in ("redbeat_conf", "redbeat_redis"):
            app.__dict__.pop(attribute, None)
        client = broker()
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


def test_mixin_over_redbeat_keeps_every_entry(beat_queue: str, redbeat_app: str) -> None:
    from redbeat.schedulers import RedBeatSchedulerEntry

    from tests.beat_redbeat_scheduler import TenantRedBeatScheduler

    schedule = {
        "all": entry(beat_queue),
        "listed": entry(beat_queue, tenant_schemas=["public", "tenant1"]),
    }
    with beat_schedule(schedule):
        scheduler = recording(TenantRedBeatScheduler)(app=app)
        stored = {key.decode() for key in broker().scan_iter(f"{redbeat_app}*@*")}
        assert stored == {
            f"{redbeat_app}all@__all_tenants_only__",
            f"{redbeat_app}listed@public",
            f"{redbeat_app}listed@tenant1",
        }
        long_ago = timezone.now() - timedelta(days=2)
        for key in stored:  # due now (a new entry first runs one interval from now)
            RedBeatSchedulerEntry.from_key(key, app=app).reschedule(long_ago)
        scheduler.tick()
        scheduler.close()
    tenants = every_tenant()
    assert schemas_of(drain(beat_queue)) == sorted([*tenants, "public", "tenant1"])
    fanned = [call for call in scheduler.calls if not call[3]]
    assert sorted(fanned) == sorted(
        [("all@__all_tenants_only__", s, s, False, True) for s in tenants]
        + [(f"listed@{s}", s, s, False, True) for s in ("public", "tenant1")]
    )
    # The next run is due in an hour: redbeat saved each entry's run
    with beat_schedule(schedule):
        scheduler = TenantRedBeatScheduler(app=app)
    assert scheduler.tick() > 0
    scheduler.close()
    assert drain(beat_queue) == []


# End to end: a real celery beat and worker ------------------------------------------------


def e2e_runs(scheduler: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Run ``celery beat -S scheduler`` (the "rows" schedule: one entry for every tenant)
    and a worker until three due runs ran; return the runs and check each ran once."""
    from tests.test_beat_e2e import (
        EVERY_TENANT,
        WANTED_RUNS,
        assert_each_message_ran_once,
        beat_and_worker,
        dues,
        recorded,
        stop_and_drain,
        wait_for,
    )

    key = f"tsc-tests:beat-compose:{uuid.uuid4().hex[:8]}"
    with beat_and_worker(key, scheduler, schedule="rows", env=env) as beat:
        wait_for(lambda: len(dues(recorded(key), EVERY_TENANT)) >= WANTED_RUNS + 1, beat)
        runs, sent = stop_and_drain(beat, key)
        log = beat.log()
    assert "Ignoring schedule entry" not in log and "Traceback" not in log, log
    assert_each_message_ran_once(runs, sent)
    return runs


@pytest.mark.integration
def test_real_beat_with_the_mixin_over_database_scheduler() -> None:
    from tests.test_beat_e2e import EVERY_TENANT, WANTED_RUNS, by_due

    runs = e2e_runs("tests.beat_compose_schedulers.AuthentikScheduler")
    tenants = every_tenant()
    complete = [s for (entry, _), s in by_due(runs).items() if entry == EVERY_TENANT]
    assert len(complete) >= WANTED_RUNS and complete.count(tenants) >= WANTED_RUNS, complete


@pytest.mark.integration
def test_real_beat_with_the_mixin_over_redbeat(redbeat_app: str) -> None:
    from tests.test_beat_e2e import EVERY_TENANT, WANTED_RUNS, by_due

    runs = e2e_runs(
        "tests.beat_redbeat_scheduler.TenantRedBeatScheduler",
        {"TSC_REDBEAT_PREFIX": redbeat_app},
    )
    tenants = every_tenant()
    complete = [s for (entry, _), s in by_due(runs).items() if entry == EVERY_TENANT]
    assert len(complete) >= WANTED_RUNS and complete.count(tenants) >= WANTED_RUNS, complete
