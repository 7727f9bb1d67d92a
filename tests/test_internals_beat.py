"""internals: what each private name of django-celery-beat does for us (the ``beat`` extra).

As in ``test_internals.py``: each test pins the upstream behaviour that one function of
``tenant_schemas_celery.internals`` relies on, against the installed django-celery-beat
(2.6 on the oldest pins), so an upgrade that changes it fails here first. The schedulers
are made without ``__init__`` and given only what the method under test reads: no
database is needed.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.test import override_settings
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from tenant_schemas_celery import internals
from tests.project.celery import app


class _Row:
    """An entry as ``DatabaseScheduler.sync`` and ``reserve`` use it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.saves = 0

    def save(self) -> None:
        self.saves += 1

    def __next__(self) -> _Row:
        return self


def _scheduler(**attributes: Any) -> Any:
    """A ``DatabaseScheduler`` without ``__init__``, with the state ``__init__`` sets up."""
    scheduler = DatabaseScheduler.__new__(DatabaseScheduler)
    scheduler._dirty = set()
    scheduler.__dict__.update(attributes)
    return scheduler


def test_model_entry_now_is_aware_in_the_app_timezone_unless_told_otherwise() -> None:
    entry = ModelEntry.__new__(ModelEntry)
    entry.app = app
    now = internals.model_entry_now(entry)
    assert now.tzinfo is not None
    assert now.utcoffset() == datetime.datetime.now(app.timezone).utcoffset()
    assert abs((now - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) < 60
    with override_settings(DJANGO_CELERY_BEAT_TZ_AWARE=False):
        naive = internals.model_entry_now(entry)
    assert naive.tzinfo is None
    utc = now.replace(tzinfo=None) - now.utcoffset()
    assert abs((naive - utc).total_seconds()) < 60


def test_scheduler_entries_are_what_sync_saves_and_reserve_marks_dirty() -> None:
    # Given a scheduler before its first read
    assert DatabaseScheduler._schedule is None
    scheduler = _scheduler()
    assert internals.scheduler_entries(scheduler) is None

    # When its entries are set, and one of them is reserved (it ran)
    row, other = _Row("row"), _Row("other")
    internals.set_scheduler_entries(scheduler, {"row": row, "other": other})
    assert scheduler.reserve(row) is row

    # Then reserve() marked it dirty, and sync() saved it from those entries
    assert internals.dirty_entry_names(scheduler) == {"row"}
    scheduler.sync()
    assert (row.saves, other.saves) == (1, 0)
    assert internals.dirty_entry_names(scheduler) == set()

    # And a name that is not among the entries stays dirty, to be tried again
    internals.dirty_entry_names(scheduler).add("gone")
    scheduler.sync()
    assert internals.dirty_entry_names(scheduler) == {"gone"}
    assert internals.dirty_entry_names(scheduler) is scheduler._dirty


def test_the_schedule_property_returns_the_entries_without_a_change() -> None:
    entries = {"row": _Row("row")}
    scheduler = _scheduler(
        _initial_read=False,
        _last_full_sync=datetime.datetime.now(),  # django-celery-beat >= 2.8's full sync
        schedule_changed=lambda: False,
    )
    internals.set_scheduler_entries(scheduler, entries)
    assert scheduler.schedule is entries


def test_heap_invalidated_is_set_by_a_reload_and_read_once_by_schedules_equal() -> None:
    # Given a scheduler whose rows changed since its first read
    assert DatabaseScheduler._heap_invalidated is False
    new_entries: dict[str, Any] = {}
    scheduler = _scheduler(
        _initial_read=False,
        _last_full_sync=datetime.datetime.now(),
        schedule_changed=lambda: True,
        sync=lambda: None,
        all_as_schedule=lambda: new_entries,
    )
    assert not internals.take_heap_invalidated(scheduler)

    # When the schedule is read, Then it is reloaded and the heap invalidated
    assert scheduler.schedule is new_entries
    assert internals.scheduler_entries(scheduler) is new_entries
    assert scheduler._heap_invalidated is True
    assert internals.take_heap_invalidated(scheduler)
    assert not internals.take_heap_invalidated(scheduler)

    # And upstream's schedules_equal reads and clears the flag the same way
    internals.invalidate_heap(scheduler)
    assert scheduler.schedules_equal({}, {}) is False
    assert scheduler.schedules_equal({}, {}) is True
    assert not internals.take_heap_invalidated(scheduler)
