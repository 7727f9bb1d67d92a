"""``signals``: ``tenant_activated``, and the receivers of Django model signals that keep the
tenant cache fresh and publish django-celery-beat changes at once (real PostgreSQL)."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django_tenants.utils import schema_context

from tenant_schemas_celery.cache import tenant_cache
from tenant_schemas_celery.invalidation import FORGET_COMMAND
from tenant_schemas_celery.signals import forget_tenant, tenant_activated
from tests.project.celery import app
from tests.project.customers.models import Client
from tests.project.notes.models import Note
from tests.project.settings import BEAT

#: What the receiver and the body of ``recorded`` saw, in order.
events: list[tuple[Any, ...]] = []


@app.task(shared=False, name="signals_tests.recorded", tenant_databases=("default", "other"))
def recorded() -> None:
    events.append(("body", connection.schema_name))


def test_tenant_activated_is_sent_with_the_tenant_active_before_the_body(tenants):
    def receiver(sender: Any, task: Any, tenant: Any, schema_name: str, **kwargs: Any) -> None:
        active = (connection.schema_name, connections["other"].schema_name)
        events.append(("signal", sender is task is recorded, tenant is connection.tenant, active))

    events.clear()
    tenant_activated.connect(receiver)
    try:
        recorded.apply(headers={"_schema_name": "tenant2"}).get()
    finally:
        tenant_activated.disconnect(receiver)
    assert events == [("signal", True, True, ("tenant2", "tenant2")), ("body", "tenant2")]


def test_forget_tenant_drops_it_under_its_current_and_former_names(tenants):
    tenant1, tenant2 = tenants["tenant1"], tenants["tenant2"]
    before_rename = copy.copy(tenant1)
    before_rename.schema_name = "tenant1_former"
    tenant_cache.set("tenant1", tenant1, 300)
    tenant_cache.set("tenant1_former", before_rename, 300)
    tenant_cache.set("tenant2", tenant2, 300)
    forget_tenant(tenant1)
    assert tenant_cache.get("tenant1") is tenant_cache.get("tenant1_former") is None
    assert tenant_cache.get("tenant2") is tenant2


def test_forget_tenant_of_an_unsaved_tenant_drops_its_name_only(tenants):
    # Unsaved tenants all have pk None: that does not make them the same tenant
    unsaved = [Client(schema_name=name) for name in ("unsaved_a", "unsaved_b")]
    for tenant in unsaved:
        tenant_cache.set(tenant.schema_name, tenant, 300)
    forget_tenant(unsaved[0])
    assert tenant_cache.get("unsaved_a") is None
    assert tenant_cache.get("unsaved_b") is unsaved[1]


@pytest.fixture
def broadcasts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """The remote-control commands broadcast to workers during the test (none is sent)."""
    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(app.control, "broadcast", lambda name, **kw: sent.append((name, kw)))
    return sent


def forget(schema_name: str) -> tuple[str, dict[str, Any]]:
    return FORGET_COMMAND, {"arguments": {"schema_name": schema_name}}


def test_a_saved_tenant_is_forgotten_here_at_once_and_by_workers_after_commit(tenants, broadcasts):
    tenant_cache.set("tenant1", tenants["tenant1"], 300)
    with transaction.atomic():
        tenants["tenant1"].save()
        assert tenant_cache.get("tenant1") is None
        assert broadcasts == []  # workers could still read the old row
    assert broadcasts == [forget("tenant1")]


def test_a_rolled_back_save_broadcasts_nothing(tenants, broadcasts):
    with pytest.raises(RuntimeError), transaction.atomic():
        tenants["tenant2"].save()
        raise RuntimeError("rolled back")
    assert broadcasts == []


@pytest.fixture
def row_without_schema(tenants: Any) -> Iterator[Client]:
    name = f"rowonly_{uuid.uuid4().hex[:6]}"
    Client.objects.bulk_create([Client(schema_name=name, name=name)])
    yield Client.objects.get(schema_name=name)
    Client.objects.filter(schema_name=name).delete()


def test_a_deleted_tenant_is_forgotten_here_and_by_workers(row_without_schema, broadcasts):
    tenant_cache.set(row_without_schema.schema_name, row_without_schema, 300)
    row_without_schema.delete()
    assert tenant_cache.get(row_without_schema.schema_name) is None
    assert broadcasts == [forget(row_without_schema.schema_name)]


def test_other_models_leave_the_cache_alone(tenants, broadcasts):
    tenant_cache.set("tenant1", tenants["tenant1"], 300)
    with schema_context("tenant1"):
        Note.objects.create(text="note").delete()
    assert tenant_cache.get("tenant1") is tenants["tenant1"]
    assert broadcasts == []


def beat_changes_counted(schema_name: str) -> int:
    """Rows written to django-celery-beat's change marker in ``schema_name``, as PostgreSQL's
    statistics show them to another session (beat's)."""
    with connections["untouched"].cursor() as cursor:
        cursor.execute(
            "SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables "
            "WHERE schemaname = %s AND relname = 'django_celery_beat_periodictasks'",
            [schema_name],
        )
        row = cursor.fetchone()
    return row[0] if row else 0


@pytest.mark.skipif(not BEAT, reason="needs django-celery-beat (the beat extra)")
def test_a_periodic_task_change_is_visible_to_beat_as_soon_as_it_commits(tenants):
    from django_celery_beat.models import PeriodicTasks

    if connection.pg_version < 150000:
        pytest.skip("before PostgreSQL 15 the statistics collector publishes every 0.5 s")
    with schema_context("tenant1"):
        before = beat_changes_counted("tenant1")
        # Two changes in a row: the second comes within a second of the first's publication,
        # which PostgreSQL would otherwise hold back until the session is idle for 10 s
        PeriodicTasks.update_changed()
        PeriodicTasks.update_changed()
        assert beat_changes_counted("tenant1") == before + 2
