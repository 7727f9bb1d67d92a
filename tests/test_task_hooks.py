"""The documented ``TenantTask`` hooks are the run path, and ``get_tenant_for_schema`` caches.

In-process (``apply``) against real PostgreSQL: the same ``task_prerun`` path as a worker.
"""

from __future__ import annotations

import time

import pytest
from celery import Celery
from django.db import connection, connections
from django_tenants.utils import schema_context

from tenant_schemas_celery.cache import SimpleCache, tenant_cache
from tenant_schemas_celery.task import TenantTask
from tests.project.celery import app


def seen() -> dict:
    return {"default": connection.schema_name, "other": connections["other"].schema_name}


class BothDatabases(TenantTask):
    @classmethod
    def get_tenant_databases(cls):
        return ("default", "other")


class OwnCache(TenantTask):
    tenant_cache_seconds = 30
    cache = SimpleCache()

    @classmethod
    def tenant_cache(cls):
        return cls.cache


both_databases = app.task(base=BothDatabases, shared=False, name="hooks.both")(seen)
own_cache = app.task(base=OwnCache, shared=False, name="hooks.own_cache")(seen)


def test_get_tenant_databases_override_chooses_the_switched_aliases(tenants):
    with schema_context("tenant1"):
        assert both_databases.apply().get() == {"default": "tenant1", "other": "tenant1"}
    assert connections["other"].schema_name == "public"


def test_tenant_cache_override_holds_the_cached_tenants(tenants):
    OwnCache.cache.clear()
    with schema_context("tenant2"):
        assert own_cache.apply().get()["default"] == "tenant2"
    assert OwnCache.cache.get("tenant2") is not None
    assert tenant_cache.get("tenant2") is None


def make_task(celery_app, name, **attributes):
    return celery_app.task(base=TenantTask, shared=False, name=name, **attributes)(seen)


@pytest.fixture
def hooks_app():
    celery_app = Celery("hooks-tests", set_as_current=False)
    yield celery_app
    celery_app.close()


def test_direct_call_reuses_the_cached_tenant_within_the_ttl(tenants, hooks_app):
    task = make_task(hooks_app, "ttl", tenant_cache_seconds=0.3)
    first = task.get_tenant_for_schema("tenant1")
    assert task.get_tenant_for_schema("tenant1") is first
    time.sleep(0.35)
    fresh = task.get_tenant_for_schema("tenant1")
    assert fresh is not first
    assert fresh.pk == first.pk


def test_direct_call_without_cache_looks_up_every_time(tenants, hooks_app):
    task = make_task(hooks_app, "uncached")
    assert task.get_tenant_for_schema("tenant1") is not task.get_tenant_for_schema("tenant1")


def test_tasks_relying_on_the_global_setting_share_entries(tenants, hooks_app):
    hooks_app.conf.task_tenant_cache_seconds = 30
    first, second = make_task(hooks_app, "first"), make_task(hooks_app, "second")
    assert first.get_tenant_for_schema("tenant2") is second.get_tenant_for_schema("tenant2")
