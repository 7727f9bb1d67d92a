"""``TenantAwareDatabaseScheduler``: django-celery-beat's rows of every schema, in one schedule.

Usage (needs the ``beat`` extra, ``pip install tenant-schemas-celery[beat]``)::

    celery -A proj beat --scheduler=tenant_schemas_celery.db_scheduler.TenantAwareDatabaseScheduler

The enabled ``PeriodicTask`` rows of the public schema and of every ready tenant
(one of ``get_queryset()`` whose schema has django-celery-beat's tables) form one
schedule. A tenant's row is sent in that tenant. A public row is sent in public,
or to the schema its ``_schema_name`` header names, or, with the header
``"_all_tenants_only": true``, to every tenant. Bookkeeping (``last_run_at``,
``total_run_count``, disabling a one-off task) is written to the row's own schema
with schema-qualified SQL. This is the only module that imports django-celery-beat.

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
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery import schedules
from django.db import (
    DatabaseError,
    InterfaceError,
    ProgrammingError,
    connections,
    router,
)
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
    SolarSchedule,
)
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry
from django_celery_beat.utils import NEVER_CHECK_TIMEOUT
from kombu.utils.objects import cached_property

from ._sql import (
    batches,
    closing_on_error,
    pg_array,
    queryset_sql,
    quote_ident,
    quote_schema,
    table_in_schema,
)
from .capture import (
    ALL_TENANTS_HEADER,
    SCHEMA_HEADER,
    SPREAD_HEADER,
    current_schema_name,
    entry_headers,
)
from .conf import public_schema_name
from .resolution import header_flag, validate_schema_name
from .scheduler import TenantAwareSchedulerMixin, expand_entry, logger
from .spread import validate_spread
from .targets import OnceLog, valid_schema_names

__all__ = ["TenantAwareDatabaseScheduler", "TenantAwareModelEntry"]

#: Attribute of a ``PeriodicTask`` instance naming the schema it was read from.
SCHEMA_ATTR = "_tenant_schema_name"
#: The schedule models, by the ``PeriodicTask`` foreign key that points at them.
SCHEDULE_MODELS: dict[str, type[Any]] = {
    "interval": IntervalSchedule,
    "crontab": CrontabSchedule,
    "solar": SolarSchedule,
    "clocked": ClockedSchedule,
}
#: What tells a schema's rows changed: the oids of its change marker and task tables,
#: and their activity counters.
_Signature = tuple[int, int, int, int]


class TenantAwareModelEntry(ModelEntry):
    """A ``PeriodicTask`` row of one schema, sent and saved in the right schemas.

    Attributes:
        schema_name(str): the schema the row was read from; its bookkeeping goes there.
        tenant_schemas(tuple[str, ...] | None): where it is sent: the row's own schema
            for a tenant row; for a public row, public, the schema of its
            ``_schema_name`` header, or every tenant (None) with ``_all_tenants_only``.
        tenant_spread_seconds(float): the ``_tenant_spread_seconds`` header, or 0.
    """

    schema_name: str
    tenant_schemas: tuple[str, ...] | None
    tenant_spread_seconds: float
    #: The row's values when the entry was made (see ``row_values``): a read of the row
    #: that finds them again keeps the entry. They are taken before django-celery-beat
    #: fills in a missing ``last_run_at``; an entry made after a run holds the values
    #: that ``save()`` writes.
    read_values: tuple[Any, ...]

    def __init__(self, model: PeriodicTask, app: Any = None) -> None:
        self.read_values = row_values(model)
        self.schema_name = schema_of(model)
        super().__init__(model, app=app)
        self.tenant_schemas, self.tenant_spread_seconds = row_targets(
            self.schema_name, self.options["headers"]
        )

    @classmethod
    def from_entry(cls, name: str, app: Any = None, **entry: Any) -> TenantAwareModelEntry:
        """Create or update the public row of a ``beat_schedule`` entry (see ``expand_entry``).

        Its targets are stored as headers, as the PyPI package stores them, so
        existing rows carry over. Fields given as ``tenant_schemas`` (one schema, or
        None for every tenant) and ``tenant_spread_seconds`` are made headers too.
        """
        from django_tenants.utils import schema_context

        options = dict(entry.get("options") or {})
        if "tenant_schemas" in entry or "tenant_spread_seconds" in entry:
            tenant_schemas = entry.pop("tenant_schemas", None)
            spread = validate_spread(entry.pop("tenant_spread_seconds", None))
            schema_name = None
            if tenant_schemas is not None:
                (schema_name,) = tenant_schemas  # a stored row goes to one schema or to all
            options["headers"] = entry_headers(options.get("headers") or {}, schema_name, spread)
        with schema_context(public_schema_name()):
            created: TenantAwareModelEntry = super().from_entry(
                name, app=app, **dict(entry, options=options)
            )
        return created

    def is_due(self) -> Any:
        """Celery's ``is_due``; a one-off task that ran, or an expired task, is disabled
        in its own schema instead of being sent.

        django-celery-beat disables an expired task itself from 2.8 on; with older
        releases it is disabled here when it falls due.
        """
        model = self.model
        if model.one_off and model.enabled and model.total_run_count > 0:
            model.enabled, model.total_run_count, model.last_run_at = False, 0, None
            self._write({"enabled": False, "total_run_count": 0, "last_run_at": None}, True)
            return schedules.schedstate(False, NEVER_CHECK_TIMEOUT)
        state = super().is_due()
        if state.is_due and model.expires is not None and self._default_now() >= model.expires:
            self._disable(model)
            return schedules.schedstate(False, NEVER_CHECK_TIMEOUT)
        return state

    def save(self) -> None:
        """Save ``last_run_at`` and ``total_run_count`` into this row, in its own schema."""
        model = self.model
        self._write({"last_run_at": model.last_run_at, "total_run_count": model.total_run_count})

    def _disable(self, model: PeriodicTask) -> None:
        model.no_changes, model.enabled, model.last_run_at = True, False, None
        self._write({"enabled": False, "last_run_at": None})

    def _write(self, values: Mapping[str, Any], signal_change: bool = False) -> None:
        update_row(self.schema_name, self.model.pk, values, signal_change)


def schema_of(model: PeriodicTask) -> str:
    """Return the schema ``model`` was read from (the active schema if not recorded)."""
    schema_name = getattr(model, SCHEMA_ATTR, None) or current_schema_name() or public_schema_name()
    setattr(model, SCHEMA_ATTR, schema_name)
    return schema_name


def row_targets(
    schema_name: str, headers: Mapping[str, Any]
) -> tuple[tuple[str, ...] | None, float]:
    """Return ``(tenant_schemas, tenant_spread_seconds)`` of a row of ``schema_name``.

    A tenant's row always stays in its tenant, whatever its headers say.

    Raises:
        InvalidSchemaName: a public row's ``_schema_name`` header is not a schema name.
        TenantConfigurationError: the ``_tenant_spread_seconds`` header is malformed, or
            a public row's ``_all_tenants_only`` header is neither true nor false.
    """
    spread = validate_spread(headers.get(SPREAD_HEADER))
    public = public_schema_name()
    if schema_name != public:
        return (schema_name,), spread
    if header_flag(headers.get(ALL_TENANTS_HEADER), ALL_TENANTS_HEADER):
        return None, spread
    target = headers.get(SCHEMA_HEADER)
    return (public if target is None else validate_schema_name(target),), spread


def update_row(
    schema_name: str, pk: Any, values: Mapping[str, Any], signal_change: bool = False
) -> None:
    """Update columns of the ``PeriodicTask`` row ``pk`` of ``schema_name`` (never another schema).

    With ``signal_change``, ``date_changed`` is set too and the schema's
    ``PeriodicTasks`` change marker is bumped, as django-celery-beat does on a save.
    """
    connection = connections[router.db_for_write(PeriodicTask)]
    now = timezone.now()
    values = {**values, "date_changed": now} if signal_change else values
    fields = [PeriodicTask._meta.get_field(name) for name in values]
    assignments = ", ".join(f"{quote_ident(field.column)} = %s" for field in fields)
    params = [field.get_db_prep_save(values[field.name], connection) for field in fields]
    table = f"{quote_schema(schema_name)}.{quote_ident(PeriodicTask._meta.db_table)}"
    pk_column = quote_ident(PeriodicTask._meta.pk.column)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {assignments} WHERE {pk_column} = %s", [*params, pk])
        if signal_change:
            _mark_changed(cursor, schema_name, now)


def _mark_changed(cursor: Any, schema_name: str, now: Any) -> None:
    table = f"{quote_schema(schema_name)}.{quote_ident(PeriodicTasks._meta.db_table)}"
    cursor.execute(
        f"INSERT INTO {table} (ident, last_update) VALUES (1, %s) "
        "ON CONFLICT (ident) DO UPDATE SET last_update = EXCLUDED.last_update",
        [now],
    )


@dataclass
class _SchemaState:
    """What the scheduler knows of one schema: its change signature, its entries, and the
    values of its rows that could not be made entries (logged once)."""

    signature: _Signature
    entries: dict[str, TenantAwareModelEntry]
    rejected: dict[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Conflict:
    """Two schemas hold a periodic task of the same name; the first one's is scheduled."""

    name: str
    first_schema: str
    second_schema: str

    def error(self) -> ValueError:
        """Return the ``ValueError`` that ``TenantAwareDatabaseScheduler.schedule`` raises."""
        return ValueError(
            f"duplicate periodic task name: {self.name!r}. "
            f"Previously seen in schema: {self.first_schema!r}."
        )


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
    """

    Entry = TenantAwareModelEntry
    batch_size = 100
    check_interval = 5.0
    read_connections = 2
    full_read_interval = 300.0
    _heap_invalidated: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._ticking = False  # tick() is running
        self._tick_check = False  # the running tick may still check for changes
        self._after_send = False  # the last tick sent an entry (no sleep since)
        self._states: dict[str, _SchemaState] = {}
        self._pending: tuple[dict[str, _Signature], set[str], str] | None = None
        self._digest: str | None = None
        self._conflicts: list[Conflict] = []
        self._lenient = 0
        self._last_check = -float("inf")
        self._last_full_read = -float("inf")
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
        if self._conflicts and not self._lenient:
            raise self._conflicts[0].error()
        return schedule

    def setup_schedule(self) -> None:
        self._warn_without_counters()
        with self._lenient_conflicts():
            super().setup_schedule()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Run one beat iteration; duplicate names are logged, not raised.

        The schedule is checked for changes at most once per tick: at the first tick
        after the loop slept, and during a burst of due entries (ticks that sent, one
        after the other) at most every ``check_interval`` seconds.
        """
        elapsed = time.monotonic() - self._last_check
        self._tick_check = not self._after_send or elapsed >= self.check_interval
        self._ticking = True
        try:
            with self._lenient_conflicts():
                delay: float = super().tick(*args, **kwargs)
        finally:
            self._ticking = False
        self._after_send = not delay
        return delay

    def schedules_equal(self, *args: Any, **kwargs: Any) -> bool:
        # The schedule only changes through a reload, which invalidates the heap:
        # comparing every entry at every tick (Celery's way) is O(entries) per tick.
        if self._heap_invalidated:
            self._heap_invalidated = False
            return False
        return True

    def reserve(self, entry: Any) -> Any:
        """Advance ``entry`` to its next run, and keep that new entry in the schedule.

        django-celery-beat re-reads every row on a change, so its schedule may keep
        the old entry; here unchanged schemas keep their entries across reloads,
        and a heap rebuilt from a stale entry would send it again.
        """
        new_entry = super().reserve(entry)
        state = self._states.get(new_entry.schema_name)
        for entries in (self._schedule, state.entries if state else {}):
            if entries.get(new_entry.name) is entry:
                entries[new_entry.name] = new_entry
        return new_entry

    def update_from_dict(self, mapping: Mapping[str, Any]) -> None:
        """Install ``beat_schedule`` entries as public rows, named as ``expand_entry`` says."""
        with self._lenient_conflicts():
            self.schedule  # noqa: B018 -- the first read must come before the new rows
        entries: dict[str, TenantAwareModelEntry] = {}
        for name, fields in mapping.items():
            try:
                for entry_name, entry_fields in expand_entry(name, fields).items():
                    entry = self.Entry.from_entry(entry_name, app=self.app, **entry_fields)
                    if entry.model.enabled:
                        entries[entry_name] = entry
            except Exception as exc:
                logger.error("beat: Ignoring schedule entry %r: %s", name, exc, exc_info=True)
        public = self._states.get(public_schema_name())
        if public is not None:
            public.entries.update(entries)
        self._schedule = self._merged()
        self._heap_invalidated = True

    def schedule_changed(self) -> bool:
        """Return whether rows changed in some schema, or a schema came or went.

        At every read of ``schedule`` (in the beat loop, at most once per tick; see
        ``tick``), one statement whatever the
        number of tenants: a digest of every schema's signature (see
        ``_signatures_sql``), computed by PostgreSQL. Only when it differs from the
        last one are the signatures read and compared. Every ``full_read_interval``
        seconds, True without a check: every schema is read again.
        """
        if self._ticking:
            if not self._tick_check:
                return False
            self._tick_check = False
        self._last_check = time.monotonic()
        if self._last_check - self._last_full_read >= self.full_read_interval:
            self._pending = None
            return True
        try:
            digest, survey = self._survey(self._digest)
            if survey is None:
                return False
        except DatabaseError as exc:
            logger.exception("beat: Database error while checking for changes: %r", exc)
            return False
        except InterfaceError:
            logger.warning("beat: Database interface error while checking for changes; retrying.")
            return False
        known = self._states
        stale = {
            name for name in survey if name not in known or known[name].signature != survey[name]
        }
        stale |= known.keys() - survey.keys()
        if stale:
            self._pending = (survey, stale, digest)
        else:
            self._digest = digest
        return bool(stale)

    def all_as_schedule(self) -> dict[str, Any]:
        """Return the merged schedule, reading only the schemas that changed.

        After ``schedule_changed()`` found changes, only those schemas are read;
        otherwise (the first read, every ``full_read_interval`` seconds, and
        django-celery-beat's own full sync) all of them.
        """
        pending, self._pending = self._pending, None
        try:
            if pending is None:
                self._last_check = time.monotonic()
                digest, survey = self._survey()
                assert survey is not None
                self._reload(survey, survey.keys() | self._states.keys())
                self._last_full_read = self._last_check
            else:
                survey, stale, digest = pending
                self._reload(survey, stale)
            self._digest = digest  # the schedule now reflects this digest
        except (DatabaseError, InterfaceError) as exc:
            logger.exception("beat: Could not read the periodic tasks; retrying: %r", exc)
            self._last_check = -float("inf")
        return self._merged()

    def enabled_models(self, schemas: Sequence[str] | None = None) -> list[PeriodicTask]:
        """Return the enabled rows of ``schemas`` (default: those read last), schedules attached.

        Each row records its schema (see ``schema_of``). One statement per
        ``batch_size`` schemas reads the rows, and one per batch and kind of
        schedule in use reads the schedules. A schema whose tables cannot be read
        is logged and skipped.
        """
        names = list(self._states) if schemas is None else list(schemas)
        own = self._readers if len(names) > self.batch_size else []
        parts = [names[index :: len(own) + 1] for index in range(len(own) + 1)]
        with ThreadPoolExecutor(max(1, len(own)), thread_name_prefix="tsc-beat-read") as pool:
            futures = [
                pool.submit(_read, reader, part, self.batch_size)
                for reader, part in zip(own, parts[1:])
            ]
            rows = _read(self._connection(), parts[0], self.batch_size)
            return rows + [row for future in futures for row in future.result()]

    def sync(self) -> None:
        """Save the bookkeeping of the entries that ran, each in its row's schema.

        Unlike django-celery-beat's, it does not close the connection (see
        ``closing_on_error``); the saves that fail are tried again at the next sync.
        """
        failed: set[str] = set()
        try:
            with closing_on_error(self._connection()):
                while self._dirty:
                    name = self._dirty.pop()
                    entry = (self._schedule or {}).get(name)
                    if entry is None:
                        continue
                    try:
                        entry.save()
                    except (DatabaseError, InterfaceError):
                        failed.add(name)
                        raise
        except DatabaseError as exc:
            logger.exception("beat: Database error while saving run counts: %r", exc)
        except InterfaceError:
            logger.warning("beat: Database interface error while saving run counts; retrying.")
        finally:
            self._dirty |= failed

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

    def _warn_without_counters(self) -> None:
        try:
            with self._connection().cursor() as cursor:
                cursor.execute("SELECT current_setting('track_counts')::bool")
                (track_counts,) = cursor.fetchone()
        except DatabaseError:
            return  # the first read reports database errors
        if not track_counts:
            logger.warning(
                "beat: PostgreSQL's track_counts is off: changes to periodic tasks are only "
                "picked up by the full reload every 5 minutes."
            )

    def _survey(self, known: str | None = None) -> tuple[str, dict[str, _Signature] | None]:
        """Return the digest of all signatures, and the signatures of public and every tenant
        schema with beat tables, in order; the signatures are None (not read) when the
        digest is ``known``.
        """
        connection = self._connection()
        public = public_schema_name()
        sql, params = _signatures_sql(
            public, *queryset_sql(self.get_queryset(), "schema_name", connection.alias)
        )
        with closing_on_error(connection), connection.cursor() as cursor:
            # The digest comes first: a change made between the two statements is in the
            # signatures, and makes the next digest differ from this one. It is the sum
            # of a 64-bit hash of each row (an order-free checksum; sorting costs more).
            cursor.execute(
                "SELECT count(*) || ':' || coalesce(sum(hashtextextended(s::text, 0)::numeric), 0) "
                f"FROM ({sql}) s",
                params,
            )
            (digest,) = cursor.fetchone()
            if digest == known:
                return digest, None
            cursor.execute(sql, params)
            rows = {
                name: None if changes is None or tasks is None else (changes, tasks, *counters)
                for name, changes, tasks, *counters in cursor
            }
        names = [public, *sorted(valid_schema_names(set(rows) - {public}, self._invalid))]
        self._no_tables.update([name for name in names if rows.get(name) is None], names)
        return digest, {name: signature for name in names if (signature := rows.get(name))}

    def _reload(self, survey: Mapping[str, _Signature], stale: set[str]) -> None:
        reading = [name for name in survey if name in stale]
        rows: dict[str, list[PeriodicTask]] = {name: [] for name in reading}
        for row in self.enabled_models(reading):
            rows[schema_of(row)].append(row)
        states = self._states
        for name in reading:
            entries, rejected = self._entries(name, rows[name], states.get(name))
            states[name] = _SchemaState(survey[name], entries, rejected)
        self._states = {name: states[name] for name in survey if name in states}

    def _entries(
        self, schema_name: str, rows: list[PeriodicTask], previous: _SchemaState | None
    ) -> tuple[dict[str, Any], dict[str, tuple[Any, ...]]]:
        """Return the entries of ``rows``, and the values of the rows rejected.

        A row read again unchanged keeps its entry; a rejected row read again
        unchanged stays rejected, without being logged again.
        """
        known = previous.entries if previous is not None else {}
        was_rejected = previous.rejected if previous is not None else {}
        entries, rejected = {}, {}
        for row in rows:
            values = row_values(row)
            kept = known.get(row.name)
            if kept is not None and kept.read_values == values:
                entries[row.name] = kept
                continue
            if was_rejected.get(row.name) == values:
                rejected[row.name] = values
                continue
            try:
                entries[row.name] = self.Entry(row, app=self.app)
            except Exception as exc:
                rejected[row.name] = values
                logger.error(
                    "beat: Ignoring periodic task %r of schema %r: %s",
                    row.name,
                    schema_name,
                    exc,
                    exc_info=True,
                )
        return entries, rejected

    def _merged(self) -> dict[str, Any]:
        schedule: dict[str, Any] = {}
        seen: dict[str, str] = {}
        self._conflicts = []
        for schema_name, state in self._states.items():
            for name, entry in state.entries.items():
                first = seen.setdefault(name, schema_name)
                if first == schema_name:
                    schedule[name] = entry
                else:
                    self._conflicts.append(Conflict(name, first, schema_name))
        for conflict in self._conflicts:
            logger.error(
                "beat: Duplicate periodic task name %r in schemas %r and %r: the task of %r "
                "is scheduled, the one of %r is not. Rename one of them.",
                conflict.name,
                conflict.first_schema,
                conflict.second_schema,
                conflict.first_schema,
                conflict.second_schema,
            )
        return schedule


def row_values(model: PeriodicTask) -> tuple[Any, ...]:
    """Return the values of a ``PeriodicTask`` row and of its schedule row, to compare reads."""
    values: list[Any] = [
        getattr(model, field.attname) for field in PeriodicTask._meta.concrete_fields
    ]
    for field_name, schedule_model in SCHEDULE_MODELS.items():
        schedule = PeriodicTask._meta.get_field(field_name).get_cached_value(model, default=None)
        values.append(
            None
            if schedule is None
            else tuple(getattr(schedule, f.attname) for f in schedule_model._meta.concrete_fields)
        )
    return tuple(values)


def _signatures_sql(
    public: str, tenants_sql: str, tenants_params: Sequence[Any]
) -> tuple[str, list[Any]]:
    """Return the statement selecting ``(name, changes, tasks, changes counter, tasks counter)``
    of public and of every tenant schema (oids NULL: no beat tables), and its parameters.

    One statement for all schemas, which reads none of their tables: the tenants
    come from the scheduler's queryset, as a subquery; the change marker and task
    tables are found with ``to_regclass``; their counters are PostgreSQL's
    cumulative statistics (``pg_stat_user_tables``): rows inserted or updated in
    the change marker table (django-celery-beat updates it on every change), rows
    inserted or deleted in the task table (beat's own bookkeeping only updates).
    """
    return (
        # MATERIALIZED: each to_regclass runs once per schema, not once per use.
        "WITH w AS (SELECT %s::text AS name UNION SELECT q.name::text "
        f"FROM ({tenants_sql}) AS q(name)), "
        "r AS MATERIALIZED (SELECT w.name, "
        f"{table_in_schema('w.name')}::oid AS changes, "
        f"{table_in_schema('w.name')}::oid AS tasks FROM w) "
        "SELECT name, changes, tasks, "
        "pg_stat_get_tuples_inserted(changes) + pg_stat_get_tuples_updated(changes) AS changed, "
        "pg_stat_get_tuples_inserted(tasks) + pg_stat_get_tuples_deleted(tasks) AS added "
        "FROM r",
        [public, *tenants_params, PeriodicTasks._meta.db_table, PeriodicTask._meta.db_table],
    )


def _select_per_schema(
    cursor: Any, names: Sequence[str], batch_size: int, select: str, params: Any
) -> list[tuple[Any, ...]]:
    """Run ``select`` (formatted with ``table``, given ``params(schema)``) for each schema,
    ``UNION ALL``-ed by batches.

    When a batch fails on a schema's tables (a migration in progress, say), its
    schemas are read one by one and the failing ones are logged and skipped.
    """
    results: list[tuple[Any, ...]] = []
    for batch in batches(names, batch_size):
        parts = [select.format(schema=quote_schema(name)) for name in batch]
        try:
            cursor.execute(" UNION ALL ".join(parts), [p for name in batch for p in params(name)])
        except ProgrammingError as exc:
            if len(batch) > 1:
                results += _select_per_schema(cursor, batch, 1, select, params)
            else:
                logger.error("beat: Cannot read the beat tables of schema %r: %s", batch[0], exc)
            continue
        results += cursor.fetchall()
    return results


def _read(connection: Any, names: Sequence[str], batch_size: int) -> list[PeriodicTask]:
    """Return the enabled rows of ``names``, schedules attached, read on ``connection``."""
    with closing_on_error(connection), connection.cursor() as cursor:
        if len(names) > batch_size:
            names = _with_task_pages(cursor, names)
        rows = _read_rows(cursor, names, batch_size)
        _attach_schedules(cursor, rows, batch_size)
    return rows


def _with_task_pages(cursor: Any, names: Sequence[str]) -> list[str]:
    """Return the schemas of ``names`` whose task table is not empty on disk, in one statement.

    A table whose file has no page holds no row, committed or not: reading it is
    skipped. ``pg_relation_size`` opens only the table (the planner of a ``SELECT``
    also opens each of its indexes), and releases its lock at once. A table dropped
    meanwhile (size NULL) is kept, so that its read reports it.
    """
    cursor.execute(
        "SELECT n FROM unnest(%s::text[]) AS n WHERE pg_catalog.pg_relation_size("
        f"{table_in_schema('n')}) IS DISTINCT FROM 0",
        [pg_array(names), PeriodicTask._meta.db_table],
    )
    kept = {name for (name,) in cursor.fetchall()}
    return [name for name in names if name in kept]


def _read_rows(cursor: Any, names: Sequence[str], batch_size: int) -> list[PeriodicTask]:
    """Return the enabled ``PeriodicTask`` rows of the schemas ``names``."""
    meta = PeriodicTask._meta
    columns = ", ".join(f"t.{quote_ident(field.column)}" for field in meta.concrete_fields)
    enabled = quote_ident(meta.get_field("enabled").column)
    select = (
        f"SELECT %s, {columns} FROM {{schema}}.{quote_ident(meta.db_table)} t WHERE t.{enabled}"
    )
    rows = _select_per_schema(cursor, names, batch_size, select, lambda name: [name])
    return list(_instances(PeriodicTask, cursor.db, rows))


def _attach_schedules(cursor: Any, rows: Sequence[PeriodicTask], batch_size: int) -> None:
    """Give each row its schedule object, read from the row's own schema.

    A row whose schedule is not found is left without one (its entry is then
    rejected), never lazily loaded from whatever schema the connection is on.
    """
    for field_name, model in SCHEDULE_MODELS.items():
        attname = PeriodicTask._meta.get_field(field_name).attname
        wanted: dict[str, set[Any]] = {}
        for row in rows:
            if getattr(row, attname) is not None:
                wanted.setdefault(schema_of(row), set()).add(getattr(row, attname))
        found = _read_by_ids(cursor, model, wanted, batch_size) if wanted else {}
        for row in rows:
            if getattr(row, attname) is not None:
                setattr(row, field_name, found.get((schema_of(row), getattr(row, attname))))


def _read_by_ids(
    cursor: Any, model: type[Any], wanted: Mapping[str, set[Any]], batch_size: int
) -> dict[tuple[str, Any], Any]:
    meta = model._meta
    columns = ", ".join(f"s.{quote_ident(field.column)}" for field in meta.concrete_fields)
    pk = quote_ident(meta.pk.column)
    table = quote_ident(meta.db_table)
    select = f"SELECT %s, {columns} FROM {{schema}}.{table} s WHERE s.{pk} = ANY(%s::bigint[])"
    rows = _select_per_schema(
        cursor, list(wanted), batch_size, select, lambda name: [name, pg_array(wanted[name])]
    )
    return {(schema_of(obj), obj.pk): obj for obj in _instances(model, cursor.db, rows)}


def _instances(model: type[Any], connection: Any, rows: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
    """Yield model instances from rows ``(schema, *columns)``, converted as the ORM would."""
    fields = model._meta.concrete_fields
    attnames = [field.attname for field in fields]
    converters = [
        (index, field.get_db_converters(connection))
        for index, field in enumerate(fields)
        if field.get_db_converters(connection)
    ]
    for schema_name, *values in rows:
        for index, functions in converters:
            for convert in functions:
                values[index] = convert(values[index], None, connection)
        instance = model.from_db(connection.alias, attnames, values)
        setattr(instance, SCHEMA_ATTR, schema_name)
        yield instance
