"""Async code in a task body: where ``sync_to_async`` runs the ORM (django-tenants #1168).

Django's connections belong to a thread. ``sync_to_async`` with its default
``thread_sensitive=True``, awaited under ``async_to_sync`` in the task body, runs on the
task's own thread and so in its tenant. With ``thread_sensitive=False``, or under an event
loop the body started itself (``asyncio.run``), it runs on another thread whose connection
is in public. ``tenant_context`` inside the function run there is the workaround. These
tests pin all four with real workers.
"""

from __future__ import annotations

import pytest
from django_tenants.utils import schema_context

from tests.conftest import BROKERS
from tests.project import deploy_tasks
from tests.project.notes.models import Note
from tests.workers import worker

pytestmark = pytest.mark.integration
TIMEOUT = 60


@pytest.fixture(scope="module", params=["solo", "threads"])
def async_worker(request, database):
    process = worker(
        BROKERS["redis"], pool=request.param, concurrency=2,
        extra=("-I", "tests.project.deploy_tasks"),
    ).start()  # fmt: skip
    yield request.param
    process.stop()


@pytest.fixture
def notes(tenants):
    """Different notes in public and in tenant1, so a count shows the schema read."""
    with schema_context("public"):
        Note.objects.create(text="public-note")
    with schema_context("tenant1"):
        Note.objects.bulk_create([Note(text="t1-a"), Note(text="t1-b")])


def run(mode: str) -> dict:
    with schema_context("tenant1"):
        return deploy_tasks.async_orm.delay(mode).get(timeout=TIMEOUT)


def test_sync_to_async_under_async_to_sync_runs_on_the_task_thread(async_worker, notes):
    seen = run("async_to_sync")
    assert seen["same_thread"] is True
    assert (seen["schema"], seen["notes"]) == ("tenant1", ["t1-a", "t1-b"])
    assert seen["search_path"].startswith("tenant1")


@pytest.mark.parametrize("mode", ["thread_sensitive_false", "asyncio_run"])
def test_orm_on_another_thread_reads_public(async_worker, notes, mode):
    """The hazard the README documents: the task is in tenant1, the ORM call is not."""
    seen = run(mode)
    assert seen["task"] == "tenant1"
    assert seen["same_thread"] is False
    assert (seen["schema"], seen["notes"]) == ("public", ["public-note"])


def test_tenant_context_inside_the_thread_is_the_workaround(async_worker, notes):
    seen = run("tenant_context_inside")
    assert seen["same_thread"] is False
    assert (seen["schema"], seen["notes"]) == ("tenant1", ["t1-a", "t1-b"])
    # and the next task on that worker is in its own tenant again
    with schema_context("tenant2"):
        after = deploy_tasks.async_orm.delay("async_to_sync").get(timeout=TIMEOUT)
    assert (after["schema"], after["notes"]) == ("tenant2", [])
