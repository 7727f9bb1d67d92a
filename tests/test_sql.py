"""``_sql``: what the beat schedulers' SQL helpers build, run against real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import DatabaseError, InterfaceError, connection, connections

from tenant_schemas_celery._sql import (
    batches,
    closing_on_error,
    pg_array,
    queryset_sql,
    quote_ident,
    quote_schema,
    table_in_schema,
    tenant_schemas_existing,
)
from tests.project.customers.models import Client

#: Names django-tenants accepts that need quoting: case, space, quote, percent, non-ASCII.
AWKWARD_NAMES = ["Mixed Case", 'we"ird', "per%cent", "ünïcode", "x" * 63]


def fetch(sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def awkward_schemas(tenants: Any) -> Iterator[list[str]]:
    """A schema with a ``notes_note`` table under each awkward name (quoted by PostgreSQL)."""
    suffix = uuid.uuid4().hex[:4]
    names = [f"{name[:58]}{suffix}" for name in AWKWARD_NAMES]
    quoted = [fetch("SELECT format('%%I', %s::text)", [name])[0][0] for name in names]
    for schema in quoted:
        fetch(f"CREATE SCHEMA {schema}")
        fetch(f"CREATE TABLE {schema}.notes_note (LIKE public.notes_note INCLUDING ALL)")
    yield names
    for schema in quoted:
        fetch(f"DROP SCHEMA {schema} CASCADE")


def test_a_quoted_name_names_exactly_that_schema(awkward_schemas: list[str]) -> None:
    for name in awkward_schemas:
        fetch(f"INSERT INTO {quote_ident(name)}.notes_note (text) VALUES ('x')")
        assert fetch(f"SELECT count(*) FROM {quote_ident(name)}.notes_note") == [(1,)]


def test_quote_schema_keeps_a_percent_sign_out_of_the_parameters(
    awkward_schemas: list[str],
) -> None:
    for name in awkward_schemas:
        sql = f"SELECT count(*) FROM {quote_schema(name)}.notes_note WHERE %s"
        assert fetch(sql, [True]) == [(0,)]


@pytest.mark.parametrize("name", ["", "a\x00b"])
def test_unusable_identifiers_are_refused_by_name(name: str) -> None:
    for quote in (quote_ident, quote_schema):
        with pytest.raises(ValueError, match="not a usable SQL identifier"):
            quote(name)


def test_an_array_literal_is_read_back_as_the_same_values(tenants: Any) -> None:
    values = ["a", "b c", 'q"uote', "back\\slash", "com,ma", "{brace}", "NULL", "", " pad ", 7]
    assert fetch("SELECT %s::text[]", [pg_array(values)]) == [([str(v) for v in values],)]
    assert fetch("SELECT %s::text[]", [pg_array([])]) == [([],)]


def test_table_in_schema_finds_the_table_in_quoted_schemas_only_where_it_exists(
    awkward_schemas: list[str],
) -> None:
    schemas = [*awkward_schemas, "tenant1", "no_such_schema"]
    rows = fetch(
        f"SELECT s, {table_in_schema('s')} IS NOT NULL FROM unnest(%s::text[]) AS s",
        ["notes_note", pg_array(schemas)],
    )
    expected = {**dict.fromkeys(awkward_schemas, True), "tenant1": True, "no_such_schema": False}
    assert dict(rows) == expected
    rows = fetch(f"SELECT {table_in_schema('%s')}", ["tenant1", "no_such_table"])
    assert rows == [(None,)]


def test_batches_are_consecutive_slices_of_at_most_size_items() -> None:
    assert list(batches([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    assert list(batches((1, 2), 5)) == [(1, 2)]
    assert list(batches([], 3)) == []
    assert list(batches([1, 2], 0)) == [[1], [2]]  # a size below 1 means one item each


def test_queryset_sql_runs_as_a_subquery_selecting_the_field(tenants: Any) -> None:
    queryset = Client.objects.filter(schema_name__in=["tenant2", "nobody"]).order_by("name")
    sql, params = queryset_sql(queryset, "name")
    assert fetch(f"SELECT q.x FROM ({sql}) AS q(x)", params) == [("TENANT2",)]


@pytest.fixture
def row_without_schema(tenants: Any) -> Iterator[str]:
    name = f"rowonly_{uuid.uuid4().hex[:6]}"
    Client.objects.bulk_create([Client(schema_name=name, name=name)])  # no schema created
    yield name
    Client.objects.filter(schema_name=name).delete()


def test_tenant_schemas_existing_says_which_tenants_have_a_schema(row_without_schema: str) -> None:
    queryset = Client.objects.filter(schema_name__in=["tenant1", "tenant2", row_without_schema])
    assert sorted(tenant_schemas_existing(queryset)) == [
        (row_without_schema, False),
        ("tenant1", True),
        ("tenant2", True),
    ]


def missing_table(cursor: Any) -> None:
    cursor.execute("SELECT * FROM no_such_table")


def closed_cursor(cursor: Any) -> None:
    cursor.close()
    cursor.execute("SELECT 1")


@pytest.mark.parametrize(
    ("fail", "error"), [(missing_table, DatabaseError), (closed_cursor, InterfaceError)]
)
def test_closing_on_error_closes_a_connection_that_failed_and_reraises(
    tenants: Any, fail: Callable[[Any], None], error: type[Exception]
) -> None:
    untouched = connections["untouched"]
    untouched.ensure_connection()
    with pytest.raises(error), closing_on_error(untouched):
        fail(untouched.cursor())
    assert untouched.connection is None


def test_closing_on_error_keeps_the_connection_otherwise(tenants: Any) -> None:
    untouched = connections["untouched"]
    untouched.ensure_connection()
    with closing_on_error(untouched), untouched.cursor() as cursor:
        cursor.execute("SELECT 1")
    with pytest.raises(ValueError, match="not a database error"), closing_on_error(untouched):
        raise ValueError("not a database error")
    assert untouched.connection is not None
    assert untouched.is_usable()


def test_an_empty_queryset_is_a_subquery_of_no_row(tenants: Any) -> None:
    # Django compiles no SQL for these (EmptyResultSet): beat must read them as no tenant
    for empty in (Client.objects.none(), Client.objects.filter(schema_name__in=[])):
        assert tenant_schemas_existing(empty) == []
        sql, params = queryset_sql(empty, "schema_name")
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM ({sql}) AS q(name)", params)
            assert cursor.fetchone() == (0,)
