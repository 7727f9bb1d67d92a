"""Hostile ``_schema_name`` headers: the body runs only in the named existing tenant."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenant_schemas_celery.exceptions import InvalidSchemaName, TenantNotFound
from tests.project.notes import tasks

EXISTING = {"public", "tenant1", "tenant2"}
SQLISH = st.sampled_from(
    ['x"; DROP SCHEMA public; --', "tenant1; SELECT 1", "tenant1\x00", "public'--", "a\\b",
     "tenant1\n", " tenant1", "TENANT1", "pg_catalog", "information_schema", "tenant1 "]
)  # fmt: skip
HEADERS = st.one_of(
    st.text(max_size=80),
    SQLISH,
    st.sampled_from(sorted(EXISTING)),
    st.integers(),
    st.none(),
    st.booleans(),
    st.lists(st.text(max_size=5), max_size=2),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    st.binary(max_size=10),
    st.floats(allow_nan=False),
)


@pytest.fixture(scope="module")
def fuzz_tenants(database):
    return EXISTING


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(header=HEADERS)
def test_fuzzed_header_runs_only_in_the_named_tenant(fuzz_tenants, header):
    with CaptureQueriesContext(connection) as queries:
        result = tasks.whereami.apply(headers={"_schema_name": header})
    assert connection.schema_name == "public"
    if header is None or (isinstance(header, str) and header in EXISTING):
        assert result.state == "SUCCESS"
        assert result.result["schema"] == (header or "public")  # None: no tenant
        return
    assert result.state == "FAILURE"
    assert isinstance(result.result, (InvalidSchemaName, TenantNotFound))
    assert str(result.result)  # says what was wrong
    # The body did not run (it would have queried notes_note), and the raw value was
    # never spliced into a statement: lookups pass it as a parameter.
    statements = [q["sql"] for q in queries.captured_queries]
    assert not any("notes_note" in sql for sql in statements)
    if isinstance(header, str) and header:
        # (parameters show up as string literals in the captured SQL: only those may hold it)
        assert not any(f'"{header}"' in outside_literals(sql) for sql in statements)


def outside_literals(sql: str) -> str:
    """``sql`` with every single-quoted string literal emptied."""
    return re.sub(r"'(?:[^']|'')*'", "''", sql)
