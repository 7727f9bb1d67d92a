"""In a worker, the proving statement takes the place of django-tenants' next ``SET``.

Without ``TENANT_LIMIT_SET_CALLS`` django-tenants sends ``SET search_path`` at every cursor.
The statement ``enter`` runs sets the same path, so the first cursor after it sends none;
every later cursor, and every cursor after anything that makes django-tenants forget the
path, still does. Each test pushes the request a worker builds (``is_eager`` false) and
calls ``activation.enter`` and ``leave`` directly, against real PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection
from django.db.backends import utils as backend_utils
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import schema_context

from tenant_schemas_celery import activation, session
from tenant_schemas_celery.proven_lookup import fetch_proven_tenant
from tests.project.celery import app
from tests.project.customers.models import Client


def body() -> str:
    return connection.schema_name


def querying_body() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        return str(cursor.fetchone()[0])


cached = app.task(shared=False, name="proof_set.cached", tenant_cache_seconds=30)(body)
uncached = app.task(shared=False, name="proof_set.uncached", tenant_cache_seconds=0)(body)
querying = app.task(shared=False, name="proof_set.querying", tenant_cache_seconds=30)(querying_body)
TASKS = {"cached": cached, "uncached": uncached}


@contextmanager
def in_worker(task: Any, schema_name: str) -> Iterator[None]:
    """``enter`` and ``leave`` around the block, as a worker runs the task's body."""
    task.push_request(
        id=uuid.uuid4().hex, is_eager=False, called_directly=False, _schema_name=schema_name
    )
    try:
        activation.enter(task)
        try:
            yield
        finally:
            activation.leave(task)
    finally:
        task.pop_request()


def session_path() -> str:
    with connection.connection.cursor() as cursor:  # the driver's: no SET of its own
        cursor.execute("SHOW search_path")
        return str(cursor.fetchone()[0]).replace('"', "")


def queries_of(block: Callable[[], None]) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        block()
    return [query["sql"] for query in queries.captured_queries]


def current_schema_query() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        assert cursor.fetchone()[0] == "tenant1"


@pytest.fixture
def no_limit():
    with override_settings(TENANT_LIMIT_SET_CALLS=False):
        yield


@pytest.mark.parametrize("kind", sorted(TASKS))
def test_first_cursor_after_the_proof_sends_no_set(tenants, no_limit, kind):
    with in_worker(TASKS[kind], "tenant1"):
        # The proof ran in enter; the body's first cursor goes straight to its query
        first = queries_of(current_schema_query)
        assert first == ["SELECT current_schema()"]
        # Every later cursor gets django-tenants' SET, as without the library
        second = queries_of(current_schema_query)
        assert second[0].replace("'", '"').startswith('SET search_path = "tenant1"')
        assert second[1:] == ["SELECT current_schema()"]


def change_tenant() -> None:
    connection.set_schema("tenant2")
    connection.set_schema("tenant1")


def roll_back() -> None:
    connection.set_autocommit(False)
    connection.rollback()
    connection.set_autocommit(True)


FORGETTING = {
    "switch": change_tenant,
    "close": connection.close,
    "rollback": roll_back,
    "forget": lambda: session.forget_search_path(connection),
}


@pytest.mark.parametrize("how", sorted(FORGETTING))
def test_anything_that_forgets_the_path_brings_the_set_back(tenants, no_limit, how):
    with in_worker(cached, "tenant1"):
        FORGETTING[how]()
        queries = queries_of(current_schema_query)
    assert queries[0].replace("'", '"').startswith('SET search_path = "tenant1"')


def test_a_body_that_sets_its_own_path_keeps_it_for_its_cursor_only(tenants, no_limit):
    # Given a body whose first cursor moves its session elsewhere
    with in_worker(cached, "tenant1"):
        with connection.cursor() as cursor:
            cursor.execute('SET search_path = "tenant2"')
        # Then its next cursor is put back by django-tenants' SET
        current_schema_query()
    # And the next task's proof sets its own path whatever the body left
    with in_worker(cached, "tenant1"):
        assert session_path().startswith("tenant1")


def test_eager_calls_keep_django_tenants_set(tenants, no_limit):
    with schema_context("tenant1"), CaptureQueriesContext(connection) as queries:
        assert querying.apply().get() == "tenant1"
    statements = [q["sql"].split(" ")[0] for q in queries.captured_queries]
    # An eager task shares its caller's session: the proof, then django-tenants' SET
    assert statements == ["SELECT", "SET", "SELECT"]


def test_after_the_task_the_restored_tenant_gets_its_set(tenants, no_limit):
    with in_worker(cached, "tenant1"):
        pass  # a body without a query leaves the mark unused
    with CaptureQueriesContext(connection) as queries, connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        assert cursor.fetchone()[0] == "public"
    assert queries.captured_queries[0]["sql"].startswith("SET search_path")


class RecordingWrapper(backend_utils.CursorWrapper):
    """Django's cursor wrapper, counting the wrappers made (its ``execute`` is Django's)."""

    made: list[str] = []

    def __init__(self, cursor: Any, db: Any) -> None:
        RecordingWrapper.made.append(db.alias)
        super().__init__(cursor, db)


def test_an_unobserved_proof_skips_djangos_cursor_wrapper(tenants, monkeypatch):
    monkeypatch.setattr(backend_utils, "CursorWrapper", RecordingWrapper)
    RecordingWrapper.made.clear()
    connection.set_schema("tenant1")
    session.prove_schema(connection, "public", fresh_session=True)
    assert RecordingWrapper.made == []
    assert session_path().startswith("tenant1")  # the same statement ran


def test_an_observed_proof_goes_through_djangos_cursor_wrapper(tenants, monkeypatch):
    seen: list[str] = []

    def spy(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    original = backend_utils.CursorWrapper.execute

    def replaced(self: Any, sql: str, params: Any = None) -> Any:  # as an APM library's
        seen.append(f"replaced: {sql}")
        return original(self, sql, params)

    connection.set_schema("tenant1")
    with connection.execute_wrapper(spy):
        session.prove_schema(connection, "public", fresh_session=True)
    monkeypatch.setattr(backend_utils.CursorWrapper, "execute", replaced)
    session.prove_schema(connection, "public", fresh_session=True)
    assert [sql.split(",")[0] for sql in seen] == [
        "SELECT set_config('search_path'",
        "replaced: SELECT set_config('search_path'",
    ]


def test_only_the_fused_lookup_needs_djangos_time_zone_cursor(tenants, monkeypatch):
    made: list[str] = []
    original = connection.create_cursor

    def recording(name: Any = None) -> Any:
        made.append("cursor")
        return original(name)

    monkeypatch.setattr(connection, "create_cursor", recording)
    connection.set_schema("tenant1")
    session.prove_schema(connection, "public", fresh_session=True)  # text and booleans only
    assert made == []
    fetch_proven_tenant(Client, connection, "tenant1", "public")  # the tenant row's values
    assert made == ["cursor"]
