"""The private names of Celery, django-celery-beat, django-tenants and sentry-sdk we rely on.

Every use of another package's underscore name goes through this module, one small function
each, whose docstring names the upstream name and why no public one does the job.
``tests/test_internals.py`` (and ``tests/test_internals_beat.py`` for django-celery-beat)
pins what each function relies on against the installed versions, so an upgrade that
changes one of them fails there first, not somewhere in a worker or in beat.

Nothing here imports django-celery-beat or sentry-sdk: the functions take their objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery import _state as celery_state

# Celery


@contextmanager
def joins_will_block() -> Iterator[None]:
    """Within the block, Celery's result backends take joining a result to be blocking.

    Upstream private: ``celery._state._set_task_join_will_block`` (the process-wide flag
    that ``task_join_will_block()`` reads; Celery's worker sets it in its pool processes,
    and result backends then neither subscribe to results nor declare reply queues).
    ``celery.result.denied_join_result`` sets it too, but is not in that module's
    ``__all__``, and it sets the flag again when it is already set; here a flag already
    set is left alone, and one that was not is cleared at the end.
    """
    set_flag = getattr(celery_state, "_set_task_join_will_block", None)
    if set_flag is None or celery_state.task_join_will_block():
        yield
        return
    set_flag(True)
    try:
        yield
    finally:
        set_flag(False)


def sync_scheduler(scheduler: Any) -> None:
    """Have a Celery beat scheduler ``sync()`` now, and restart its count towards the next.

    Upstream private: ``celery.beat.Scheduler._do_sync`` (``sync()``, then
    ``_last_sync`` and ``_tasks_since_sync`` reset, which ``should_sync()`` reads).
    The public ``sync()`` alone leaves the counters, so beat would sync again at once.
    """
    scheduler._do_sync()


def rebuild_heap(scheduler: Any) -> None:
    """Have a Celery beat scheduler's next ``tick`` rebuild its heap from ``schedule``.

    Upstream private: ``celery.beat.Scheduler._heap`` (the due times' heap), which
    ``tick`` repopulates from the current entries when it is None. Entries advanced or
    replaced outside ``tick`` are otherwise not seen by it.
    """
    scheduler._heap = None


def rebind_autoretry_run(task: Any, run: Callable[..., Any]) -> bool:
    """Make Celery's autoretry wrapper of ``task.run`` call ``run``; False if there is none.

    Upstream private: ``Task._orig_run``, set on the task instance by
    ``celery.app.autoretry.add_autoretry_behaviour`` (tasks with ``autoretry_for``) to the
    ``run`` it wraps; the wrapper looks it up at every call. There is no public way to
    change the body an autoretrying task runs once it is made.
    """
    if "_orig_run" not in task.__dict__:
        return False
    task._orig_run = run
    return True


def last_receiver_uid(signal: Any) -> Any:
    """Return the ``dispatch_uid`` of the receiver a Celery signal calls last, or None.

    Upstream private layout: ``Signal.receivers``, a list of ``((lookup_key, ...),
    receiver)`` in connection order, whose lookup key starts with the ``dispatch_uid``
    given to ``connect``. No public method tells the order of receivers.
    """
    receivers = signal.receivers
    return receivers[-1][0][0] if receivers else None


class TaskBaseHook(Celery):
    """A Celery app whose tasks made from functions get their base class from ``task_base``.

    Upstream private: ``Celery._task_from_fun(fun, name=None, base=None, bind=False,
    **options)``, which ``app.task`` and ``shared_task`` (for every app, when it is
    finalized) both call to make a task class from a function. No public setting or
    method chooses the base class of a ``shared_task``, nor wraps a ``base=`` given to
    ``app.task``.
    """

    def task_base(self, base: Any) -> Any:
        """Return the base class of a task made from a function (``base=``, or ``app.Task``)."""
        return base

    def _task_from_fun(self, fun: Any, name: Any = None, base: Any = None, **options: Any) -> Any:
        base = self.task_base(base or self.Task)
        return super()._task_from_fun(fun, name=name, base=base, **options)


# django-tenants


def search_path_hook(connection: Any) -> Callable[..., Any] | None:
    """Return the method that sends ``SET search_path`` at each cursor, or None (before 4.0).

    Upstream private: django-tenants' ``DatabaseWrapper._handle_search_path(self,
    cursor=None)``, which its ``_cursor()`` calls as ``self._handle_search_path(...)``
    (so an instance attribute takes its place). No public hook skips one ``SET``.
    django-tenants 3.x sets the path inside ``_cursor()`` itself: None then.
    """
    method = getattr(type(connection), "_handle_search_path", None)
    return method if callable(method) else None


def installed_search_path_hook(connection: Any) -> Any:
    """Return what ``install_search_path_hook`` put on ``connection``, or None.

    Upstream private: ``_handle_search_path`` (see ``search_path_hook``).
    """
    return connection.__dict__.get("_handle_search_path")


def install_search_path_hook(connection: Any, hook: Callable[..., Any]) -> None:
    """Make ``hook(cursor)`` run in place of ``_handle_search_path`` for ``connection``.

    Upstream private: ``_handle_search_path`` (see ``search_path_hook``).
    """
    connection._handle_search_path = hook


# sentry-sdk


def scope_tag(scope: Any, key: str) -> Any:
    """Return the value of the tag ``key`` of a Sentry scope, or None.

    Upstream private: ``sentry_sdk.Scope._tags`` (the dict ``set_tag``, ``remove_tag`` and
    ``set_tags`` write). The scope has no public getter of a tag.
    """
    return getattr(scope, "_tags", {}).get(key)


def heap_event(scheduler: Any, entry: Any, next_time_to_run: float) -> Any:
    """Return the event of ``entry`` that Celery's ``Scheduler.populate_heap`` puts on its heap,
    due ``next_time_to_run`` seconds from the entry's ``default_now()`` (0: now).

    Upstream private: ``Scheduler._when(entry, next_time_to_run)``, the event's time (UTC
    seconds), and the priority 5 that ``populate_heap`` gives every event.
    """
    from celery.beat import event_t

    return event_t(scheduler._when(entry, next_time_to_run) or 0, 5, entry)


def scheduler_heap(scheduler: Any) -> list[Any] | None:
    """Return the heap Celery's ``tick`` sends from (None: not built yet), one event per entry.

    Upstream private: ``Scheduler._heap`` (see ``set_heap``).
    """
    heap: list[Any] | None = scheduler._heap
    return heap


def set_heap(scheduler: Any, events: list[Any]) -> None:
    """Make ``events`` (events of ``heap_event``, heapified) the heap Celery's ``tick`` sends from.

    Upstream private: ``Scheduler._heap``. ``tick`` rebuilds it (``populate_heap``) only
    when it is None or ``schedules_equal`` says False.
    """
    scheduler._heap = events


# django-celery-beat


def model_entry_now(entry: Any) -> Any:
    """Return "now" as a django-celery-beat ``ModelEntry`` compares it with a row's times.

    Upstream private: ``ModelEntry._default_now()`` (aware in ``app.timezone``, or naive
    UTC with ``DJANGO_CELERY_BEAT_TZ_AWARE = False``). Celery's public ``entry.default_now()``
    is the schedule's (or the app's) ``now()``, which ignores that setting.
    """
    return entry._default_now()


def scheduler_entries(scheduler: Any) -> dict[str, Any] | None:
    """Return the entries a ``DatabaseScheduler`` holds, by name, without reloading them.

    Upstream private: ``DatabaseScheduler._schedule`` (None before the first read).
    The public ``schedule`` property may check for changes and reload first.
    """
    entries: dict[str, Any] | None = scheduler._schedule
    return entries


def set_scheduler_entries(scheduler: Any, entries: dict[str, Any]) -> None:
    """Replace the entries a ``DatabaseScheduler`` holds (no ``schedule`` setter exists).

    Upstream private: ``DatabaseScheduler._schedule``.
    """
    scheduler._schedule = entries


def dirty_entry_names(scheduler: Any) -> set[str]:
    """Return the set of names of the entries a ``DatabaseScheduler`` has still to save.

    Upstream private: ``DatabaseScheduler._dirty``: ``reserve()`` adds to it, ``sync()``
    empties it. The set itself is returned: changing it changes the scheduler's.
    """
    names: set[str] = scheduler._dirty
    return names


def invalidate_heap(scheduler: Any) -> None:
    """Make the next ``schedules_equal`` of a ``DatabaseScheduler`` say False (heap rebuilt).

    Upstream private: ``DatabaseScheduler._heap_invalidated``, a class attribute (False)
    that its ``schedule`` property sets after a reload and its ``schedules_equal``
    reads and clears; Celery's ``tick`` rebuilds the heap when that says False.
    """
    scheduler._heap_invalidated = True


def take_heap_invalidated(scheduler: Any) -> bool:
    """Return whether the heap of a ``DatabaseScheduler`` was invalidated since; clear it.

    Upstream private: ``DatabaseScheduler._heap_invalidated`` (see ``invalidate_heap``).
    """
    if scheduler._heap_invalidated:
        scheduler._heap_invalidated = False
        return True
    return False
