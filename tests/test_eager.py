"""In-process behaviour: eager execution, signals, cache, restore, against real PostgreSQL."""

from __future__ import annotations

import pytest
from celery.signals import task_prerun
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import schema_context

from tenant_schemas_celery.cache import tenant_cache
from tenant_schemas_celery.exceptions import TenantNotFound
from tenant_schemas_celery.signals import tenant_activated
from tests.conftest import create_tenant
from tests.project.celery import app
from tests.project.notes import tasks
from tests.project.notes.models import Note


@pytest.fixture
def always_eager():
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def test_apply_runs_in_the_callers_tenant_and_restores_it(tenants):
    with schema_context("tenant1"):
        Note.objects.create(text="one")
        seen = tasks.whereami.apply().get()
        assert connection.schema_name == "tenant1"
    assert (seen["schema"], seen["notes"]) == ("tenant1", ["one"])
    assert connection.schema_name == "public"


def test_always_eager_delay_runs_in_the_tenant(tenants, always_eager):
    with schema_context("tenant2"):
        assert tasks.whereami.delay().get()["schema"] == "tenant2"
        assert connection.schema_name == "tenant2"


def test_eager_header_of_another_tenant_runs_there_and_comes_back(tenants):
    with schema_context("tenant1"):
        seen = tasks.multi_db_whereami.apply(headers={"_schema_name": "tenant2"}).get()
        assert connection.schema_name == "tenant1"
        assert connections["other"].schema_name == "public"
    assert (seen["schema"], seen["other"]) == ("tenant2", "tenant2")


def test_nested_eager_restores_outer_schema(tenants):
    with schema_context("tenant1"):
        result = tasks.eager_inside.apply(args=("tenant2",)).get()
    assert result == {"before": "tenant1", "inner": "tenant2", "after": "tenant1"}


def test_eager_failure_restores_and_writes_nothing(tenants):
    create_tenant("doomed_eager").delete(force_drop=True)
    with schema_context("tenant1"):
        result = tasks.write_note.apply(("x",), headers={"_schema_name": "doomed_eager"})
        assert connection.schema_name == "tenant1"
    assert result.state == "FAILURE"
    assert isinstance(result.result, TenantNotFound)
    assert "doomed_eager" in str(result.result)
    for schema_name in ("public", "tenant1", "tenant2"):
        with schema_context(schema_name):
            assert not Note.objects.exists()


def test_user_prerun_receivers_see_the_tenant(tenants):
    seen = []

    def receiver(sender=None, **kwargs):
        seen.append(connection.schema_name)

    task_prerun.connect(receiver)
    try:
        with schema_context("tenant2"):
            tasks.whereami.apply(headers={"_schema_name": "tenant1"})
    finally:
        task_prerun.disconnect(receiver)
    assert seen == ["tenant1"]


def test_tenant_activated_signal(tenants):
    received = []

    def receiver(sender, task, tenant, schema_name, **kwargs):
        received.append((task.name, getattr(tenant, "schema_name", None), schema_name))

    tenant_activated.connect(receiver)
    try:
        with schema_context("tenant1"):
            tasks.whereami.apply()
        tasks.whereami.apply()
        tasks.whereami.apply(headers={"_schema_name": "nope"})
    finally:
        tenant_activated.disconnect(receiver)
    name = tasks.whereami.name
    assert received == [(name, "tenant1", "tenant1"), (name, None, "public")]


def test_delay_on_commit_sends_after_commit(tenants, always_eager):
    with schema_context("tenant1"), transaction.atomic():
        tasks.write_note.delay_on_commit("committed")
        assert not Note.objects.exists()
    with schema_context("tenant1"):
        assert list(Note.objects.values_list("text", flat=True)) == ["committed"]


def _lookups(run) -> int:
    with CaptureQueriesContext(connection) as queries:
        run()
    return sum('"customers_client"' in q["sql"] for q in queries.captured_queries)


def test_cache_avoids_lookups_and_is_dropped_on_tenant_save(tenants):
    with schema_context("tenant1"):
        assert _lookups(tasks.cached_whereami.apply) == 1
        assert _lookups(tasks.cached_whereami.apply) == 0
        # A task whose own setting is 0 looks up although the tenant is cached
        assert _lookups(tasks.uncached_whereami.apply) == 1
    assert tenant_cache.get("tenant1") is not None
    tenants["tenant1"].save()
    assert tenant_cache.get("tenant1") is None


def test_public_needs_no_tenant_row(tenants):
    assert not type(tenants["tenant1"]).objects.filter(schema_name="public").exists()
    assert tasks.whereami.apply(headers={"_schema_name": "public"}).get()["schema"] == "public"


def test_a_connection_killed_by_the_server_is_replaced_at_the_next_task(tenants):
    from tests.conftest import _admin_sql

    connection.ensure_connection()
    pid = connection.connection.get_backend_pid()
    _admin_sql(f"SELECT pg_terminate_backend({pid})")
    first = tasks.whereami.apply(headers={"_schema_name": "tenant1"})
    second = tasks.whereami.apply(headers={"_schema_name": "tenant1"})
    assert first.state == "FAILURE"  # the lookup hit the dead connection, the body did not run
    assert (second.state, second.result["schema"]) == ("SUCCESS", "tenant1")
