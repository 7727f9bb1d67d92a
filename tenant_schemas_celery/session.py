"""Server session state of a tenant connection: what a task may not inherit, and the proof.

Nothing a previous task body did to its database session is trusted:

- ``settle_transaction`` rolls back and closes a connection left inside a transaction
  (``set_autocommit(False)``, an atomic block that was never exited), as Django does at
  the end of a request, so that a later task's writes are not swallowed by it;
- ``prove_schema`` sets ``search_path`` in the same statement that proves the tenant's
  schema exists and is migrated (its own ``django_migrations`` table), so neither a body
  that changed ``search_path`` (``SET``, ``RESET ALL``, ``DISCARD ALL``, ``set_config``)
  nor a schema dropped by another process can make a task run in another schema;
- the same statement says whether the session holds temporary tables (PostgreSQL searches
  them before every schema of ``search_path``): in a worker, such a session is closed and
  the statement runs again on a new one, so a temporary table a previous task created
  (say, ``notes_note`` filled with another tenant's rows) is never seen.

In a worker the proof also takes the place of django-tenants' own ``SET search_path``
at the next cursor (``mark_proven``): without ``TENANT_LIMIT_SET_CALLS`` django-tenants
sends one at every cursor, and the first one after the proof would only set again the
path the proof has just set. Every later cursor gets django-tenants' ``SET`` as before.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from django.db.backends import utils as backend_utils
from django.db.backends.base.base import BaseDatabaseWrapper

from . import internals
from .conf import extra_search_paths
from .exceptions import TenantSchemaMissing

logger = logging.getLogger(__name__)

#: One round trip: set the session's search_path, say whether the schema is migrated, and
#: whether the session has a temporary schema (a previous task created temporary tables).
PROVE_SQL = (
    "SELECT set_config('search_path', %s, false), to_regclass(%s) IS NOT NULL, "
    "pg_my_temp_schema() <> 0"
)

#: The table whose presence in a schema shows that ``migrate`` has run there.
MIGRATIONS_TABLE = "django_migrations"


def in_transaction(connection: Any) -> bool:
    """Return True if ``connection`` is open and not in autocommit or inside an atomic block."""
    if connection.connection is None:
        return False
    return bool(connection.in_atomic_block or not connection.autocommit)


def settle_transaction(connection: Any, previous_task: str | None, next_task: str) -> bool:
    """Roll back and close ``connection`` if a previous task left it inside a transaction.

    Returns True if it did (and logged a warning naming ``previous_task``).
    """
    if not in_transaction(connection):
        return False
    logger.warning(
        "Database %r was left inside a transaction by the previous task (%s); its "
        "uncommitted work was rolled back and the connection closed before %s.",
        connection.alias,
        previous_task or "unknown",
        next_task,
    )
    # Forget the atomic blocks the body entered and never exited, so close() really closes.
    connection.in_atomic_block = False
    connection.atomic_blocks = []
    connection.savepoint_ids = []
    connection.needs_rollback = False
    connection.closed_in_transaction = False
    connection.run_on_commit = []
    try:
        connection.connection.rollback()
    except Exception:  # the close below discards the transaction anyway
        logger.debug("Rollback before closing %r failed", connection.alias, exc_info=True)
    connection.close()
    return True


def search_path_for(schema_name: str, public: str, include_public: bool = True) -> list[str]:
    """Return the schemas django-tenants puts in ``search_path`` for ``schema_name``."""
    if schema_name == public:
        paths = [public]
    elif include_public:
        paths = [schema_name, public]
    else:
        paths = [schema_name]
    return [*paths, *extra_search_paths()]


def search_path(connection: Any, public: str) -> list[str]:
    """Return the ``search_path`` of the connection's current tenant."""
    return search_path_for(connection.schema_name, public, connection.include_public_schema)


def proof_parameters(paths: list[str], schema_name: str) -> tuple[str, str]:
    """Return ``PROVE_SQL``'s parameters: the quoted path, and the migrations table's name."""
    return _quoted_parameters(tuple(paths), schema_name)


@lru_cache(maxsize=4096)
def _quoted_parameters(paths: tuple[str, ...], schema_name: str) -> tuple[str, str]:
    table = f"{quote_identifier(schema_name)}.{MIGRATIONS_TABLE}"
    return ",".join(map(quote_identifier, paths)), table


def run_statement(
    connection: Any, sql: str, params: tuple[Any, ...], typed: bool = True
) -> list[tuple[Any, ...]]:
    """Run ``sql`` on a cursor that bypasses django-tenants' ``SET search_path``; fetch all.

    The cursor is made as Django's own cursors are: after ``CONN_HEALTH_CHECKS``' check,
    when it is due, and with Django's error translation. It is Django's cursor wrapper
    whenever anything can observe the statement there (``observed``: query logging, an
    execute wrapper, a replaced ``CursorWrapper.execute``); otherwise the wrapper would
    only add its own cost, so the driver's cursor runs the same statement.

    Parameters:
        typed(bool): False if the statement returns no date or time (``PROVE_SQL``): an
            unobserved one then runs on a cursor of the driver's connection, without
            the time zone Django gives its cursors (psycopg2 costs more per execute with it).
    """
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        is_observed = observed(connection)
        if typed or is_observed:
            cursor = connection.create_cursor()
        else:
            cursor = connection.connection.cursor()
        if is_observed:
            wrap = connection.make_debug_cursor if connection.queries_logged else None
            cursor = (wrap or connection.make_cursor)(cursor)
        else:
            connection.validate_no_broken_transaction()  # what the wrapper checks first
        try:
            cursor.execute(sql, params)
            rows: list[tuple[Any, ...]] = cursor.fetchall()
            return rows
        finally:
            cursor.close()


#: Where Django's ``CursorWrapper`` is defined: a replaced ``execute`` is defined elsewhere.
_CURSOR_WRAPPER_FILE = backend_utils.CursorWrapper.callproc.__code__.co_filename


def observed(connection: Any) -> bool:
    """Return True if something sees the statements of ``connection``'s cursor wrapper.

    That is query logging (``DEBUG``, ``CaptureQueriesContext``), an execute wrapper
    (``connection.execute_wrapper``), or a ``CursorWrapper.execute`` or ``make_cursor``
    that is not Django's own (monitoring libraries such as Sentry's replace ``execute``).
    """
    if connection.queries_logged or connection.execute_wrappers:
        return True
    execute = getattr(backend_utils.CursorWrapper.execute, "__code__", None)
    if execute is None or execute.co_filename != _CURSOR_WRAPPER_FILE:
        return True
    make_cursor = getattr(connection.make_cursor, "__func__", None)
    return make_cursor is not BaseDatabaseWrapper.make_cursor


def run_proof(
    connection: Any, sql: str, params: tuple[Any, ...], fresh_session: bool, typed: bool = True
) -> list[tuple[Any, ...]]:
    """Run a statement that starts with ``PROVE_SQL``; return its rows without the temp flag.

    With ``fresh_session`` (a worker task), a session holding temporary tables is closed
    and the statement runs again on a new connection.
    """
    rows = run_statement(connection, sql, params, typed)
    if fresh_session and rows and rows[0][2]:
        logger.info(
            "Database %r: closing a session that holds temporary tables of a previous task.",
            connection.alias,
        )
        connection.close()
        rows = run_statement(connection, sql, params, typed)
    return [row[:2] + row[3:] for row in rows]


def prove_schema(connection: Any, public: str, fresh_session: bool = False) -> None:
    """Set the connection's ``search_path`` to its tenant and prove the schema is migrated.

    One statement (``PROVE_SQL``, see ``run_proof``); django-tenants is then told the path
    is set (``mark_proven``: with ``TENANT_LIMIT_SET_CALLS`` it sends no other, and in a
    worker its next cursor sends none either). Public needs no proof: its path is reset
    at the next query instead.

    Raises:
        TenantSchemaMissing: the schema does not exist or has no ``django_migrations``.
    """
    schema_name = connection.schema_name
    if schema_name == public:
        forget_search_path(connection)
        return
    paths = search_path(connection, public)
    params = proof_parameters(paths, schema_name)
    ((_, migrated),) = run_proof(connection, PROVE_SQL, params, fresh_session, typed=False)
    if not migrated:
        forget_search_path(connection)
        raise TenantSchemaMissing(schema_name)
    mark_proven(connection, paths, fresh_session)


def quote_identifier(name: str) -> str:
    """Return ``name`` quoted as a PostgreSQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def forget_search_path(connection: Any) -> None:
    """Make django-tenants send ``SET search_path`` again before the connection's next query."""
    connection.search_path_set_schemas = None
    connection.__dict__.pop(_PROVEN_ATTR, None)


#: Connection attribute: the ``search_path_set_schemas`` list a proof set, until a cursor.
_PROVEN_ATTR = "_tenant_schemas_celery_proven_path"


def mark_proven(connection: Any, paths: list[str], replaces_next_set: bool) -> None:
    """Tell django-tenants that a proof set the connection's path to ``paths`` just now.

    With ``replaces_next_set`` (a worker task, whose session ``enter`` settled), the next
    cursor of the connection sends no ``SET search_path``: nothing went through Django
    on the connection since the proof. The mark is the very list the proof stored, so
    whatever makes django-tenants forget the path (a switch, ``close``, ``rollback``, a
    savepoint's rollback, its own ``SET``) replaces that list and the ``SET`` is sent.
    Code that uses the DB-API connection itself (``connection.connection``) bypasses
    django-tenants and this mark alike. django-tenants before 4.0 has no hook to take the
    place of (``internals.search_path_hook``): its ``SET`` is sent as before.
    """
    connection.search_path_set_schemas = paths
    if replaces_next_set and _SkipOnce.install(connection):
        connection.__dict__[_PROVEN_ATTR] = paths
    else:
        connection.__dict__.pop(_PROVEN_ATTR, None)


class _SkipOnce:
    """A connection's ``_handle_search_path``: no ``SET`` at the first cursor after a proof."""

    __slots__ = ("_connection", "_original")

    def __init__(self, connection: Any, original: Callable[..., Any]) -> None:
        self._connection = weakref.ref(connection)
        self._original = original

    @classmethod
    def install(cls, connection: Any) -> bool:
        """Install it on ``connection``; False if django-tenants has no such hook (before 4)."""
        if type(internals.installed_search_path_hook(connection)) is cls:
            return True
        original = internals.search_path_hook(connection)
        if original is None:
            return False
        internals.install_search_path_hook(connection, cls(connection, original))
        return True

    def __call__(self, cursor: Any = None) -> None:
        connection = self._connection()
        if connection is None:  # pragma: no cover - the connection owns this object
            return
        proven = connection.__dict__.pop(_PROVEN_ATTR, None)
        if proven is not None and proven is connection.search_path_set_schemas:
            return
        self._original(connection, cursor)
