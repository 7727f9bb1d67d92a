"""``TenantAwareDatabaseScheduler``: django-celery-beat's rows of every schema, in one schedule.

Usage (needs the ``beat`` extra, ``pip install tenant-schemas-celery[beat]``)::

    celery -A proj beat --scheduler=tenant_schemas_celery.db_scheduler.TenantAwareDatabaseScheduler

The enabled ``PeriodicTask`` rows of the public schema and of every ready tenant
(one of ``get_queryset()`` whose schema has django-celery-beat's tables) form one
schedule. A tenant's row is sent in that tenant. A public row is sent in public,
or to the schema its ``_schema_name`` header names, or, with the header
``"_all_tenants_only": true``, to every tenant. Bookkeeping (``last_run_at``,
``total_run_count``, disabling a one-off task) is written to the row's own schema
with schema-qualified SQL. This module, ``model_entry`` (the entry class) and
``beat_sql`` (the SQL) are the only ones that import django-celery-beat.

Scale: rows are read with one ``UNION ALL`` statement per ``batch_size`` schemas,
and after a change only for the schemas that changed. Changes are found without
reading the schemas' tables, from PostgreSQL's activity counters of each schema's
``django_celery_beat_periodictasks`` table (which django-celery-beat updates on every
change) and of its ``django_celery_beat_periodictask`` table (rows inserted or
deleted): one statement returns a digest of them all, and only when it differs from
the last one does a second statement fetch each schema's. A change made through the
ORM reaches PostgreSQL's statistics when its transaction ends (see
``signals._publish_beat_change``); other writers' within about a second of the commit
(PostgreSQL 15+: up to 10 s when the writing connection had flushed its statistics
less than a second before). Every ``full_read_interval`` seconds (5 minutes) every
schema is read again, whatever the counters say.

Large reads run off the beat loop: in the loop (and at start), a read of more than
``batch_size`` schemas (the first load of the tenants' rows, the full read every
``full_read_interval``, a reload after many schemas changed) runs in one background
thread with its own connections (see ``background_read``), which builds the entries
and their heap events too; the loop keeps sending the current schedule, and swaps
the result in at its next tick (``_swap_in_read``: the merge, a heapify). At start
the public rows (``beat_schedule`` included) are read at once, the tenants' in the
background. A read of ``schedule`` outside the loop waits for a read in flight, or
reads at once: it is complete and current. ``background_read = False`` reads
everything in the loop, as before.

The parts: ``change_check`` (when to look for changes, and what the last look found),
``schema_entries`` (each schema's entries, and their merge into one schedule),
``background_read`` (the reading thread), ``beat_sql`` and ``model_entry``.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import connections, router
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler
from kombu.utils.objects import cached_property

from ._sql import closing_on_error, queryset_sql
from .background_read import BackgroundRead
from .beat_sql import (
    by_schema,
    counters_tracked,
    logged_database_errors,
    read_enabled_on,
    read_signatures,
    signatures_sql,
)
from .change_check import ChangeCheck, PendingReload, Signature
from .conf import public_schema_name
from .internals import (
    dirty_entry_names,
    heap_event,
    invalidate_heap,
    rebuild_heap,
    scheduler_entries,
    scheduler_heap,
    set_heap,
    set_scheduler_entries,
    sync_scheduler,
    take_heap_invalidated,
)
from .model_entry import TenantAwareModelEntry, row_values
from .scheduler import TenantAwareSchedulerMixin, logger
from .schema_entries import SchemaEntries, SchemaState
from .targets import OnceLog, valid_schema_names

__all__ = ["TenantAwareDatabaseScheduler", "TenantAwareModelEntry"]

#: How a database error of each step is logged (see ``beat_sql.logged_database_errors``):
#: a ``DatabaseError``, with its traceback; an ``InterfaceError``, as a warning (None: as
#: the former). Beat goes on; the step is tried again at the next call.
_CHECK_ERRORS = (
    "beat: Database error while checking for changes: %r",
    "beat: Database interface error while checking for changes; retrying.",
)
_SAVE_ERRORS = (
    "beat: Database error while saving run counts: %r",
    "beat: Database interface error while saving run counts; retrying.",
)
_READ_ERRORS = ("beat: Could not read the periodic tasks; retrying: %r", None)
#: While a background read runs, the longest the beat loop sleeps: its result is
#: swapped in at a tick.
_POLL_WHILE_READING = 1.0


@dataclass(frozen=True)
class _ReadResult:
    """A background read: the reload it answers, the new state of each schema read, and the
    heap event of each of their entries (by ``id``: the entry and its event)."""

    reload: PendingReload
    states: dict[str, SchemaState]
    events: dict[int, tuple[Any, Any]]


class TenantAwareDatabaseScheduler(TenantAwareSchedulerMixin, DatabaseScheduler):
    """django-celery-beat's ``DatabaseScheduler`` over the public and every tenant schema.

    Names must be unique across schemas: reading ``scheduler.schedule`` raises
    ``ValueError`` on a duplicate, while the beat loop logs the conflict (naming
    both schemas), schedules the row of the first schema (public, then tenants by
    name) and keeps going.

    Attributes:
        batch_size(int): schemas read per statement. Each statement locks one table
            and its indexes per schema until it ends: mind PostgreSQL's
            ``max_locks_per_transaction``. Defaults to 100.
        check_interval(float): during a burst of due entries (beat ticking without
            sleeping in between), the least number of seconds between two checks
            for changes. A read of ``schedule`` outside the beat loop always checks;
            in the loop, the first tick after a sleep does, once. Defaults to 5.
        read_connections(int): database connections reading rows in parallel when
            more than ``batch_size`` schemas are read (the first read, the full reads).
            Each keeps PostgreSQL's caches of its share of the tables warm.
            Defaults to 2.
        full_read_interval(float): seconds after which every schema is read again,
            whatever the activity counters say, and however many schemas were read
            meanwhile because they changed. Defaults to 300.
        background_read(bool): in the beat loop and at start, reads of more than
            ``batch_size`` schemas run in a background thread (with ``read_connections``
            connections of its own) while the loop keeps sending; their result is
            swapped in at the next tick. False: every read runs in the loop, which
            sends nothing meanwhile. Defaults to True.
        change_check(ChangeCheck): when to look for changes, what the last look found.
        schema_entries(SchemaEntries): each schema's entries, and their ``conflicts``.
    """

    Entry = TenantAwareModelEntry
    batch_size = 100
    check_interval = 5.0
    read_connections = 2
    full_read_interval = 300.0
    background_read = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.change_check = ChangeCheck()
        self._reader: BackgroundRead[_ReadResult] = BackgroundRead()
        self._in_loop = 0  # > 0: in a tick or in setup_schedule (reads may run in background)
        self._advanced: set[str] = set()  # entries run (or unsaved) since the read began
        self._read_once = False
        self.schema_entries = SchemaEntries(lambda row: self.Entry(row, app=self.app), row_values)
        self._lenient = 0  # > 0: duplicate names are logged, not raised
        self._invalid = OnceLog.unusable_names()
        self._no_tables = OnceLog(
            "beat: Not reading the periodic tasks of schema %r: its django-celery-beat "
            "tables do not exist (yet)."
        )
        super().__init__(*args, **kwargs)

    @property
    def schedule(self) -> dict[str, Any]:
        """The schedule, reloaded first when rows changed.

        In the beat loop, a finished background read is swapped in first, and there
        is no check while one runs. Outside the loop, a read in flight is waited for.

        Raises:
            ValueError: two schemas hold a periodic task of the same name (the beat
                loop logs it instead).
        """
        self._swap_in_read(wait=not self._in_loop)
        if not self._read_once:
            self._read_once = True
            self.sync()
            self._install(self.all_as_schedule(), initial=True)
        elif not self._reader.busy and self.schedule_changed():
            logger.debug("beat: The periodic tasks changed.")
            self.sync()
            self._install(self.all_as_schedule())
        schedule = scheduler_entries(self)
        assert schedule is not None
        if self.schema_entries.conflicts and not self._lenient:
            raise self.schema_entries.conflicts[0].error()
        return schedule

    def setup_schedule(self) -> None:
        if not counters_tracked(self._connection()):
            logger.warning(
                "beat: PostgreSQL's track_counts is off: changes to periodic tasks are only "
                "picked up by the full reload every 5 minutes."
            )
        with self._lenient_conflicts(), self._looping():
            super().setup_schedule()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Run one beat iteration; duplicate names are logged, not raised.

        A finished background read is swapped in first. The schedule is checked for
        changes at most once per tick: at the first tick after the loop slept, and
        during a burst of due entries (ticks that sent, one after the other) at most
        every ``check_interval`` seconds. While a background read runs, the loop
        sleeps at most a second at a time.
        """
        with self._lenient_conflicts(), self._looping():
            self._swap_in_read()
            run = functools.partial(super().tick, *args, **kwargs)
            delay = self.change_check.tick(self.check_interval, run)
        if delay and self._reader.busy:
            delay = min(delay, _POLL_WHILE_READING)
        return delay

    def schedules_equal(self, *args: Any, **kwargs: Any) -> bool:
        # The schedule only changes through a reload, which invalidates the heap:
        # comparing every entry at every tick (Celery's way) is O(entries) per tick.
        return not take_heap_invalidated(self)

    def reserve(self, entry: Any) -> Any:
        """Advance ``entry`` to its next run, and keep that new entry in the schedule.

        django-celery-beat re-reads every row on a change, so its schedule may keep
        the old entry; here unchanged schemas keep their entries across reloads,
        and a heap rebuilt from a stale entry would send it again.
        """
        new_entry = super().reserve(entry)
        if self._reader.busy:
            self._advanced.add(new_entry.name)
        entries = scheduler_entries(self) or {}
        if entries.get(new_entry.name) is entry:
            entries[new_entry.name] = new_entry
        self.schema_entries.replace(entry, new_entry)
        return new_entry

    def update_from_dict(self, mapping: Mapping[str, Any]) -> None:
        """Install ``beat_schedule`` entries as public rows, named as ``expand_entry`` says."""
        with self._lenient_conflicts():
            self.schedule  # noqa: B018 -- the first read must come before the new rows
        entries = self.Entry.from_schedule(mapping, app=self.app)
        self.schema_entries.add(public_schema_name(), entries)
        set_scheduler_entries(self, self.schema_entries.merge())
        invalidate_heap(self)

    def schedule_changed(self) -> bool:
        """Return whether rows changed in some schema, or a schema came or went.

        At every read of ``schedule`` (in the beat loop, at most once per tick; see
        ``tick``), one statement whatever the number of tenants: a digest of every
        schema's signature (see ``beat_sql.signatures_sql``), computed by PostgreSQL.
        Only when it differs from the last one are the signatures read and compared.
        Every ``full_read_interval`` seconds, True without a check: every schema is
        read again.
        """
        check = self.change_check
        if not check.check_due():
            return False
        if check.full_read_due(self.full_read_interval):
            return True
        with logged_database_errors(*_CHECK_ERRORS) as attempt:
            digest, signatures = self._survey(check.digest)
        if attempt.failed or signatures is None:
            return False
        return check.changes_found(digest, signatures, self.schema_entries.signatures())

    def all_as_schedule(self) -> dict[str, Any]:
        """Return the merged schedule, reading only the schemas that changed.

        After ``schedule_changed()`` found changes, only those schemas are read;
        otherwise (the first read, every ``full_read_interval`` seconds) all of them.
        In the beat loop, with ``background_read``, more than ``batch_size`` schemas
        are read in the background instead (the first load reads public at once):
        the schedule returned is then the current one.
        """
        check = self.change_check
        pending = check.take_pending()
        background = self.background_read and self._in_loop > 0 and not self._reader.busy
        with logged_database_errors(*_READ_ERRORS) as attempt:
            if pending is None and background and len(self.schema_entries.states) > self.batch_size:
                check.begin_full_read()
                self._start_read(None)
                return scheduler_entries(self) or {}
            reload = pending or self._full_reload()
            if background and len(reload.reading) > self.batch_size:
                public = public_schema_name()
                if public in reload.stale and public not in self.schema_entries.states:
                    rows = by_schema(self.enabled_models([public]), [public])
                    self.schema_entries.reload(reload.signatures, rows)
                    reload = PendingReload(
                        reload.signatures, reload.stale - {public}, reload.digest, reload.full
                    )
                self._start_read(reload)
                return self.schema_entries.merge()
            rows = by_schema(self.enabled_models(reload.reading), reload.reading)
            self.schema_entries.reload(reload.signatures, rows)
            check.reloaded(reload)
        if attempt.failed:
            check.read_failed()
        return self.schema_entries.merge()

    def enabled_models(self, schemas: Sequence[str] | None = None) -> list[PeriodicTask]:
        """Return the enabled rows of ``schemas`` (default: those read last), schedules attached.

        Each row records its schema (see ``beat_sql.schema_of``). One statement per
        ``batch_size`` schemas reads the rows, and one per batch and kind of
        schedule in use reads the schedules. A schema whose tables cannot be read
        is logged and skipped.
        """
        names = list(self.schema_entries.states) if schemas is None else list(schemas)
        readers = self._readers if len(names) > self.batch_size else []
        return read_enabled_on([self._connection(), *readers], names, self.batch_size)

    def sync(self) -> None:
        """Save the bookkeeping of the entries that ran, each in its row's schema.

        Unlike django-celery-beat's, it does not close the connection (see
        ``closing_on_error``); a save that fails is tried again at the next sync.
        """
        dirty, entries = dirty_entry_names(self), scheduler_entries(self) or {}
        if not self.may_write():  # a follower under leader election: the leader saves
            dirty.clear()
            return
        saving = None
        with logged_database_errors(*_SAVE_ERRORS) as attempt, closing_on_error(self._connection()):
            while dirty:
                saving = dirty.pop()
                entry = entries.get(saving)
                if entry is not None:
                    entry.save()
        if attempt.failed and saving is not None:
            dirty.add(saving)  # tried again at the next sync

    def save_before_send(self) -> None:
        """Save the ``last_run_at`` of the run about to be sent (leader election): a beat
        taking over reads it, and does not send that run again.
        """
        sync_scheduler(self)

    def take_over(self) -> None:
        """Read every schema's rows again on becoming the leader: the ``last_run_at`` the
        last leader saved decides what is due (a run due while no beat led is sent once).

        The read is made at once, in the loop, whatever the number of schemas: a
        background read in flight (it may have read rows before the last leader's final
        saves) is waited for and swapped in first, so that it cannot revert them later.
        """
        dirty_entry_names(self).clear()
        self._swap_in_read(wait=True)
        self.change_check.take_pending()
        in_loop, self._in_loop = self._in_loop, 0  # no background read: send from the rows
        try:
            set_scheduler_entries(self, self.all_as_schedule())
        finally:
            self._in_loop = in_loop
        rebuild_heap(self)

    def close(self) -> None:
        """Save, release the broker connection, stop the reading thread (once its read
        ends), and close the reading connections."""
        try:
            super().close()
        finally:
            self._reader.close()
            for reader in [
                *self.__dict__.pop("_readers", ()),
                *self.__dict__.pop("_background_connections", ()),
            ]:
                reader.close()

    def _swap_in_read(self, wait: bool = False) -> bool:
        """Take the result of a finished background read into the schedule; return whether
        one was taken. With ``wait``, wait for a read in flight (outside the beat loop).

        Cheap: the schemas' states are replaced, the schedule merged, and the heap
        rebuilt only if an entry changed. An entry the loop ran while the read was in
        flight keeps its run (the loop's ``last_run_at`` and ``total_run_count``). A
        failed read is tried again at the next check.
        """
        if not self._reader.busy:
            return False
        outcome = self._reader.take(timeout=None if wait else 0)
        if outcome is None:
            return False
        advanced, self._advanced = self._advanced, set()
        if outcome.value is None:
            self.change_check.read_failed()
            return False
        result = outcome.value
        self._keep_runs(advanced, result.states)
        self.schema_entries.install(result.reload.signatures, result.states)
        self.change_check.reloaded(result.reload)
        self._install(self.schema_entries.merge(), events=result.events, advanced=advanced)
        return True

    def _keep_runs(self, advanced: set[str], states: Mapping[str, SchemaState]) -> None:
        """In the new ``states``, give the entries ``advanced`` (run by the loop, or not saved
        yet, since the read began) the loop's run: the read may have found their rows older."""
        current = scheduler_entries(self) or {}
        for name in advanced:
            entry = current.get(name)
            state = states.get(entry.schema_name) if entry is not None else None
            if entry is None or state is None:
                continue
            fresh = state.entries.get(name)
            if fresh is None or fresh is entry:
                continue
            model = fresh.model
            model.last_run_at = entry.model.last_run_at
            model.total_run_count = entry.model.total_run_count
            try:
                rebuilt = self.Entry(model, app=self.app)
            except Exception:  # the row was read as an entry already: keep that one
                rebuilt = fresh
            same = rebuilt.read_values == entry.read_values
            state.entries[name] = entry if same else rebuilt

    def _start_read(self, reload: PendingReload | None) -> None:
        """Start reading ``reload`` (None: every schema, surveyed first) in the background."""
        self._advanced = set(dirty_entry_names(self))
        connections_ = self._background_connections
        self._reader.start(functools.partial(self._read_in_background, reload, connections_))

    def _read_in_background(
        self, reload: PendingReload | None, readers: Sequence[Any]
    ) -> _ReadResult:
        """Read ``reload`` on ``readers`` and build the entries: the reading thread's job."""
        try:
            if reload is None:
                digest, signatures = self._survey(None, readers[0])
                assert signatures is not None
                reload = PendingReload.every_schema(digest, signatures)
            names = reload.reading
            # The first load (public read already) shares the schemas among the connections
            # as the full reads will, so that each reads the tables it keeps warm
            public = public_schema_name()
            shared = [public, *names] if reload.full and public not in names else names
            rows = by_schema(read_enabled_on(readers, shared, self.batch_size), shared)
            states = self.schema_entries.read(
                reload.signatures, {name: rows[name] for name in names}
            )
            events = {
                id(entry): (entry, event)
                for state in states.values()
                for entry in state.entries.values()
                if (event := self._heap_event(entry)) is not None
            }
            return _ReadResult(reload, states, events)
        finally:
            connections.close_all()  # this thread's own, if an entry wrote (none usually)

    def _heap_event(self, entry: Any) -> Any:
        """Return the heap event of ``entry``, as Celery's ``populate_heap`` makes it (None:
        its ``is_due()`` raised)."""
        try:
            is_due, next_time_to_run = entry.is_due()
        except Exception:
            return None
        return heap_event(self, entry, 0 if is_due else next_time_to_run)

    def _install(
        self,
        entries: dict[str, Any],
        initial: bool = False,
        events: Mapping[int, tuple[Any, Any]] | None = None,
        advanced: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        """Make ``entries`` the schedule, and give the heap their events.

        An entry already on the heap keeps its event; the others' come from ``events``
        (made by the reading thread; not for the entries ``advanced`` meanwhile) or are
        made here. Celery's own rebuild (every entry's ``is_due()`` in the loop, 0.3 s at
        10,000 entries) is left for the first tick, and for an entry whose ``is_due()``
        raises.
        """
        current = scheduler_entries(self)
        set_scheduler_entries(self, entries)
        heap = scheduler_heap(self)
        if initial or heap is None or _same_entries(current, entries):
            return
        on_heap = {id(event.entry): event for event in heap}
        made = events or {}
        new_heap = []
        for name, entry in entries.items():
            event = on_heap.get(id(entry))
            if event is None and name not in advanced:
                known = made.get(id(entry))
                event = known[1] if known is not None and known[0] is entry else None
            if event is None or event.entry is not entry:
                event = self._heap_event(entry)
            if event is None:
                invalidate_heap(self)
                return
            new_heap.append(event)
        heapq.heapify(new_heap)
        set_heap(self, new_heap)
        take_heap_invalidated(self)  # an earlier invalidation: this heap is of every entry

    @cached_property
    def _background_connections(self) -> list[Any]:
        """The ``read_connections`` connections of the reading thread."""
        return _thread_shared_connections(self._connection().alias, max(1, self.read_connections))

    @contextmanager
    def _looping(self) -> Iterator[None]:
        self._in_loop += 1
        try:
            yield
        finally:
            self._in_loop -= 1

    @cached_property
    def _readers(self) -> list[Any]:
        """The ``read_connections - 1`` connections of the reading threads (besides this one)."""
        return _thread_shared_connections(self._connection().alias, self.read_connections - 1)

    @contextmanager
    def _lenient_conflicts(self) -> Iterator[None]:
        self._lenient += 1
        try:
            yield
        finally:
            self._lenient -= 1

    def _connection(self) -> Any:
        return connections[router.db_for_read(PeriodicTask)]

    def _full_reload(self) -> PendingReload:
        self.change_check.begin_full_read()
        digest, signatures = self._survey()
        assert signatures is not None
        return PendingReload.every_schema(digest, signatures)

    def _survey(
        self, known: str | None = None, connection: Any = None
    ) -> tuple[str, dict[str, Signature] | None]:
        """Return the digest of all signatures, and the signatures of public and every tenant
        schema with beat tables, in schedule order; the signatures are None (not read) when
        the digest is ``known``. On ``connection`` (by default the scheduler's).
        """
        connection = connection or self._connection()
        public = public_schema_name()
        tenants = queryset_sql(self.get_queryset(), "schema_name", connection.alias)
        sql, params = signatures_sql(public, *tenants)
        with closing_on_error(connection), connection.cursor() as cursor:
            digest, found = read_signatures(cursor, sql, params, known)
        if found is None:
            return digest, None
        names = [public, *sorted(valid_schema_names(set(found) - {public}, self._invalid))]
        self._no_tables.update([name for name in names if found.get(name) is None], names)
        return digest, {name: signature for name in names if (signature := found.get(name))}


def _same_entries(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Return whether ``new`` holds the very entries of ``old``, by the same names."""
    if old is None or len(old) != len(new):
        return False
    return all(old.get(name) is entry for name, entry in new.items())


def _thread_shared_connections(alias: str, count: int) -> list[Any]:
    """Return ``count`` new connections to ``alias`` that other threads may use."""
    own = [connections.create_connection(alias) for _ in range(count)]
    for connection in own:
        connection.inc_thread_sharing()
    return own
