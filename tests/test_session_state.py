"""What a task body leaves in its database session never reaches the next task.

Real solo workers that reuse their connections (``CELERY_DB_REUSE_MAX``), with and
without django-tenants' ``TENANT_LIMIT_SET_CALLS`` and Django's ``CONN_HEALTH_CHECKS``.
"""

from __future__ import annotations

import time

import pytest
from django_tenants.utils import schema_context

from tests.conftest import BROKERS
from tests.project.notes import tasks
from tests.project.notes.models import Note
from tests.workers import worker

pytestmark = pytest.mark.integration
TIMEOUT = 60
CONFIGS = {
    "reuse": {"TSC_DB_REUSE_MAX": "1000"},
    "reuse-limit": {"TSC_DB_REUSE_MAX": "1000", "TSC_LIMIT_SET_CALLS": "1"},
    "reuse-limit-health": {
        "TSC_DB_REUSE_MAX": "1000",
        "TSC_LIMIT_SET_CALLS": "1",
        "TSC_CONN_HEALTH_CHECKS": "1",
    },
}
TAMPERING = [
    'SET search_path TO "tenant2", public',
    "SELECT set_config('search_path', 'tenant2', false)",
    "RESET ALL",
    "DISCARD ALL",
]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reuse_worker(request, database):
    process = worker(BROKERS["redis"], env=CONFIGS[request.param]).start()
    yield process
    process.stop()


@pytest.fixture
def rows(tenants):
    for schema_name in ("public", "tenant1", "tenant2"):
        with schema_context(schema_name):
            Note.objects.create(text=f"row:{schema_name}")


@pytest.mark.parametrize("sender", ["tenant1", "public"])
@pytest.mark.parametrize("statement", TAMPERING)
def test_a_body_changing_search_path_does_not_leak(reuse_worker, rows, statement, sender):
    # Given a body that changed its session's search_path
    with schema_context(sender):
        assert tasks.tamper_session.delay(statement).get(timeout=TIMEOUT) == sender
        # When the next task of the same schema runs on that connection
        report = tasks.report_session.delay().get(timeout=TIMEOUT)
    # Then it runs in its own schema, and sees its own rows only
    assert report == {"schema": sender, "current_schema": sender, "notes": [f"row:{sender}"]}


def notes_in(schema_name: str) -> list[str]:
    with schema_context(schema_name):
        return sorted(Note.objects.values_list("text", flat=True))


@pytest.mark.parametrize("how", ["autocommit", "atomic"])
def test_a_transaction_left_open_is_rolled_back_and_later_writes_commit(reuse_worker, tenants, how):
    # Given a body that wrote inside a transaction it never ended
    with schema_context("tenant1"):
        left = tasks.leave_transaction_open.delay("uncommitted", how)
        assert left.get(timeout=TIMEOUT) == "tenant1"
        # When later tasks write on the same connection
        later = [tasks.write_note.delay(f"kept{i}") for i in range(5)]
        assert [r.get(timeout=TIMEOUT) for r in later] == ["tenant1"] * 5
    # Then their writes are committed, the open transaction's are not
    assert notes_in("tenant1") == [f"kept{i}" for i in range(5)]
    # And the worker logged a warning naming the task that left it open
    deadline = time.monotonic() + 10
    while f"{tasks.leave_transaction_open.name}[{left.id}]" not in reuse_worker.log():
        assert time.monotonic() < deadline, reuse_worker.log()
        time.sleep(0.1)
    assert "left inside a transaction" in reuse_worker.log()


def test_temporary_tables_of_a_previous_task_are_never_seen(reuse_worker, rows):
    # Given a tenant1 body that left a temporary notes_note holding tenant1's data
    with schema_context("tenant1"):
        assert tasks.leave_temp_table.delay("temp:tenant1").get(timeout=TIMEOUT) == "tenant1"
    # When the next tasks, of tenant2 and of tenant1, run on that connection
    with schema_context("tenant2"):
        other = tasks.report_session.delay().get(timeout=TIMEOUT)
    with schema_context("tenant1"):
        same = tasks.report_session.delay().get(timeout=TIMEOUT)
    # Then each sees its own table only
    assert other["notes"] == ["row:tenant2"]
    assert same["notes"] == ["row:tenant1"]
