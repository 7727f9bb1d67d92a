"""The SQL of ``TenantAwareDatabaseScheduler``: django-celery-beat's tables of many schemas.

Functions over a Django cursor or connection, holding no state:

* the change check's statements: every schema's signature (``signatures_sql``) and
  their digest (``read_signatures``), whatever the number of tenants;
* the reads: the enabled ``PeriodicTask`` rows of many schemas, one ``UNION ALL``
  statement per batch of schemas (``select_per_schema``), each row given its schedule
  object read from its own schema (``read_enabled``; ``read_enabled_on`` shares the
  schemas among several connections, read in parallel);
* the writes: a row's columns, in its own schema only (``update_row``);
* how beat logs a database error and goes on (``logged_database_errors``).

Each row read records the schema it comes from (``schema_of``). Schema names reach
SQL text only quoted (see ``_sql``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, InterfaceError, ProgrammingError, connections, router
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
    SolarSchedule,
)

from ._sql import batches, closing_on_error, pg_array, quote_ident, quote_schema, table_in_schema
from .capture import current_schema_name
from .change_check import Signature
from .conf import public_schema_name
from .scheduler import logger

__all__ = [
    "SCHEDULE_MODELS",
    "SCHEMA_ATTR",
    "Attempt",
    "attach_schedules",
    "by_schema",
    "counters_tracked",
    "instances",
    "logged_database_errors",
    "mark_changed",
    "read_by_ids",
    "read_enabled",
    "read_enabled_on",
    "read_rows",
    "read_signatures",
    "schema_of",
    "schemas_with_task_pages",
    "select_per_schema",
    "signatures_sql",
    "update_row",
]

#: Attribute of a model instance naming the schema it was read from.
SCHEMA_ATTR = "_tenant_schema_name"
#: The schedule models, by the ``PeriodicTask`` foreign key that points at them.
SCHEDULE_MODELS: dict[str, type[Any]] = {
    "interval": IntervalSchedule,
    "crontab": CrontabSchedule,
    "solar": SolarSchedule,
    "clocked": ClockedSchedule,
}


def schema_of(model: Any) -> str:
    """Return the schema ``model`` was read from (the active schema if not recorded)."""
    schema_name = getattr(model, SCHEMA_ATTR, None) or current_schema_name() or public_schema_name()
    setattr(model, SCHEMA_ATTR, schema_name)
    return schema_name


def by_schema(rows: Iterable[Any], names: Iterable[str]) -> dict[str, list[Any]]:
    """Return the ``rows`` of each schema of ``names`` (see ``schema_of``), in order."""
    grouped: dict[str, list[Any]] = {name: [] for name in names}
    for row in rows:
        grouped[schema_of(row)].append(row)
    return grouped


# The change check ------------------------------------------------------------------------


def signatures_sql(
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


def read_signatures(
    cursor: Any, sql: str, params: Sequence[Any], known: str | None = None
) -> tuple[str, dict[str, Signature | None] | None]:
    """Return the digest of the rows of ``sql`` (see ``signatures_sql``), and each schema's
    signature (None: no beat tables); the signatures are not read (None) when the digest
    is ``known``.
    """
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
    return digest, {
        name: None if changes is None or tasks is None else (changes, tasks, *counters)
        for name, changes, tasks, *counters in cursor
    }


def counters_tracked(connection: Any) -> bool:
    """Return whether PostgreSQL's ``track_counts`` is on (True if it cannot be read:
    the first read reports database errors)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('track_counts')::bool")
            (track_counts,) = cursor.fetchone()
    except DatabaseError:
        return True
    return bool(track_counts)


# Reading rows ----------------------------------------------------------------------------


def select_per_schema(
    cursor: Any,
    names: Sequence[str],
    batch_size: int,
    select: str,
    params: Callable[[str], Sequence[Any]],
) -> list[tuple[Any, ...]]:
    """Run ``select`` (formatted with ``schema``, given ``params(schema)``) for each schema,
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
                results += select_per_schema(cursor, batch, 1, select, params)
            else:
                logger.error("beat: Cannot read the beat tables of schema %r: %s", batch[0], exc)
            continue
        results += cursor.fetchall()
    return results


def read_enabled(connection: Any, names: Sequence[str], batch_size: int) -> list[PeriodicTask]:
    """Return the enabled rows of ``names``, schedules attached, read on ``connection``.

    The connection is closed on a database error (see ``closing_on_error``).
    """
    with closing_on_error(connection), connection.cursor() as cursor:
        if len(names) > batch_size:
            names = schemas_with_task_pages(cursor, names)
        rows = read_rows(cursor, names, batch_size)
        attach_schedules(cursor, rows, batch_size)
    return rows


def read_enabled_on(
    readers: Sequence[Any], names: Sequence[str], batch_size: int
) -> list[PeriodicTask]:
    """Return the enabled rows of ``names``, schedules attached, read in parallel: each
    connection of ``readers`` reads its share of the schemas, the first one in this thread.
    """
    parts = [names[index :: len(readers)] for index in range(len(readers))]
    with ThreadPoolExecutor(max(1, len(readers) - 1), thread_name_prefix="tsc-beat-read") as pool:
        futures = [
            pool.submit(read_enabled, reader, part, batch_size)
            for reader, part in zip(readers[1:], parts[1:])
        ]
        rows = read_enabled(readers[0], parts[0], batch_size)
        return rows + [row for future in futures for row in future.result()]


def schemas_with_task_pages(cursor: Any, names: Sequence[str]) -> list[str]:
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


def read_rows(cursor: Any, names: Sequence[str], batch_size: int) -> list[PeriodicTask]:
    """Return the enabled ``PeriodicTask`` rows of the schemas ``names`` (no schedules)."""
    meta = PeriodicTask._meta
    columns = ", ".join(f"t.{quote_ident(field.column)}" for field in meta.concrete_fields)
    enabled = quote_ident(meta.get_field("enabled").column)
    select = (
        f"SELECT %s, {columns} FROM {{schema}}.{quote_ident(meta.db_table)} t WHERE t.{enabled}"
    )
    rows = select_per_schema(cursor, names, batch_size, select, lambda name: [name])
    return list(instances(PeriodicTask, cursor.db, rows))


def attach_schedules(cursor: Any, rows: Sequence[PeriodicTask], batch_size: int) -> None:
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
        found = read_by_ids(cursor, model, wanted, batch_size) if wanted else {}
        for row in rows:
            if getattr(row, attname) is not None:
                setattr(row, field_name, found.get((schema_of(row), getattr(row, attname))))


def read_by_ids(
    cursor: Any, model: type[Any], wanted: Mapping[str, set[Any]], batch_size: int
) -> dict[tuple[str, Any], Any]:
    """Return the ``model`` instances of the ids ``wanted`` of each schema, by (schema, id)."""
    meta = model._meta
    columns = ", ".join(f"s.{quote_ident(field.column)}" for field in meta.concrete_fields)
    pk = quote_ident(meta.pk.column)
    table = quote_ident(meta.db_table)
    select = f"SELECT %s, {columns} FROM {{schema}}.{table} s WHERE s.{pk} = ANY(%s::bigint[])"
    rows = select_per_schema(
        cursor, list(wanted), batch_size, select, lambda name: [name, pg_array(wanted[name])]
    )
    return {(schema_of(obj), obj.pk): obj for obj in instances(model, cursor.db, rows)}


def instances(model: type[Any], connection: Any, rows: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
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


# Writing rows ----------------------------------------------------------------------------


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
            mark_changed(cursor, schema_name, now)


def mark_changed(cursor: Any, schema_name: str, now: Any) -> None:
    """Set the ``PeriodicTasks`` change marker of ``schema_name`` to ``now``."""
    table = f"{quote_schema(schema_name)}.{quote_ident(PeriodicTasks._meta.db_table)}"
    cursor.execute(
        f"INSERT INTO {table} (ident, last_update) VALUES (1, %s) "
        "ON CONFLICT (ident) DO UPDATE SET last_update = EXCLUDED.last_update",
        [now],
    )


# Database errors -------------------------------------------------------------------------


@dataclass
class Attempt:
    """What ``logged_database_errors`` yields: ``failed`` once its block raised."""

    failed: bool = False


@contextmanager
def logged_database_errors(error: str, interface_error: str | None = None) -> Iterator[Attempt]:
    """Log a database error raised in the block, and go on: beat keeps ticking.

    Parameters:
        error(str): the message of a ``DatabaseError``, logged with its traceback
            (``%r``: the exception).
        interface_error(str | None): the warning for an ``InterfaceError`` (a lost
            connection, tried again at the next call); by default it is logged as
            ``error`` is.
    """
    attempt = Attempt()
    try:
        yield attempt
    except DatabaseError as exc:
        attempt.failed = True
        logger.exception(error, exc)
    except InterfaceError as exc:
        attempt.failed = True
        if interface_error is None:
            logger.exception(error, exc)
        else:
            logger.warning(interface_error)
