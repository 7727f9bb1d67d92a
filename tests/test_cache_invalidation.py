"""A tenant deleted in another process is forgotten by every pool process of a worker."""

from __future__ import annotations

import pytest
from django_tenants.utils import schema_context

from tenant_schemas_celery.exceptions import TenantNotFound
from tests.conftest import BROKERS, create_tenant
from tests.project.celery import app
from tests.project.notes import tasks
from tests.project.notes.models import Note
from tests.workers import worker

pytestmark = pytest.mark.integration
TIMEOUT = 60


@pytest.fixture(scope="module")
def prefork_worker(database):
    process = worker(BROKERS["redis"], pool="prefork", concurrency=2).start()
    yield process
    process.stop()


def test_deleted_tenant_is_not_used_from_any_pool_process_cache(prefork_worker, tenants):
    # Given a tenant cached (300 s) by both pool processes of a prefork worker
    victim = create_tenant("victim")
    with schema_context("victim"):
        warm = [tasks.cached_write_note.delay(f"warm {i}") for i in range(8)]
    assert {r.get(timeout=TIMEOUT) for r in warm} == {"victim"}
    # When the tenant is deleted by this (another) process
    victim.delete(force_drop=True)
    app.control.ping(timeout=2)  # the worker has handled the broadcast before this reply
    # Then its queued tasks fail in every pool process instead of writing to public
    with schema_context("tenant1"):
        late = [
            tasks.cached_write_note.apply_async(("late",), headers={"_schema_name": "victim"})
            for _ in range(6)
        ]
    for result in late:
        with pytest.raises(TenantNotFound, match="victim"):
            result.get(timeout=TIMEOUT)
    with schema_context("public"):
        assert not Note.objects.exists()


def test_tenant_save_in_this_process_drops_the_local_entry(tenants):
    from tenant_schemas_celery.cache import tenant_cache

    tenant_cache.set("tenant2", tenants["tenant2"], 300)
    tenants["tenant2"].save()
    assert tenant_cache.get("tenant2") is None


def test_broadcast_can_be_turned_off(monkeypatch):
    from tenant_schemas_celery.invalidation import FORGET_COMMAND, forget_everywhere

    sent = []
    monkeypatch.setattr(app.control, "broadcast", lambda name, **kw: sent.append((name, kw)))
    forget_everywhere("tenant1")
    app.conf.task_tenant_cache_broadcast = False
    try:
        forget_everywhere("tenant2")
    finally:
        app.conf.task_tenant_cache_broadcast = None
    assert sent == [(FORGET_COMMAND, {"arguments": {"schema_name": "tenant1"}})]
