"""``tenant_timezone``, pure logic: the option, ``ZonedCrontab`` per zone, DST, pickling.

Clocks are frozen (a crontab's ``nowfun``); each test compares with what Celery's own
time-zone-aware crontab does in that zone.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from celery.beat import ScheduleEntry
from celery.schedules import crontab

from tenant_schemas_celery.capture import BEAT_ONLY_HEADERS, TIMEZONE_HEADER
from tenant_schemas_celery.exceptions import TenantConfigurationError
from tenant_schemas_celery.scheduler import TenantAwareScheduleEntry, expand_entry
from tenant_schemas_celery.zones import (
    TenantZones,
    ZonedCrontab,
    app_zone_name,
    known_zone,
    validate_zone_option,
    zoned_schedule,
)

UTC = timezone.utc
NEW_YORK, TOKYO, PARIS = "America/New_York", "Asia/Tokyo", "Europe/Paris"

app = Celery("zones", set_as_current=False)
app.conf.timezone = "UTC"


class FrozenClock:
    """A crontab ``nowfun`` that pickles: every instance reads the class's ``now``."""

    now = datetime(2026, 1, 10, tzinfo=UTC)

    def __call__(self) -> datetime:
        return FrozenClock.now

    def __eq__(self, other: object) -> bool:  # a crontab compares its nowfun
        return isinstance(other, FrozenClock)

    def __hash__(self) -> int:
        return 0


CLOCK = FrozenClock()


def zone_of_tenant(tenant: Any) -> str:
    """A module-level ``tenant_timezone`` function."""
    return str(tenant.timezone)


def nightly(hour: int = 2, minute: Any = 0, zones: tuple[str, ...] = ()) -> ZonedCrontab:
    schedule = ZonedCrontab(crontab(minute=minute, hour=hour, nowfun=CLOCK, app=app), "timezone")
    schedule.set_zones(zones)
    return schedule


def run(schedule: Any, start: datetime, hours: float) -> list[tuple[datetime, list[str]]]:
    """Step the frozen clock minute by minute from ``start``, as beat would run ``schedule``.

    Returns each run: its time and the zones it went to (``[]`` for a plain crontab).
    """
    last, runs = start, []
    for minute in range(int(hours * 60)):
        FrozenClock.now = start + timedelta(minutes=minute)
        if schedule.is_due(last)[0]:
            zones = []
            if isinstance(schedule, ZonedCrontab):
                zones = schedule.due_zones(last)
                schedule.mark_run(zones, FrozenClock.now)
            runs.append((FrozenClock.now, zones))
            last = FrozenClock.now
    return runs


def celery_runs(zone: str, hour: int, minute: Any, start: datetime, hours: float) -> list[datetime]:
    """The runs of Celery's own crontab with its ``tz`` in ``zone``."""
    cron = crontab(minute=minute, hour=hour, nowfun=CLOCK, app=app)
    cron.tz = ZoneInfo(zone)
    return [when for when, _ in run(cron, start, hours)]


@pytest.fixture(autouse=True)
def frozen() -> Iterator[None]:
    before = FrozenClock.now
    yield
    FrozenClock.now = before


def local(when: datetime, zone: str) -> str:
    return when.astimezone(ZoneInfo(zone)).isoformat()


# The option -----------------------------------------------------------------------------


def test_an_attribute_name_or_an_import_path_is_kept() -> None:
    assert validate_zone_option("timezone", "job") == "timezone"
    assert validate_zone_option("tests.test_zones:zone_of_tenant", "job") == (
        "tests.test_zones:zone_of_tenant"
    )
    assert validate_zone_option(None, "job") is None


def test_a_module_level_function_is_stored_as_its_import_path() -> None:
    assert validate_zone_option(zone_of_tenant, "job") == "tests.test_zones:zone_of_tenant"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (lambda tenant: "UTC", "must be a module-level function"),
        (12, "must be the name of a tenant attribute"),
        ("not an attribute", "must be the name of a tenant attribute"),
        ("", "must be the name of a tenant attribute"),
    ],
)
def test_a_malformed_option_is_refused_naming_the_entry(value: object, problem: str) -> None:
    with pytest.raises(TenantConfigurationError, match=f"'nightly' {problem}"):
        validate_zone_option(value, "nightly")


def test_an_import_path_must_name_a_function() -> None:
    problem = re.escape("'nightly': 'tests.test_zones:nowhere'")
    with pytest.raises(TenantConfigurationError, match=problem):
        validate_zone_option("tests.test_zones:nowhere", "nightly")
    with pytest.raises(TenantConfigurationError, match="does not name an importable function"):
        validate_zone_option("tests.test_zones:UTC", "nightly")


def test_a_local_function_is_refused() -> None:
    def zone(tenant: Any) -> str:
        return "UTC"

    with pytest.raises(TenantConfigurationError, match="module-level function"):
        validate_zone_option(zone, "nightly")


def test_an_interval_with_the_option_is_refused_naming_the_entry() -> None:
    fields = {"task": "t", "schedule": 60, "tenant_timezone": "timezone"}
    with pytest.raises(TenantConfigurationError, match="'nightly' needs a crontab schedule"):
        expand_entry("nightly", fields)
    with pytest.raises(TenantConfigurationError, match="needs a crontab"):
        zoned_schedule(timedelta(hours=1), "timezone", "nightly")


def test_expand_entry_keeps_the_name_and_carries_the_option_as_a_beat_only_header() -> None:
    cron = crontab(minute=0, hour=2)
    expanded = expand_entry("nightly", {"task": "t", "schedule": cron, "tenant_timezone": "tz"})
    assert list(expanded) == ["nightly@__all_tenants_only__"]
    headers = expanded["nightly@__all_tenants_only__"]["options"]["headers"]
    assert headers == {"_all_tenants_only": True, TIMEZONE_HEADER: "tz"}
    assert TIMEZONE_HEADER in BEAT_ONLY_HEADERS  # never sent to a worker
    plain = expand_entry("nightly", {"task": "t", "schedule": cron})
    assert TIMEZONE_HEADER not in plain["nightly@__all_tenants_only__"]["options"]["headers"]


def test_an_entry_with_the_header_gets_a_zoned_crontab() -> None:
    fields = expand_entry(
        "nightly", {"task": "t", "schedule": crontab(hour=2, minute=0), "tenant_timezone": "tz"}
    )["nightly@__all_tenants_only__"]
    entry = TenantAwareScheduleEntry(name="nightly@__all_tenants_only__", app=app, **fields)
    assert isinstance(entry.schedule, ZonedCrontab)
    assert entry.schedule.option == "tz"
    plain = TenantAwareScheduleEntry(name="n", schedule=crontab(hour=2), app=app, task="t")
    assert not isinstance(plain.schedule, ZonedCrontab)


@pytest.mark.parametrize(
    ("value", "zone"),
    [
        ("Asia/Tokyo", "Asia/Tokyo"),
        ("Mars/Olympus", None),
        ("America", None),  # a directory of zones
        ("../etc/passwd", None),
        ("", None),
        (None, None),
        (3, None),
        (["Asia/Tokyo"], None),  # unhashable
    ],
)
def test_known_zone(value: object, zone: str | None) -> None:
    found = known_zone(value)
    assert (found.key if found else None) == zone


def test_app_zone_name() -> None:
    assert app_zone_name(app) == "UTC"
    other = Celery("other", set_as_current=False)
    other.conf.timezone = TOKYO
    assert app_zone_name(other) == TOKYO


# Due per zone ---------------------------------------------------------------------------


def test_each_zone_runs_at_its_own_wall_clock_time() -> None:
    schedule = nightly(zones=(TOKYO, PARIS, NEW_YORK))
    start = datetime(2026, 1, 10, 12, tzinfo=UTC)
    runs = run(schedule, start, 24)
    assert [(local(when, zones[0]), zones) for when, zones in runs] == [
        ("2026-01-11T02:00:00+09:00", [TOKYO]),
        ("2026-01-11T02:00:00+01:00", [PARIS]),
        ("2026-01-11T02:00:00-05:00", [NEW_YORK]),
    ]


def test_zones_due_at_the_same_instant_run_together() -> None:
    schedule = nightly(zones=("Europe/Berlin", PARIS, TOKYO))
    runs = run(schedule, datetime(2026, 1, 10, 12, tzinfo=UTC), 24)
    assert [zones for _, zones in runs] == [[TOKYO], ["Europe/Berlin", PARIS]]


def test_the_soonest_zone_gives_the_next_check() -> None:
    schedule = nightly(zones=(TOKYO, NEW_YORK))
    FrozenClock.now = datetime(2026, 1, 10, 16, tzinfo=UTC)  # 01:00 in Tokyo
    due, next_check = schedule.is_due(FrozenClock.now)
    assert (due, next_check) == (False, 3600.0)
    assert schedule.remaining_estimate(FrozenClock.now) == timedelta(hours=1)


def test_without_zones_it_is_due_as_its_crontab_is() -> None:
    schedule = nightly()
    FrozenClock.now = datetime(2026, 1, 10, 1, tzinfo=UTC)
    assert schedule.is_due(FrozenClock.now) == schedule.cron.is_due(FrozenClock.now)


def test_a_new_zone_starts_from_the_entry_last_run_and_a_gone_zone_is_dropped() -> None:
    schedule = nightly(zones=(TOKYO,))
    schedule.mark_run([TOKYO], datetime(2026, 1, 9, tzinfo=UTC))
    schedule.set_zones([TOKYO, PARIS])
    assert schedule.runs == {TOKYO: datetime(2026, 1, 9, tzinfo=UTC), PARIS: None}
    schedule.set_zones([PARIS])
    assert schedule.runs == {PARIS: None}


def test_a_clock_set_after_the_crontab_was_made_is_the_zones_clock() -> None:
    schedule = ZonedCrontab(crontab(minute=0, hour=2, app=app), "timezone")
    schedule.nowfun = CLOCK
    schedule.set_zones([TOKYO])
    FrozenClock.now = datetime(2026, 1, 10, 12, tzinfo=UTC)
    assert schedule.zone_cron(TOKYO).now() == FrozenClock.now
    assert schedule.is_due(FrozenClock.now) == (False, 5 * 3600.0)


def test_an_unknown_zone_name_uses_the_app_zone() -> None:
    schedule = nightly(zones=("Mars/Olympus",))
    assert schedule.zone_cron("Mars/Olympus").tz == app.timezone


def test_an_entry_class_without_zones_is_sent_as_it_is_and_logged_once(caplog: Any) -> None:
    headers = {"_all_tenants_only": True, TIMEZONE_HEADER: "timezone"}
    entry = ScheduleEntry(
        name="n", task="t", schedule=crontab(hour=2), options={"headers": headers}, app=app
    )
    zones = TenantZones(app, lambda: None)  # never read: the entry has no zones
    caplog.set_level("WARNING", "celery.beat")
    assert zones.select(entry, ["a", "b"], None) == ["a", "b"]
    assert zones.select(entry, ["a"], None) == ["a"]
    assert [r.getMessage() for r in caplog.records] == [
        "beat: Entry 'n' has a _tenant_timezone header, but its class ScheduleEntry does not "
        "support tenant_timezone: it is sent to its tenants as its schedule says."
    ]


# Daylight saving --------------------------------------------------------------------------


def test_spring_forward_skipped_time_runs_once_as_celery_does() -> None:
    # 2026-03-08 02:30 does not exist in New York: the clocks go from 02:00 to 03:00.
    start = datetime(2026, 3, 7, 12, tzinfo=UTC)
    runs = run(nightly(2, 30, (NEW_YORK,)), start, 48)
    assert [when for when, _ in runs] == celery_runs(NEW_YORK, 2, 30, start, 48)
    assert [local(when, NEW_YORK) for when, _ in runs] == [
        "2026-03-08T03:30:00-04:00",
        "2026-03-09T02:30:00-04:00",
    ]


def test_autumn_repeated_time_runs_once_as_celery_does() -> None:
    # 2026-11-01 01:30 happens twice in New York (EDT, then EST): one run, the first.
    start = datetime(2026, 10, 31, 12, tzinfo=UTC)
    runs = run(nightly(1, 30, (NEW_YORK,)), start, 48)
    assert [when for when, _ in runs] == celery_runs(NEW_YORK, 1, 30, start, 48)
    assert [local(when, NEW_YORK) for when, _ in runs] == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
    ]


def test_a_transition_in_one_zone_leaves_the_others_alone() -> None:
    start = datetime(2026, 3, 7, 12, tzinfo=UTC)
    runs = run(nightly(2, 30, (NEW_YORK, TOKYO)), start, 48)
    assert [(local(when, zones[0]), zones) for when, zones in runs] == [
        ("2026-03-08T02:30:00+09:00", [TOKYO]),
        ("2026-03-08T03:30:00-04:00", [NEW_YORK]),
        ("2026-03-09T02:30:00+09:00", [TOKYO]),
        ("2026-03-09T02:30:00-04:00", [NEW_YORK]),
    ]


# Pickling ---------------------------------------------------------------------------------


def test_a_zoned_crontab_pickles_with_its_runs() -> None:
    schedule = nightly(zones=(TOKYO, NEW_YORK))
    schedule.mark_run([TOKYO], datetime(2026, 1, 10, 17, tzinfo=UTC))
    schedule.zone_cron(TOKYO)  # the per-zone copies are not part of the state
    loaded = pickle.loads(pickle.dumps(schedule))
    assert loaded == schedule
    assert loaded.runs == schedule.runs
    assert loaded.zone_cron(TOKYO).tz == ZoneInfo(TOKYO)


def test_an_entry_with_a_function_option_pickles() -> None:
    fields = expand_entry(
        "nightly",
        {"task": "t", "schedule": crontab(hour=2, nowfun=CLOCK), "tenant_timezone": zone_of_tenant},
    )["nightly@__all_tenants_only__"]
    entry = TenantAwareScheduleEntry(name="nightly@__all_tenants_only__", app=app, **fields)
    loaded = pickle.loads(pickle.dumps(entry))
    assert loaded.schedule == entry.schedule
    assert loaded.schedule.option == "tests.test_zones:zone_of_tenant"


def test_update_keeps_the_zone_runs_while_the_crontab_is_unchanged() -> None:
    def entry(hour: int) -> TenantAwareScheduleEntry:
        fields = expand_entry(
            "n", {"task": "t", "schedule": crontab(hour=hour, minute=0), "tenant_timezone": "tz"}
        )["n@__all_tenants_only__"]
        return TenantAwareScheduleEntry(name="n@__all_tenants_only__", app=app, **fields)

    stored = entry(2)
    stored.schedule.set_zones([TOKYO])
    stored.schedule.mark_run([TOKYO], datetime(2026, 1, 10, 17, tzinfo=UTC))
    stored.update(entry(2))
    assert stored.schedule.runs == {TOKYO: datetime(2026, 1, 10, 17, tzinfo=UTC)}
    stored.update(entry(3))
    assert stored.schedule.runs == {}
