"""Isolation holes found by an adversarial run, each with a real worker (Redis, solo pool).

- ``delay_on_commit`` / ``apply_async_on_commit`` take the schema active at the call;
- a canvas runs in the schema it was applied in: a chord body, chain steps and callbacks
  are not moved to the tenant of the task that publishes them;
- a tenant row whose schema is missing, not migrated or dropped fails the task
  (``TenantSchemaMissing``), with or without the tenant cache;
- the tenant cache never bypasses a task's own ``get_tenant_for_schema``.
"""

from __future__ import annotations

import time
import uuid

import pytest
from celery import chain, chord
from django.db import connection, transaction
from django_tenants.utils import schema_context

from tests.conftest import BROKERS, create_tenant, recorded_events
from tests.project.customers.models import Client
from tests.project.notes import tasks
from tests.project.notes.models import Note
from tests.workers import worker

pytestmark = pytest.mark.integration
TIMEOUT = 60


@pytest.fixture(scope="module")
def limit_worker(database):
    """A solo worker reusing its connections, with django-tenants' TENANT_LIMIT_SET_CALLS."""
    env = {"TSC_DB_REUSE_MAX": "1000", "TSC_LIMIT_SET_CALLS": "1"}
    process = worker(BROKERS["redis"], env=env).start()
    yield process
    process.stop()


def notes_in(schema_name: str) -> list[str]:
    with schema_context(schema_name):
        return sorted(Note.objects.values_list("text", flat=True))


def wait_for(predicate, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def failure_of(result) -> str:
    result.wait(timeout=TIMEOUT, propagate=False)
    assert result.state == "FAILURE", (result.state, result.result)
    return type(result.result).__name__


@pytest.mark.parametrize("method", ["delay_on_commit", "apply_async_on_commit"])
def test_on_commit_sends_with_the_schema_active_at_the_call(limit_worker, tenants, method):
    # Given a task sent on commit from tenant1, the transaction committing in public
    with transaction.atomic():
        with schema_context("tenant1"):
            if method == "delay_on_commit":
                tasks.write_note.delay_on_commit(method)
            else:
                tasks.write_note.apply_async_on_commit((method,))
        assert connection.schema_name == "public"
    # Then it runs in tenant1
    wait_for(lambda: notes_in("tenant1") == [method])
    assert notes_in("public") == []


@pytest.mark.parametrize("order", [("tenant1", "tenant2"), ("tenant2", "tenant1")])
def test_chord_body_runs_in_the_schema_the_chord_was_applied_in(limit_worker, tenants, order):
    # Given a chord sent from public whose header tasks each name their own tenant
    header = [tasks.whereami.si().set(headers={"_schema_name": s}) for s in order]
    result = chord(header)(tasks.collect.s())
    # Then the header tasks ran in their tenants, and the body in public
    outcome = result.get(timeout=TIMEOUT)
    assert sorted(outcome["results"]) == sorted(order)
    assert outcome["self"] == "public"


def test_chain_steps_run_in_the_schema_the_chain_was_applied_in(limit_worker, tenants):
    # Given a chain sent from tenant2 whose first step names tenant1
    with schema_context("tenant2"):
        first = tasks.whereami.si().set(headers={"_schema_name": "tenant1"})
        result = chain(first, tasks.whereami.si(), tasks.whereami.si()).delay()
    # Then only the first step ran in tenant1
    last = result.get(timeout=TIMEOUT)
    assert last["schema"] == "tenant2"
    assert result.parent.get(timeout=TIMEOUT)["schema"] == "tenant2"
    assert result.parent.parent.get(timeout=TIMEOUT)["schema"] == "tenant1"


def test_link_and_link_error_run_in_the_schema_of_the_call(limit_worker, tenants):
    # Given callbacks of tasks that name another tenant, one callback signature reused
    # (an errback taking (request, exc, traceback) is called by Celery inside the failed
    # task instead, in its schema: see the README)
    callback = tasks.mark.s(token="link")
    with schema_context("tenant2"):
        tasks.whereami.apply_async(headers={"_schema_name": "tenant1"}, link=callback)
    with schema_context("tenant1"):
        tasks.whereami.apply_async(link=callback)
        tasks.fail.apply_async(
            headers={"_schema_name": "tenant2"}, link_error=tasks.mark_failed.s()
        )
    # Then each callback ran where its task was applied, and the signature is unchanged
    wait_for(lambda: len(recorded_events()) == 3)
    assert sorted(recorded_events()) == [
        "mark:error:tenant1",
        "mark:link:tenant1",
        "mark:link:tenant2",
    ]
    assert "headers" not in callback.options


def test_a_signature_with_its_own_schema_keeps_it_inside_a_canvas(limit_worker, tenants):
    # Given a chord from tenant1 whose body names tenant2
    body = tasks.collect.s().set(headers={"_schema_name": "tenant2"})
    with schema_context("tenant1"):
        result = chord([tasks.whereami.si()])(body)
    assert result.get(timeout=TIMEOUT) == {"results": ["tenant1"], "self": "tenant2"}


@pytest.fixture
def ghost_rows(tenants):
    """Tenant rows created with bulk_create (no schema), removed afterwards."""
    names: list[str] = []

    def make(schema_name: str) -> str:
        Client.objects.bulk_create([Client(schema_name=schema_name, name=schema_name)])
        names.append(schema_name)
        return schema_name

    yield make
    Client.objects.filter(schema_name__in=names).delete()
    with connection.cursor() as cursor:
        for name in names:
            cursor.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_tenant_row_without_a_schema_fails_and_writes_nothing(limit_worker, ghost_rows):
    schema_name = ghost_rows(f"ghost_{uuid.uuid4().hex[:6]}")
    result = tasks.write_note.apply_async(("ghost",), headers={"_schema_name": schema_name})
    assert failure_of(result) == "TenantSchemaMissing"
    assert notes_in("public") == []


def test_schema_that_is_not_migrated_fails_and_writes_nothing(limit_worker, ghost_rows):
    schema_name = ghost_rows(f"bare_{uuid.uuid4().hex[:6]}")
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE SCHEMA "{schema_name}"')
    result = tasks.write_note.apply_async(("bare",), headers={"_schema_name": schema_name})
    assert failure_of(result) == "TenantSchemaMissing"
    assert notes_in("public") == []


@pytest.mark.parametrize("task_name", ["write_note", "cached_write_note"])
def test_dropped_schema_fails_even_for_a_cached_tenant(limit_worker, tenants, task_name):
    # Given a tenant whose task ran once (and, cached, is in the worker's cache)
    task = getattr(tasks, task_name)
    schema_name = f"dropped_{uuid.uuid4().hex[:6]}"
    tenant = create_tenant(schema_name)
    try:
        with schema_context(schema_name):
            assert task.delay("before").get(timeout=TIMEOUT) == schema_name
        # When its schema is dropped behind Django's back, the row kept
        with connection.cursor() as cursor:
            cursor.execute(f'DROP SCHEMA "{schema_name}" CASCADE')
        with schema_context(schema_name):
            result = task.delay("after")
        # Then the task fails, and nothing was written in public
        assert failure_of(result) == "TenantSchemaMissing"
        assert notes_in("public") == []
    finally:
        Client.objects.filter(pk=tenant.pk).delete()


def test_cached_tenant_never_bypasses_a_tasks_own_lookup(limit_worker, tenants):
    # Given tenant2 cached by a task with the default lookup
    tasks.events().delete(tasks.REFUSED_KEY)
    with schema_context("tenant2"):
        assert tasks.cached_whereami.delay().get(timeout=TIMEOUT)["schema"] == "tenant2"
    # When a task whose lookup refuses tenant2 (suspended) is sent there
    tasks.events().sadd(tasks.REFUSED_KEY, "tenant2")
    try:
        with schema_context("tenant2"):
            refused = tasks.refusing_whereami.delay()
        with schema_context("tenant1"):
            allowed = tasks.refusing_whereami.delay()
        # Then its own lookup decides: refused, though the tenant is cached
        assert failure_of(refused) == "TenantNotFound"
        assert allowed.get(timeout=TIMEOUT)["schema"] == "tenant1"
    finally:
        tasks.events().delete(tasks.REFUSED_KEY)
