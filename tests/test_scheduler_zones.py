"""``tenant_timezone`` in the schedulers, with real tenants in several zones.

``TenantAwareScheduler`` and ``TenantAwarePersistentScheduler`` run on a frozen clock (the
crontab's ``nowfun``); the database scheduler on the real clock, with a crontab due in
the current hour of Tokyo only. Messages are read back from Redis.
"""

from __future__ import annotations

import json
import logging
import shelve
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab
from django.db import connection
from django.db.models import F
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask
from django_tenants.utils import schema_context

from tenant_schemas_celery.db_scheduler import TenantAwareDatabaseScheduler
from tenant_schemas_celery.scheduler import (
    TenantAwarePersistentScheduler,
    TenantAwareScheduler,
    TenantAwareSchedulerMixin,
)
from tenant_schemas_celery.zones import TenantZones, ZonedCrontab
from tests.beat_helpers import (
    TASK,
    add_task,
    beat_schedule,
    drain,
    every_tenant,
    run_due,
    schemas_of,
    sql_tenants,
    statements,
)
from tests.project.celery import app
from tests.project.customers.models import Client
from tests.test_zones import CLOCK, UTC, FrozenClock

pytestmark = pytest.mark.usefixtures("beat_db")

ZONES = {"tz_tokyo": "Asia/Tokyo", "tz_paris": "Europe/Paris", "tz_ny": "America/New_York"}
NAME = "nightly@__all_tenants_only__"


def zone_from_name(tenant: Any) -> str:
    """A module-level ``tenant_timezone`` function: the zone from the tenant's name."""
    return ZONES.get(tenant.schema_name, "")


@pytest.fixture
def zoned_tenants() -> Iterator[list[str]]:
    """Three tenants with a schema, in Tokyo, Paris and New York; one with a bad zone."""
    with sql_tenants(*ZONES, "tz_mars", beat_tables=False) as names:
        for schema_name, zone in {**ZONES, "tz_mars": "Mars/Olympus"}.items():
            Client.objects.filter(schema_name=schema_name).update(timezone=zone)
        yield names


@pytest.fixture(autouse=True)
def frozen() -> Iterator[None]:
    before = FrozenClock.now
    FrozenClock.now = datetime(2026, 1, 10, 12, tzinfo=UTC)
    yield
    FrozenClock.now = before


def utc_tenants() -> list[str]:
    """The tenants in the app's zone (UTC): no zone, or an unknown one."""
    return sorted(set(every_tenant()) - set(ZONES))


def schedule(queue: str, option: Any = "timezone") -> dict[str, Any]:
    return {
        "nightly": {
            "task": TASK,
            "schedule": crontab(minute=0, hour=2, nowfun=CLOCK),
            "options": {"queue": queue},
            "tenant_timezone": option,
        }
    }


def at(when: datetime, scheduler: Any) -> list[str]:
    """Move the frozen clock to ``when``, run what is due; return the schemas sent to."""
    FrozenClock.now = when
    run_due(scheduler)
    return schemas_of(drain(scheduler.schedule[NAME].options["queue"]))


# Reading the zones ------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["timezone", "tests.test_scheduler_zones:zone_from_name"])
def test_zones_are_read_for_all_tenants_with_one_statement(
    zoned_tenants: list[str], option: str
) -> None:
    zones = TenantZones(app, TenantAwareSchedulerMixin.get_queryset)
    sent = statements(lambda: zones.zone_map(option))
    assert len(sent) == 1
    found = zones.zone_map(option)
    assert {name: found[name] for name in ZONES} == ZONES
    assert found["tz_mars"] == found["tenant1"] == "UTC"
    assert statements(lambda: zones.zone_map(option)) == []  # kept
    zones.forget()  # beat went to sleep: the checks of due times keep the read...
    assert statements(lambda: zones.zone_map(option)) == []
    assert len(statements(lambda: zones.zone_map(option, fresh=True))) == 1  # ...a send reads
    assert statements(lambda: zones.zone_map(option, fresh=True)) == []  # once per burst
    zones.max_age = 0  # and a read older than max_age is not used
    assert len(statements(lambda: zones.zone_map(option))) == 1


def test_an_attribute_that_is_not_a_field_is_read_on_the_tenants(
    zoned_tenants: list[str],
) -> None:
    # An annotation, like a property, is no column of the model: it is read with getattr
    # on the tenants of one statement.
    def queryset() -> Any:
        return TenantAwareSchedulerMixin.get_queryset().annotate(zone=F("timezone"))

    zones = TenantZones(app, queryset)
    sent = statements(lambda: zones.zone_map("zone"))
    assert len(sent) == 1
    found = zones.zone_map("zone")
    assert {name: found[name] for name in ZONES} == ZONES


def test_an_unknown_zone_is_logged_once_per_tenant_and_value(
    zoned_tenants: list[str], caplog: Any
) -> None:
    zones = TenantZones(app, TenantAwareSchedulerMixin.get_queryset)
    caplog.set_level(logging.WARNING, "celery.beat")

    def warnings_after_read() -> list[str]:
        caplog.clear()
        zones.forget()
        zones.zone_map("timezone", fresh=True)
        return [r.getMessage() for r in caplog.records if "'tz_mars'" in r.getMessage()]

    assert warnings_after_read() == [
        "beat: Tenant 'tz_mars': tenant_timezone timezone gave 'Mars/Olympus', not an IANA "
        "time zone name; the tenant uses the app's time zone UTC."
    ]
    assert warnings_after_read() == []  # unchanged: not again
    Client.objects.filter(schema_name="tz_mars").update(timezone="Venus/Maxwell")
    assert len(warnings_after_read()) == 1  # another value: logged
    Client.objects.filter(schema_name="tz_mars").update(timezone="Asia/Tokyo")
    assert warnings_after_read() == []
    assert zones.zone_map("timezone")["tz_mars"] == "Asia/Tokyo"


def test_the_timezone_column_has_a_database_default() -> None:
    # bench/beat.py inserts tenants with SQL, without the column
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO customers_client (schema_name, name) VALUES ('tz_raw', 'R')")
    try:
        assert Client.objects.get(schema_name="tz_raw").timezone == ""
    finally:
        Client.objects.filter(schema_name="tz_raw").delete()


# TenantAwareScheduler ---------------------------------------------------------------------


@pytest.mark.parametrize("option", ["timezone", zone_from_name])
def test_each_zone_gets_its_run_at_its_own_two_oclock(
    zoned_tenants: list[str], beat_queue: str, option: Any
) -> None:
    with beat_schedule(schedule(beat_queue, option)):
        scheduler = TenantAwareScheduler(app=app)
    assert isinstance(scheduler.schedule[NAME].schedule, ZonedCrontab)
    assert at(datetime(2026, 1, 10, 16, 59, tzinfo=UTC), scheduler) == []
    assert at(datetime(2026, 1, 10, 17, tzinfo=UTC), scheduler) == ["tz_tokyo"]
    assert at(datetime(2026, 1, 11, 1, tzinfo=UTC), scheduler) == ["tz_paris"]
    assert at(datetime(2026, 1, 11, 2, tzinfo=UTC), scheduler) == utc_tenants()
    assert "tz_mars" in utc_tenants()  # its unknown zone: the app's (UTC)
    assert at(datetime(2026, 1, 11, 7, tzinfo=UTC), scheduler) == ["tz_ny"]
    assert at(datetime(2026, 1, 11, 16, tzinfo=UTC), scheduler) == []


def test_idle_ticks_do_not_read_the_tenants(zoned_tenants: list[str], beat_queue: str) -> None:
    with beat_schedule(schedule(beat_queue)):
        scheduler = TenantAwareScheduler(app=app)
    assert at(datetime(2026, 1, 10, 17, tzinfo=UTC), scheduler) == ["tz_tokyo"]
    FrozenClock.now = datetime(2026, 1, 10, 18, tzinfo=UTC)
    assert statements(lambda: [scheduler.tick() for _ in range(20)]) == []


def test_messages_do_not_carry_the_zone_header(zoned_tenants: list[str], beat_queue: str) -> None:
    with beat_schedule(schedule(beat_queue)):
        scheduler = TenantAwareScheduler(app=app)
    FrozenClock.now = datetime(2026, 1, 10, 17, tzinfo=UTC)
    run_due(scheduler)
    (message,) = drain(beat_queue)
    assert message["_schema_name"] == "tz_tokyo"
    assert "_tenant_timezone" not in message


def test_a_tenant_moving_to_another_zone_is_picked_up(
    zoned_tenants: list[str], beat_queue: str
) -> None:
    with beat_schedule(schedule(beat_queue)):
        scheduler = TenantAwareScheduler(app=app)
    assert at(datetime(2026, 1, 10, 17, tzinfo=UTC), scheduler) == ["tz_tokyo"]
    Client.objects.filter(schema_name="tz_ny").update(timezone="Asia/Tokyo")
    assert at(datetime(2026, 1, 11, 2, tzinfo=UTC), scheduler) == sorted(
        ["tz_paris", *utc_tenants()]  # both missed meanwhile: one run each
    )
    assert at(datetime(2026, 1, 11, 7, tzinfo=UTC), scheduler) == []
    assert at(datetime(2026, 1, 11, 17, tzinfo=UTC), scheduler) == ["tz_ny", "tz_tokyo"]


def runs_in_new_york(config: dict[str, Any], start: datetime) -> list[str]:
    """The times (UTC, ISO) the New York tenant is sent ``config``'s entry, ticking every
    10 minutes over the 30 hours from ``start``."""
    FrozenClock.now = start
    with beat_schedule(config):
        scheduler = TenantAwareScheduler(app=app)
    sent: list[str] = []
    for minute in range(0, 30 * 60, 10):
        when = start + timedelta(minutes=minute)
        sent += [when.isoformat() for name in at(when, scheduler) if name == "tz_ny"]
    return sent


def test_spring_forward_in_new_york_runs_once(zoned_tenants: list[str], beat_queue: str) -> None:
    config = schedule(beat_queue)
    config["nightly"]["schedule"] = crontab(minute=30, hour=2, nowfun=CLOCK)
    # 02:30 does not exist on 2026-03-08 in New York: once, at 03:30 EDT (07:30 UTC)
    sent = runs_in_new_york(config, datetime(2026, 3, 7, 12, tzinfo=UTC))
    assert sent == ["2026-03-08T07:30:00+00:00"]


def test_autumn_repeated_time_in_new_york_runs_once(
    zoned_tenants: list[str], beat_queue: str
) -> None:
    config = schedule(beat_queue)
    config["nightly"]["schedule"] = crontab(minute=30, hour=1, nowfun=CLOCK)
    # 01:30 happens twice on 2026-11-01 in New York: once, at 01:30 EDT (05:30 UTC)
    sent = runs_in_new_york(config, datetime(2026, 10, 31, 12, tzinfo=UTC))
    assert sent == ["2026-11-01T05:30:00+00:00"]


# TenantAwarePersistentScheduler ----------------------------------------------------------


def test_persistent_restart_keeps_each_zone_last_run(
    zoned_tenants: list[str], beat_queue: str, tmp_path: Any
) -> None:
    filename = str(tmp_path / "schedule")
    with beat_schedule(schedule(beat_queue, zone_from_name)):
        first = TenantAwarePersistentScheduler(app=app, schedule_filename=filename)
    assert at(datetime(2026, 1, 10, 17, tzinfo=UTC), first) == ["tz_tokyo"]
    first.close()
    with shelve.open(filename) as store:
        stored = store["entries"][NAME].schedule
    assert stored.runs["Asia/Tokyo"] == datetime(2026, 1, 10, 17, tzinfo=UTC)
    assert stored.option == "tests.test_scheduler_zones:zone_from_name"

    # When beat restarts with the same config
    with beat_schedule(schedule(beat_queue, zone_from_name)):
        second = TenantAwarePersistentScheduler(app=app, schedule_filename=filename)
    # Then the zones' runs are kept, and each zone still runs once at its time
    assert second.schedule[NAME].schedule.runs["Asia/Tokyo"] == stored.runs["Asia/Tokyo"]
    assert at(datetime(2026, 1, 10, 17, 30, tzinfo=UTC), second) == []
    assert at(datetime(2026, 1, 11, 1, tzinfo=UTC), second) == ["tz_paris"]
    second.close()


# TenantAwareDatabaseScheduler -------------------------------------------------------------


def test_a_public_row_for_every_tenant_is_sent_per_zone(
    zoned_tenants: list[str], beat_queue: str
) -> None:
    # A crontab due every minute of the current and next hour of Tokyo: not in New York,
    # Paris or UTC (8 to 14 hours away).
    hour = timezone.now().astimezone(ZoneInfo("Asia/Tokyo")).hour
    with schema_context("public"):
        cron = CrontabSchedule.objects.create(minute="*", hour=f"{hour},{(hour + 1) % 24}")
        PeriodicTask.objects.create(
            name="nightly@__all_tenants_only__",
            task=TASK,
            crontab=cron,
            queue=beat_queue,
            headers=json.dumps({"_all_tenants_only": True, "_tenant_timezone": "timezone"}),
            last_run_at=timezone.now() - timedelta(seconds=90),
        )
    with beat_schedule({}):
        scheduler = TenantAwareDatabaseScheduler(app=app)
    try:
        scheduler.check_interval = 0
        entry = scheduler.schedule[NAME]
        assert isinstance(entry.schedule, ZonedCrontab)
        run_due(scheduler)
        messages = [m for m in drain(beat_queue) if m["periodic_task_name"] == NAME]
        assert schemas_of(messages) == ["tz_tokyo"]
        assert "_tenant_timezone" not in messages[0]
        # The zones' runs carry over to the next entry of the row
        runs = scheduler.schedule[NAME].schedule.runs
        assert runs["Asia/Tokyo"] is not None
        assert runs["America/New_York"] is None
    finally:
        scheduler.close()


def test_a_row_with_the_header_and_an_interval_is_rejected_and_logged(
    zoned_tenants: list[str], beat_queue: str, caplog: Any
) -> None:
    add_task(
        "public",
        "hourly@__all_tenants_only__",
        queue=beat_queue,
        headers='{"_all_tenants_only": true, "_tenant_timezone": "timezone"}',
    )
    with beat_schedule({}):
        scheduler = TenantAwareDatabaseScheduler(app=app)
    try:
        assert "hourly@__all_tenants_only__" not in scheduler.schedule
        assert "'hourly@__all_tenants_only__' needs a crontab schedule" in caplog.text
    finally:
        scheduler.close()
