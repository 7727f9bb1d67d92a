"""Send side: ``headers_with_schema`` and what each way of sending puts in the message."""

from __future__ import annotations

import pytest
from celery import Celery, chain, group
from celery.signals import before_task_publish
from django_tenants.utils import schema_context

from tenant_schemas_celery.app import CeleryApp
from tenant_schemas_celery.capture import entry_headers
from tenant_schemas_celery.task import TenantTask, headers_with_schema


@pytest.fixture
def published():
    """The ``_schema_name`` header of every message published during the test."""
    seen: list = []

    def receiver(sender=None, headers=None, **kwargs):
        seen.append(headers.get("_schema_name", "<absent>"))

    before_task_publish.connect(receiver)
    yield seen
    before_task_publish.disconnect(receiver)


@pytest.fixture
def memory_app():
    app = CeleryApp("capture-tests", broker="memory://", set_as_current=False)
    app.conf.task_default_queue = "capture-tests"

    @app.task(shared=False)
    def noop(*args):
        return None

    yield app
    app.close()


def test_headers_with_schema_adds_and_never_mutates():
    headers = {"x": 1}
    with schema_context("tenant1"):
        assert headers_with_schema(headers) == {"x": 1, "_schema_name": "tenant1"}
        assert headers_with_schema({"_schema_name": "mine"}) == {"_schema_name": "mine"}
        assert headers_with_schema(None) == {"_schema_name": "tenant1"}
    assert headers == {"x": 1}


def test_every_way_of_sending_carries_the_schema(memory_app, published):
    noop = memory_app.tasks[f"{__name__}.noop"]
    with schema_context("tenant1"):
        noop.delay()
        noop.apply_async(countdown=5)
        noop.s().apply_async()
        memory_app.send_task(noop.name)
        chain(noop.si(), noop.si()).delay()
        group(noop.si(), noop.si()).delay()
    assert published == ["tenant1"] * 7


def test_send_task_keeps_callers_header(memory_app, published):
    with schema_context("tenant1"):
        memory_app.send_task("anything", headers={"_schema_name": "tenant2"})
    assert published == ["tenant2"]


def test_tenant_task_on_plain_app_carries_the_schema(published):
    app = Celery("plain-capture", broker="memory://", set_as_current=False)

    @app.task(base=TenantTask, shared=False)
    def noop():
        return None

    with schema_context("tenant2"):
        noop.delay()
    assert published == ["tenant2"]


def test_the_schema_comes_from_tenant_db_alias():
    from django.db import connections
    from django.test import override_settings

    connections["other"].set_schema("tenant2")
    try:
        with override_settings(TENANT_DB_ALIAS="other"):
            assert headers_with_schema() == {"_schema_name": "tenant2"}
    finally:
        connections["other"].set_schema_to_public()


def test_entry_headers_replace_the_targets_and_keep_the_rest():
    headers = {
        "x": 1,
        "_schema_name": "old",
        "_all_tenants_only": True,
        "_tenant_spread_seconds": 9,
    }
    assert entry_headers(headers, "tenant1") == {"x": 1, "_schema_name": "tenant1"}
    assert entry_headers(headers, None, 60) == {
        "x": 1,
        "_all_tenants_only": True,
        "_tenant_spread_seconds": 60,
    }
    assert headers["_schema_name"] == "old"  # the caller's headers are left alone
