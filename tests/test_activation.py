"""``activation``: ``enter``, ``leave`` and the body guard, called as a worker calls them.

Each test pushes the request a worker would build (``is_eager`` false, the header as a
request attribute) and calls the module's functions directly, against real PostgreSQL.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery import Celery
from django.db import connection, connections, transaction
from django.db.backends.postgresql.base import DatabaseWrapper
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import schema_context

from tenant_schemas_celery import activation
from tenant_schemas_celery.cache import tenant_cache
from tenant_schemas_celery.exceptions import (
    InvalidSchemaName,
    TenantActivationMissing,
    TenantConfigurationError,
    TenantNotFound,
    TenantSchemaMissing,
)
from tests.project.celery import app
from tests.project.customers.models import Client
from tests.project.notes.models import Note


def body() -> str:
    return connection.schema_name


both = app.task(shared=False, name="activation.both", tenant_databases=("default", "other"))(body)
cached = app.task(
    shared=False, name="activation.cached", tenant_cache_seconds=30,
    tenant_databases=("default", "other"),
)(body)  # fmt: skip


@contextmanager
def worker_request(task: Any, schema_name: str | None = None) -> Iterator[Any]:
    """The task's request while a worker executes it, sent from ``schema_name``."""
    fields: dict[str, Any] = {"id": uuid.uuid4().hex, "is_eager": False, "called_directly": False}
    if schema_name is not None:
        fields["_schema_name"] = schema_name  # a worker's request holds the message headers
    task.push_request(**fields)
    try:
        yield task.request
    finally:
        task.pop_request()


def server_schema() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        (schema,) = cursor.fetchone()
    return schema


def test_enter_switches_every_alias_and_leave_restores_them_without_a_query(tenants):
    # Given a worker thread whose connection was left on a tenant object, public excluded
    connection.set_tenant(tenants["tenant2"], include_public=False)
    with worker_request(both, "tenant1"):
        # When a task of tenant1 is entered
        activation.enter(both)
        # Then both aliases are in tenant1, and so is the server session
        assert (connection.schema_name, connections["other"].schema_name) == ("tenant1",) * 2
        assert server_schema() == "tenant1"
        on_default = CaptureQueriesContext(connection)
        on_other = CaptureQueriesContext(connections["other"])
        with on_default, on_other:
            activation.leave(both)
    # And leaving restored each alias's previous state, sending nothing
    assert on_default.captured_queries == on_other.captured_queries == []
    assert connection.tenant is tenants["tenant2"]
    assert connection.include_public_schema is False
    assert connections["other"].schema_name == "public"


@pytest.mark.parametrize(
    ("header", "error"), [("pg_nope", InvalidSchemaName), ("nobody", TenantNotFound)]
)
def test_a_failed_activation_is_raised_by_the_body_guard_not_by_enter(tenants, header, error):
    with schema_context("tenant2"), worker_request(both, header):
        activation.enter(both)  # records the failure, never raises
        with pytest.raises(error, match=header):
            activation.ensure_activated(both)
        activation.leave(both)
        assert connection.schema_name == "tenant2"


def test_a_tenant_whose_schema_is_missing_leaves_every_alias_in_public(tenants):
    # Given a cached tenant whose schema does not exist (dropped since it was cached)
    ghost = Client(schema_name="ghost_activation", name="ghost")
    tenant_cache.set(ghost.schema_name, ghost, 30)
    try:
        with schema_context("tenant1"), worker_request(cached, ghost.schema_name):
            activation.enter(cached)
            # Then no alias is left on the ghost, and the body guard names it
            assert (connection.schema_name, connections["other"].schema_name) == ("public",) * 2
            with pytest.raises(TenantSchemaMissing, match="ghost_activation"):
                activation.ensure_activated(cached)
            activation.leave(cached)
    finally:
        tenant_cache.delete(ghost.schema_name)


def test_a_task_executed_without_enter_is_refused_by_name(tenants):
    with worker_request(both, "tenant1"):  # the library's task_prerun receiver never ran
        activation.leave(both)  # nothing to restore: a no-op
        assert connection.schema_name == "public"
        with pytest.raises(TenantActivationMissing, match=r"'activation\.both'") as raised:
            both.run()
    assert "disconnected" in str(raised.value)


@pytest.fixture
def plain_app() -> Iterator[Celery]:
    plain = Celery("activation-plain", set_as_current=False)
    yield plain
    plain.close()


def test_a_transaction_left_open_is_rolled_back_and_the_task_that_left_it_named(
    tenants, plain_app, caplog
):
    # Given a task that is not tenant-aware, which wrote in a transaction it never ended
    left_open = plain_app.task(shared=False, name="plain.left_open")(body)
    try:
        with worker_request(left_open) as plain_request:
            activation.note_worker_task(left_open)
            transaction.set_autocommit(False)
            Note.objects.create(text="uncommitted")
        # When the thread's next task is entered
        with worker_request(both, "tenant1") as request, caplog.at_level(logging.WARNING):
            activation.enter(both)
            activation.leave(both)
        # Then the write was rolled back, and the warning names both tasks
        assert connection.get_autocommit()
        assert not Note.objects.filter(text="uncommitted").exists()
        assert "left inside a transaction" in caplog.text
        assert f"plain.left_open[{plain_request.id}]" in caplog.text
        assert f"activation.both[{request.id}]" in caplog.text
    finally:
        if not connection.get_autocommit():
            connection.rollback()
            connection.set_autocommit(True)


@pytest.fixture
def other_without_django_tenants() -> Iterator[None]:
    """The ``other`` alias served by Django's own PostgreSQL backend."""
    original = connections["other"]
    plain = DatabaseWrapper({**original.settings_dict, "ENGINE": "django.db.backends.postgresql"})
    connections["other"] = plain
    yield
    connections["other"] = original
    plain.close()


def test_an_alias_without_django_tenants_backend_is_a_configuration_error_naming_it(
    tenants, other_without_django_tenants
):
    with worker_request(both, "tenant1"):
        activation.enter(both)
        with pytest.raises(TenantConfigurationError) as raised:
            activation.ensure_activated(both)
        activation.leave(both)
    assert "'other'" in str(raised.value)
    assert "django_tenants.postgresql_backend" in str(raised.value)
