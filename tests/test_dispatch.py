"""``delay_for_tenants``: the dispatcher-task pattern as one call."""

from __future__ import annotations

import copy
import logging
import pickle

import pytest
from celery.signals import before_task_publish
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tenant_schemas_celery.dispatch import TenantResults
from tenant_schemas_celery.exceptions import TenantConfigurationError
from tenant_schemas_celery.scheduler import TenantAwareSchedulerMixin
from tenant_schemas_celery.spread import spread_offset
from tenant_schemas_celery.targets import NOT_A_TENANT, NOT_READY, UNUSABLE_NAME, TenantTargets
from tests.beat_helpers import drain, every_tenant
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
    assert seen == {schema: schema for schema in every_tenant()}  # tenant1, tenant2, ...
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
    assert set(etas) == set(every_tenant())
    assert all(etas.values())
    offsets = {s: spread_offset(s, 300) for s in etas}
    assert sorted(etas, key=lambda s: etas[s]) == sorted(offsets, key=lambda s: offsets[s])


def test_skipped_schemas_are_logged_and_listed(tenants, unmigrated, published, caplog):
    asked = ["tenant2", "nope", "not_ready", "public", "nope"]
    with caplog.at_level(logging.WARNING, logger="tenant_schemas_celery"):
        results = tasks.whereami.delay_for_tenants(tenants=asked)
    # Sent where it could be, in the order asked: the result is still the dict it was
    assert list(results) == ["tenant2", "public"]
    assert isinstance(results, dict)
    assert results == {"tenant2": results["tenant2"], "public": results["public"]}
    assert [schema for schema, _ in published] == ["tenant2", "public"]
    assert len(drain(app.conf.task_default_queue)) == 2
    # What was not sent, and why: in the result, and in one warning naming them
    assert results.skipped == {"nope": NOT_A_TENANT, "not_ready": NOT_READY}
    (record,) = [r for r in caplog.records if r.name.startswith("tenant_schemas_celery")]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert message.startswith(f"{tasks.whereami.name}: 2 schemas skipped")
    assert f"'nope': {NOT_A_TENANT}" in message and f"'not_ready': {NOT_READY}" in message
    assert "beat" not in message and "beat:" not in caplog.text


def test_every_tenant_lists_the_tenants_not_ready(tenants, unmigrated, beat_queue, caplog):
    with caplog.at_level(logging.WARNING, logger="tenant_schemas_celery"):
        results = tasks.whereami.apply_async_for_tenants(queue=beat_queue)
    assert sorted(results) == every_tenant()
    assert results.skipped == {"not_ready": NOT_READY}
    assert "'not_ready'" in caplog.text


def test_a_tenant_with_an_unusable_schema_name_is_listed(tenants, beat_queue, caplog):
    bad = 'bad"name'
    Client.objects.bulk_create([Client(schema_name=bad, name="BAD")])
    try:
        with caplog.at_level(logging.WARNING, logger="tenant_schemas_celery"):
            results = tasks.whereami.apply_async_for_tenants(queue=beat_queue)
    finally:
        Client.objects.filter(schema_name=bad).delete()
    assert sorted(results) == every_tenant()
    assert results.skipped == {bad: UNUSABLE_NAME}
    assert repr(bad) in caplog.text


def test_a_long_list_of_skipped_schemas_is_cut_short_in_the_log(tenants, beat_queue, caplog):
    unknown = [f"nope{i:02}" for i in range(25)]
    with caplog.at_level(logging.WARNING, logger="tenant_schemas_celery"):
        results = tasks.whereami.apply_async_for_tenants(tenants=unknown, queue=beat_queue)
    assert list(results.skipped) == unknown
    (record,) = caplog.records
    message = record.getMessage()
    assert "25 schemas skipped" in message
    assert [name for name in unknown if repr(name) in message] == unknown[:20]
    assert message.endswith("; and 5 more (see the result's skipped).")


def test_nothing_skipped_nothing_logged(tenants, beat_queue, caplog):
    with caplog.at_level(logging.DEBUG, logger="tenant_schemas_celery"):
        results = tasks.whereami.apply_async_for_tenants(tenants=["tenant1"], queue=beat_queue)
    assert list(results) == ["tenant1"]
    assert results.skipped == {}
    assert caplog.records == []


def test_results_copy_and_pickle_with_their_skipped_schemas():
    results = TenantResults({"tenant1": "r1"}, skipped={"nope": NOT_A_TENANT})
    for copied in (copy.copy(results), copy.deepcopy(results), pickle.loads(pickle.dumps(results))):
        assert type(copied) is TenantResults
        assert copied == {"tenant1": "r1"}
        assert copied.skipped == {"nope": NOT_A_TENANT}
    assert TenantResults().skipped == {} and TenantResults() == {}


@pytest.mark.parametrize(
    "names",
    [["tenant1", "public", "nope"], ["not_ready", "tenant2", "tenant1"], ["public"], []],
)
def test_targets_are_beats(tenants, unmigrated, beat_queue, names):
    # The same tenants as beat's fan-out, for the same names
    beat = TenantTargets(TenantAwareSchedulerMixin.get_queryset).resolve(names)
    results = tasks.whereami.apply_async_for_tenants(tenants=names, queue=beat_queue)
    assert list(results) == beat
    assert sorted([*results, *results.skipped]) == sorted(names)
    every = TenantTargets(TenantAwareSchedulerMixin.get_queryset).resolve(None)
    assert list(tasks.whereami.apply_async_for_tenants(queue=beat_queue)) == every


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('x"; DROP SCHEMA public; --', "holds a quote"),
        ("pg_catalog", "reserved by PostgreSQL"),
        ("", "it is empty"),
        (5, "expected a string, got int"),
    ],
)
def test_invalid_names_are_refused_naming_the_argument(tenants, published, value, reason):
    with pytest.raises(TenantConfigurationError) as raised:
        tasks.whereami.delay_for_tenants(tenants=["tenant1", value])
    message = str(raised.value)
    assert message.startswith(f"tenants holds {value!r}, not a usable schema name: ")
    assert reason in message
    assert "header" not in message
    assert published == []


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
        ({"tenants": [5]}, TenantConfigurationError, "tenants holds 5, not a usable"),
        ({"tenants": [None]}, TenantConfigurationError, "got NoneType"),
        ({"spread_seconds": float("inf")}, TenantConfigurationError, "spread_seconds must be"),
        ({"spread_seconds": 1e12}, TenantConfigurationError, "spread_seconds must be"),
    ],
)
def test_bad_arguments_raise_before_sending(tenants, published, arguments, error, message):
    with pytest.raises(error) as raised:
        tasks.whereami.apply_async_for_tenants(**arguments)
    assert message in str(raised.value)
    assert published == []
