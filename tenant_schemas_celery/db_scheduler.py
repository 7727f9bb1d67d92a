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

The parts: ``change_check`` (when to look for changes, and what the last look found),
``schema_entries`` (each schema's entries, and their merge into one schedule),
``beat_sql`` and ``model_entry``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from django.db import connections, router
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler
from kombu.utils.objects import cached_property

from ._sql import closing_on_error, queryset_sql
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
    invalidate_heap,
    rebuild_heap,
    scheduler_entries,
    set_scheduler_entries,
    sync_scheduler,
    take_heap_invalidated,
)
from .model_entry import TenantAwareModelEntry, row_values
from .scheduler import TenantAwareSchedulerMixin, logger
from .schema_entries import SchemaEntries
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
        change_check(ChangeCheck): when to look for changes, what the last look found.
        schema_entries(SchemaEntries): each schema's entries, and their ``conflicts``.
    """

    Entry = TenantAwareModelEntry
    batch_size = 100
    check_interval = 5.0
    read_connections = 2
    full_read_interval = 300.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.change_check = ChangeCheck()
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

        Raises:
            ValueError: two schemas hold a periodic task of the same name (the beat
                loop logs it instead).
        """
        schedule: dict[str, Any] = super().schedule
        if self.schema_entries.conflicts and not self._lenient:
            raise self.schema_entries.conflicts[0].error()
        return schedule

    def setup_schedule(self) -> None:
        if not counters_tracked(self._connection()):
            logger.warning(
                "beat: PostgreSQL's track_counts is off: changes to periodic tasks are only "
                "picked up by the full reload every 5 minutes."
            )
        with self._lenient_conflicts():
            super().setup_schedule()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Run one beat iteration; duplicate names are logged, not raised.

        The schedule is checked for changes at most once per tick: at the first tick
        after the loop slept, and during a burst of due entries (ticks that sent, one
        after the other) at most every ``check_interval`` seconds.
        """
        with self._lenient_conflicts():
            run = functools.partial(super().tick, *args, **kwargs)
            return self.change_check.tick(self.check_interval, run)

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
        otherwise (the first read, every ``full_read_interval`` seconds, and
        django-celery-beat's own full sync) all of them.
        """
        check = self.change_check
        pending = check.take_pending()
        with logged_database_errors(*_READ_ERRORS) as attempt:
            reload = pending or self._full_reload()
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
        """
        dirty_entry_names(self).clear()
        self.change_check.take_pending()
        set_scheduler_entries(self, self.all_as_schedule())
        rebuild_heap(self)

    def close(self) -> None:
        """Save, release the broker connection, and close the reading connections."""
        try:
            super().close()
        finally:
            for reader in self.__dict__.pop("_readers", ()):
                reader.close()

    @cached_property
    def _readers(self) -> list[Any]:
        """The ``read_connections - 1`` connections of the reading threads (besides this one)."""
        alias = self._connection().alias
        own = [connections.create_connection(alias) for _ in range(self.read_connections - 1)]
        for connection in own:
            connection.inc_thread_sharing()
        return own

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

    def _survey(self, known: str | None = None) -> tuple[str, dict[str, Signature] | None]:
        """Return the digest of all signatures, and the signatures of public and every tenant
        schema with beat tables, in schedule order; the signatures are None (not read) when
        the digest is ``known``.
        """
        connection = self._connection()
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
