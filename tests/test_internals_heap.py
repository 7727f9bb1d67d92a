"""internals: Celery's beat heap, as ``heap_event`` and ``set_heap`` use it.

As in ``test_internals.py``: each test pins the upstream behaviour one function of
``tenant_schemas_celery.internals`` relies on. In-memory schedulers, no database.
"""

from __future__ import annotations

import copy
import heapq
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import schedules
from celery.beat import ScheduleEntry, Scheduler

from tenant_schemas_celery import internals
from tests.project.celery import app

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def _entry(name: str, last_run_minutes_ago: float) -> ScheduleEntry:
    every_minute = schedules.schedule(timedelta(minutes=1), nowfun=lambda: NOW, app=app)
    return ScheduleEntry(
        name=name,
        task="t",
        schedule=every_minute,
        last_run_at=NOW - timedelta(minutes=last_run_minutes_ago),
        app=app,
    )


class _Recording(Scheduler):
    def __init__(self, entries: dict[str, Any]) -> None:
        self.sent: list[str] = []
        super().__init__(app=app, lazy=True)
        self.data = entries

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        self.sent.append(entry.name)

    def reserve(self, entry: Any) -> Any:
        return entry

    @property
    def producer(self) -> Any:  # nothing is published
        return None


def test_heap_event_is_the_event_populate_heap_makes() -> None:
    entries = {"due": _entry("due", 2), "later": _entry("later", 0.5)}
    scheduler = _Recording(entries)
    scheduler.populate_heap()
    made = sorted(scheduler._heap, key=lambda event: event.entry.name)
    expected = []
    for entry in sorted(entries.values(), key=lambda entry: entry.name):
        is_due, delay = entry.is_due()
        expected.append(internals.heap_event(scheduler, entry, 0 if is_due else delay))
    assert made == expected
    assert made[0].time == NOW.timestamp() < made[1].time  # due now; in about 30 s


def test_tick_sends_from_the_heap_set_without_rebuilding_it() -> None:
    due, other = _entry("due", 2), _entry("other", 2)
    scheduler = _Recording({"due": due, "other": other})
    scheduler.old_schedulers = copy.copy(scheduler.schedule)  # the schedule did not change
    # A heap holding only "due": tick sends it, and never "other" (no rebuild)
    events = [internals.heap_event(scheduler, due, 0)]
    heapq.heapify(events)
    internals.set_heap(scheduler, events)
    assert scheduler.tick() == 0
    assert scheduler.sent == ["due"]
    assert scheduler._heap is events


def test_scheduler_heap_is_what_populate_heap_builds_and_tick_sends_from() -> None:
    due = _entry("due", 2)
    scheduler = _Recording({"due": due})
    assert internals.scheduler_heap(scheduler) is None  # built at the first tick
    scheduler.populate_heap()
    heap = internals.scheduler_heap(scheduler)
    assert heap is scheduler._heap and [event.entry for event in heap] == [due]
