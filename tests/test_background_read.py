"""TenantAwareDatabaseScheduler: large reads run in a background thread, off the beat loop.

Real PostgreSQL and Redis. ``batch_size = 1`` makes every read of several schemas a
large one. The reading thread's statements go through a ``Gate`` (an execute
wrapper on its connections) that holds them until the test opens it: the read stays
in flight for as long as the test needs, without any timing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import DatabaseError
from django.db.backends.signals import connection_created
from django_celery_beat.models import PeriodicTask
from django_tenants.utils import schema_context

from tenant_schemas_celery import internals
from tenant_schemas_celery.background_read import BackgroundRead
from tenant_schemas_celery.db_scheduler import TenantAwareDatabaseScheduler
from tests.beat_helpers import (
    TASK,
    add_task,
    beat_schedule,
    drain,
    flush_stats,
    make_due,
    run_due,
    schemas_of,
    sql_tenants,
)
from tests.project.celery import app

pytestmark = pytest.mark.usefixtures("beat_db")

WAIT = 30  # seconds: the longest a test waits for an event that must come


class Gate:
    """Hold the reading thread's statements (those holding ``match``) until ``open``;
    with ``fail``, the next one raises ``DatabaseError`` instead."""

    def __init__(self) -> None:
        self.match = ""
        self.opened = threading.Event()
        self.reached = threading.Event()
        self.fail = False
        self.statements = 0

    def open(self) -> None:
        self.opened.set()

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        reading = threading.current_thread().name.startswith("tsc-beat-read")
        if reading and not sql.startswith("SET search_path"):  # (its errors are ignored)
            self.statements += 1
            if self.match in sql:
                self.reached.set()
                assert self.opened.wait(WAIT)
                if self.fail:
                    self.fail = False
                    raise DatabaseError("the gate failed this statement")
        return execute(sql, params, many, context)


@pytest.fixture
def gate() -> Iterator[Gate]:
    """A closed ``Gate`` on every connection made while the test runs."""
    gate = Gate()

    def watch(sender: Any, connection: Any, **kwargs: Any) -> None:
        if gate not in connection.execute_wrappers:
            connection.execute_wrappers.append(gate)

    connection_created.connect(watch, weak=False)
    try:
        yield gate
    finally:
        gate.open()
        connection_created.disconnect(watch)


class Scheduler(TenantAwareDatabaseScheduler):
    batch_size = 1  # every read of several schemas is a large one
    read_connections = 1
    check_interval = 0


@pytest.fixture
def schedulers() -> Iterator[list[Any]]:
    """Schedulers to close after the test."""
    made: list[Any] = []
    yield made
    for scheduler in made:
        scheduler.close()


def start(schedulers: list[Any], cls: type = Scheduler) -> Any:
    with beat_schedule({}):
        scheduler = cls(app=app)
    schedulers.append(scheduler)
    return scheduler


def tick_until_read(scheduler: Any) -> None:
    """Tick as the beat loop does until the background read is swapped in."""
    deadline = time.monotonic() + WAIT
    while scheduler._reader.busy:
        assert time.monotonic() < deadline, "the background read did not finish"
        scheduler.tick()
        time.sleep(0.01)


def heap(scheduler: Any) -> list[Any]:
    """The events of the beat heap (Celery's ``tick`` sends from it)."""
    return internals.scheduler_heap(scheduler) or []


def entries(scheduler: Any) -> dict[str, Any]:
    """The entries the scheduler holds, without a check (``schedule`` may check)."""
    return internals.scheduler_entries(scheduler) or {}


def test_the_loop_sends_while_a_full_read_is_in_flight_and_keeps_its_runs(
    beat_queue: str, gate: Gate, schedulers: list[Any]
) -> None:
    add_task("public", "pub", queue=beat_queue)
    add_task("tenant1", "job@tenant1", queue=beat_queue)
    add_task("tenant2", "job@tenant2", queue=beat_queue)
    scheduler = start(schedulers)  # the first read, in the background, is let through
    gate.open()
    tick_until_read(scheduler)
    assert {"pub", "job@tenant1", "job@tenant2"} <= set(entries(scheduler))
    gate.opened.clear()
    gate.reached.clear()
    # Given a full read held in flight
    make_due(scheduler)
    scheduler.change_check.force_full_read()  # as every full_read_interval
    # When the loop ticks, Then it sends every due entry meanwhile
    run_due(scheduler)
    assert scheduler._reader.busy and gate.reached.wait(WAIT)
    assert schemas_of(drain(beat_queue)) == ["public", "tenant1", "tenant2"]
    assert internals.dirty_entry_names(scheduler)  # runs not saved yet: the rows are older
    ran = {name: entries(scheduler)[name] for name in ("pub", "job@tenant1", "job@tenant2")}
    # And once the read is swapped in, the runs made meanwhile are kept: nothing is sent again
    gate.open()
    tick_until_read(scheduler)
    for name, entry in ran.items():
        assert entries(scheduler)[name].total_run_count == entry.total_run_count == 1
        assert entries(scheduler)[name].last_run_at == entry.last_run_at
    run_due(scheduler)
    assert drain(beat_queue) == []
    scheduler.sync()
    assert not internals.dirty_entry_names(scheduler)


def test_a_change_made_during_the_read_is_picked_up(
    beat_queue: str, gate: Gate, schedulers: list[Any]
) -> None:
    add_task("tenant1", "job@tenant1", queue=beat_queue)
    scheduler = start(schedulers)
    gate.open()
    tick_until_read(scheduler)
    gate.opened.clear()
    # Given a full read held after its survey of the schemas' signatures
    gate.match = "pg_relation_size"
    scheduler.change_check.force_full_read()
    scheduler.tick()
    assert gate.reached.wait(WAIT)
    # When a row is added meanwhile
    add_task("tenant2", "late@tenant2", queue=beat_queue)
    flush_stats()
    gate.open()
    tick_until_read(scheduler)
    # Then the loop's next check reads it
    for _ in range(3):
        scheduler.tick()
    assert entries(scheduler)["late@tenant2"].schema_name == "tenant2"


def test_at_start_public_rows_are_sent_while_tenant_rows_load(
    beat_queue: str, gate: Gate, schedulers: list[Any]
) -> None:
    add_task("public", "pub", queue=beat_queue)
    add_task("tenant1", "job@tenant1", queue=beat_queue, every=1)
    with sql_tenants("bg_a", "bg_b"):
        for name in ("bg_a", "bg_b"):
            add_task(name, f"job@{name}", queue=beat_queue, every=1)
        flush_stats()
        code = {"task": TASK, "schedule": 5, "tenant_schemas": ["public"]}
        with beat_schedule({"code": code}):
            scheduler = Scheduler(app=app)
        schedulers.append(scheduler)
        # The public rows (the beat_schedule entry installed as one) are read at once...
        assert gate.reached.wait(WAIT) and scheduler._reader.busy
        assert {"pub", "code@public"} <= set(entries(scheduler))
        assert not any(name.startswith("job@") for name in entries(scheduler))
        # ...and sent while the tenants' rows still load
        make_due(scheduler)
        run_due(scheduler)
        assert schemas_of(drain(beat_queue)) == ["public"]
        gate.open()
        tick_until_read(scheduler)
        assert {"job@tenant1", "job@bg_a", "job@bg_b"} <= set(entries(scheduler))
        assert {"pub", "code@public"} <= set(entries(scheduler))
        # The heap came with the read (not rebuilt by the loop), and the loop sends from it
        assert not internals.take_heap_invalidated(scheduler)
        assert {event.entry.name for event in heap(scheduler)} == set(entries(scheduler))
        sent: set[str] = set()
        deadline = time.monotonic() + WAIT
        while not {"tenant1", "bg_a", "bg_b"} <= sent:
            assert time.monotonic() < deadline, sent
            time.sleep(max(0.0, min(scheduler.tick(), 0.2)))
            sent.update(schemas_of(drain(beat_queue)))
        scheduler.close()  # saves the runs while the schemas are there


def test_schedule_outside_the_loop_waits_for_the_read(
    beat_queue: str, gate: Gate, schedulers: list[Any]
) -> None:
    add_task("tenant2", "job@tenant2", queue=beat_queue)
    scheduler = start(schedulers)
    assert gate.reached.wait(WAIT)
    read: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: read.append(scheduler.schedule))
    reader.start()
    reader.join(0.2)
    assert reader.is_alive() and not read  # waiting for the read in flight
    gate.open()
    reader.join(WAIT)
    assert read[0]["job@tenant2"].schema_name == "tenant2"


def test_a_failed_read_is_logged_and_tried_again(
    beat_queue: str, gate: Gate, schedulers: list[Any], caplog: Any
) -> None:
    add_task("tenant1", "job@tenant1", queue=beat_queue)
    gate.fail = True
    scheduler = start(schedulers)
    caplog.set_level(logging.ERROR)
    gate.open()
    assert not scheduler._swap_in_read(wait=True)  # the read failed
    assert "background read of the periodic tasks failed" in caplog.text
    assert "job@tenant1" not in entries(scheduler)
    # The next tick reads again, in the same thread
    thread = scheduler._reader._thread
    scheduler.tick()
    assert scheduler._reader.busy
    tick_until_read(scheduler)
    assert entries(scheduler)["job@tenant1"].schema_name == "tenant1"
    assert scheduler._reader._thread is thread and thread.is_alive()


def test_close_stops_the_thread_and_closes_its_connections(
    gate: Gate, schedulers: list[Any]
) -> None:
    scheduler = start(schedulers)
    gate.open()
    tick_until_read(scheduler)
    own = scheduler._background_connections
    assert scheduler._reader.alive and all(c.connection is not None for c in own)
    scheduler.close()
    assert not scheduler._reader.alive
    assert all(connection.connection is None for connection in own)


def test_with_background_read_off_the_loop_reads_in_its_tick(
    beat_queue: str, gate: Gate, schedulers: list[Any]
) -> None:
    add_task("tenant1", "job@tenant1", queue=beat_queue)

    class InTheLoop(Scheduler):
        background_read = False

    scheduler = start(schedulers, InTheLoop)
    assert "job@tenant1" in entries(scheduler)
    scheduler.change_check.force_full_read()
    scheduler.tick()
    assert not scheduler._reader.busy and not scheduler._reader.alive
    assert gate.statements == 0


def test_a_failing_read_leaves_the_thread_running() -> None:
    reader: BackgroundRead[int] = BackgroundRead(name="tsc-beat-read-unit")

    def fail() -> int:
        raise ValueError("no")

    reader.start(fail)
    outcome = reader.take(timeout=None)
    assert outcome is not None and outcome.failed and isinstance(outcome.error, ValueError)
    reader.start(lambda: 1)
    with pytest.raises(RuntimeError, match="already running"):
        reader.start(lambda: 2)
    assert reader.take(timeout=None) == type(outcome)(value=1)
    assert reader.close(timeout=WAIT) and not reader.alive
    with pytest.raises(RuntimeError, match="closed"):
        reader.start(lambda: 3)


def test_a_reload_of_many_changed_schemas_runs_in_the_background(
    beat_queue: str, gate: Gate, schedulers: list[Any]
) -> None:
    scheduler = start(schedulers)
    gate.open()
    tick_until_read(scheduler)
    read_before = gate.statements
    # When more than batch_size schemas change, the loop's check hands their read over
    add_task("tenant1", "new@tenant1", queue=beat_queue)
    add_task("tenant2", "new@tenant2", queue=beat_queue)
    flush_stats()
    scheduler.tick()
    assert scheduler._reader.busy
    tick_until_read(scheduler)
    assert gate.statements > read_before  # read by the reading thread
    assert entries(scheduler)["new@tenant1"].schema_name == "tenant1"
    assert entries(scheduler)["new@tenant2"].schema_name == "tenant2"


def test_a_reload_keeps_the_heap_events_of_unchanged_entries(
    beat_queue: str, schedulers: list[Any]
) -> None:
    add_task("tenant1", "same@tenant1", queue=beat_queue)
    add_task("tenant2", "edited@tenant2", queue=beat_queue)
    with beat_schedule({}):
        scheduler = TenantAwareDatabaseScheduler(app=app)  # few schemas: read in the loop
    schedulers.append(scheduler)
    scheduler.check_interval = 0
    flush_stats()
    scheduler.tick()
    before = {event.entry.name: event for event in heap(scheduler)}
    # When one row is edited, the next tick reloads its schema
    with schema_context("tenant2"):
        edited = PeriodicTask.objects.get(name="edited@tenant2")
        edited.kwargs = '{"x": 1}'
        edited.save()
    flush_stats()
    scheduler.tick()
    # Then the heap was not rebuilt: the other entries keep their events, the edited
    # row's new entry has its own
    after = {event.entry.name: event for event in heap(scheduler)}
    assert after.keys() == before.keys() == set(entries(scheduler))
    assert after["same@tenant1"] is before["same@tenant1"]
    assert after["edited@tenant2"].entry is entries(scheduler)["edited@tenant2"]
    assert after["edited@tenant2"].entry.kwargs == {"x": 1}


def test_taking_over_reads_every_row_before_sending_even_with_a_read_in_flight(
    beat_queue: str, gate: Gate, schedulers: list[Any]
) -> None:
    """A beat becoming the leader (leader election) must send from the rows' shared
    ``last_run_at``: its catch-up read is made at once, never left to the background."""
    add_task("tenant1", "job@tenant1", queue=beat_queue)
    add_task("tenant2", "job@tenant2", queue=beat_queue)
    scheduler = start(schedulers)
    gate.open()
    tick_until_read(scheduler)
    gate.opened.clear()
    gate.reached.clear()
    # Given a full read in flight that read tenant1's rows before the last leader's save below
    gate.match = '"tenant2".'
    scheduler.change_check.force_full_read()
    scheduler.tick()
    assert scheduler._reader.busy and gate.reached.wait(WAIT)
    # And the rows' last run as the last leader saved it
    saved = app.now().replace(microsecond=0)
    for schema in ("tenant1", "tenant2"):
        with schema_context(schema):
            PeriodicTask.objects.filter(name=f"job@{schema}").update(last_run_at=saved)
    # When this beat takes over in its tick (the held read is let go meanwhile)
    threading.Timer(0.2, gate.open).start()
    with scheduler._looping():
        scheduler.take_over()
    # Then its entries carry the saved runs, and the read in flight was not left to revert them
    for schema in ("tenant1", "tenant2"):
        assert entries(scheduler)[f"job@{schema}"].last_run_at == saved
    assert not scheduler._reader.busy
    tick_until_read(scheduler)
    for schema in ("tenant1", "tenant2"):
        assert entries(scheduler)[f"job@{schema}"].last_run_at == saved
