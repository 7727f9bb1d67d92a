"""The default tenant lookup fused with the schema proof: one statement for both.

When a task keeps ``TenantTask``'s own ``get_tenant_for_schema`` and the tenant is not
cached, the worker looks the tenant row up in the same statement that sets the
connection's ``search_path`` and proves the schema (``session.PROVE_SQL``)::

    SELECT set_config('search_path', %s, false), to_regclass(%s) IS NOT NULL, t."id", ...
    FROM "public"."customers_client" t WHERE t."schema_name" = %s

The statement is built once per tenant model and connection and reused; the tenant is
made with ``Model.from_db`` (``post_init`` is sent, as by the ORM), its values passed
through the same database converters as the ORM's. An overridden
``get_tenant_for_schema`` is always called instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import router

from .exceptions import TenantLookupFailed, TenantNotFound, TenantSchemaMissing
from .session import PROVE_SQL, proof_parameters, quote_identifier, run_proof, search_path_for


@dataclass(frozen=True)
class _Statement:
    sql: str
    attnames: list[str]
    converters: list[tuple[int, list[Any], Any]]  # (value index, converters, expression)


_statements: dict[tuple[type, str, str], _Statement] = {}


def can_fuse(model: type, connection: Any) -> bool:
    """Return True if ``connection`` is where the ORM would read the tenant model."""
    return bool(router.db_for_read(model) == connection.alias)


def fetch_proven_tenant(
    model: Any, connection: Any, schema_name: str, public: str, fresh_session: bool = False
) -> Any:
    """Return the tenant of ``schema_name``, with ``connection``'s session set to its schema.

    The caller switches the connection's tenant next, then marks its ``search_path`` set
    (``search_path_set_schemas``): django-tenants resets the mark on a switch.

    Raises:
        TenantNotFound: no tenant row has that schema name.
        TenantSchemaMissing: the row exists, its schema does not (or is not migrated).
        TenantLookupFailed: the lookup failed otherwise (a database error, two rows).
    """
    statement = _statement(model, connection, public)
    paths = search_path_for(schema_name, public)
    try:
        params = (*proof_parameters(paths, schema_name), schema_name)
        rows = run_proof(connection, statement.sql, params, fresh_session)
    except Exception as exc:
        raise TenantLookupFailed(schema_name, f"{type(exc).__name__}: {exc}") from exc
    if not rows:
        raise TenantNotFound(schema_name)
    if len(rows) > 1:
        raise TenantLookupFailed(
            schema_name, f"MultipleObjectsReturned: {len(rows)} tenants have that schema"
        )
    (_, migrated, *values) = rows[0]
    if not migrated:
        raise TenantSchemaMissing(schema_name)
    for index, converters, expression in statement.converters:
        for converter in converters:
            values[index] = converter(values[index], expression, connection)
    return model.from_db(connection.alias, statement.attnames, values)


def _statement(model: type, connection: Any, public: str) -> _Statement:
    key = (model, connection.alias, public)
    statement = _statements.get(key)
    if statement is None:
        statement = _statements[key] = _build(model, connection, public)
    return statement


def _build(model: Any, connection: Any, public: str) -> _Statement:
    meta = model._meta
    fields = list(meta.concrete_fields)
    schema_column = meta.get_field("schema_name").column
    columns = ", ".join(f"t.{quote_identifier(field.column)}" for field in fields)
    table = f"{quote_identifier(public)}.{quote_identifier(meta.db_table)}"
    sql = f"{PROVE_SQL}, {columns} FROM {table} t WHERE t.{quote_identifier(schema_column)} = %s"
    converters = []
    for index, field in enumerate(fields):
        expression = field.get_col(meta.db_table)
        found = connection.ops.get_db_converters(expression) + expression.get_db_converters(
            connection
        )
        if found:
            converters.append((index, found, expression))
    return _Statement(sql, [field.attname for field in fields], converters)
