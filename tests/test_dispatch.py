"""``delay_for_tenants``: the dispatcher-task pattern as one call."""

from __future__ import annotations

import pytest
from celery.signals import before_task_publish
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tenant_schemas_celery.exceptions import InvalidSchemaName, TenantConfigurationError
from tenant_schemas_celery.fanout import spread_offset
from tests.beat_helpers import drain
from tests.conftest import BROKERS
from tests.project.celery import app
from tests.project.customers.models import Client
from tests.project.notes import tasks
from tests.workers import worker

TIMEOUT = 30


_published: list | None = None


@before_task_publish.connect(weak=False)
def _record(sender=None, headers=None, **kwargs):
    # Connected once for the module: Celery before 5.5 caches the receivers list per app,
    # so a receiver connected after a disconnect would not be seen.
    if _published is not None:
        _published.append((headers["_schema_name"], headers.get("eta")))


@pytest.fixture
def published():
    global _published
    _published = []
    yield _published
    _published = None


@pytest.fixture
def unmigrated(tenants):
    """A tenant row whose schema does not exist (yet)."""
    Client.objects.bulk_create([Client(schema_name="not_ready", name="NOT READY")])
    yield
    Client.objects.filter(schema_name="not_ready").delete()


@pytest.mark.integration
def test_runs_once_in_every_ready_tenant(tenants, unmigrated):
    process = worker(BROKERS["redis"]).start()
    try:
        with CaptureQueriesContext(connection) as queries:
            results = tasks.whereami.delay_for_tenants()
        seen = {schema: r.get(timeout=TIMEOUT)["schema"] for schema, r in results.items()}
    finally:
        process.stop()
    assert seen == {"tenant1": "tenant1", "tenant2": "tenant2"}
    statements = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith("SET ")]
    assert len(statements) == 1  # tenants and readiness in one query


def test_explicit_tenants_and_schema_names(tenants, published):
    results = tasks.whereami.delay_for_tenants(tenants=[tenants["tenant2"], "public", "nobody"])
    assert sorted(results) == ["public", "tenant2"]
    assert sorted(schema for schema, _ in published) == ["public", "tenant2"]
    # (the messages are not for a worker: taken off the default queue)
    assert len(drain(app.conf.task_default_queue)) == 2


def test_spread_is_stable_per_tenant(tenants, published, beat_queue):
    tasks.whereami.apply_async_for_tenants(spread_seconds=300, queue=beat_queue)
    etas = dict(published)
    assert set(etas) == {"tenant1", "tenant2"}
    assert all(etas.values())
    offsets = {s: spread_offset(s, 300) for s in etas}
    assert sorted(etas, key=lambda s: etas[s]) == sorted(offsets, key=lambda s: offsets[s])


def test_invalid_names_are_refused(tenants):
    with pytest.raises(InvalidSchemaName):
        tasks.whereami.delay_for_tenants(tenants=['x"; DROP SCHEMA public; --'])


def test_a_name_or_tenant_alone_is_one_target(tenants, published, beat_queue):
    # A string used to be iterated: one (skipped) "schema" per character, nothing sent
    send = tasks.whereami.apply_async_for_tenants
    assert sorted(send(tenants="tenant2", queue=beat_queue)) == ["tenant2"]
    assert sorted(send(tenants=tenants["tenant1"], queue=beat_queue)) == ["tenant1"]
    assert sorted(schema for schema, _ in published) == ["tenant1", "tenant2"]


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"tenants": 5}, TenantConfigurationError, "tenants must be a tenant, a schema name"),
        ({"tenants": b"tenant1"}, TenantConfigurationError, "tenants must be a tenant"),
        ({"tenants": [5]}, InvalidSchemaName, "expected a string, got int"),
        ({"tenants": [None]}, InvalidSchemaName, "expected a string, got NoneType"),
        ({"spread_seconds": float("inf")}, TenantConfigurationError, "spread_seconds must be"),
        ({"spread_seconds": 1e12}, TenantConfigurationError, "spread_seconds must be"),
    ],
)
def test_bad_arguments_raise_before_sending(tenants, published, arguments, error, message):
    with pytest.raises(error) as raised:
        tasks.whereami.apply_async_for_tenants(**arguments)
    assert message in str(raised.value)
    assert published == []
