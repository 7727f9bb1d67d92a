"""Worker pools, a plain Celery app, and worker logs, with real worker processes (Redis)."""

from __future__ import annotations

import itertools
import time

import pytest
from django.db import transaction
from django_tenants.utils import schema_context

from tests.conftest import BROKERS, recorded_events
from tests.project import plain_celery
from tests.project.notes import tasks
from tests.project.runtime_conf import set_setting
from tests.workers import worker

pytestmark = pytest.mark.integration
TIMEOUT = 60


@pytest.fixture(scope="module", params=["prefork", "threads"])
def pool_worker(request, database):
    process = worker(BROKERS["redis"], pool=request.param, concurrency=3).start()
    yield request.param
    process.stop()


def test_interleaved_tenants_on_pool(pool_worker, tenants):
    # Given many tasks sent round-robin from public and both tenants
    schemas = list(itertools.islice(itertools.cycle(["tenant1", "tenant2", "public"]), 60))
    results = []
    for schema_name in schemas:
        with schema_context(schema_name):
            results.append(tasks.whereami.delay())
    # Then every one ran in the schema it was sent from
    assert [r.get(timeout=TIMEOUT)["schema"] for r in results] == schemas


@pytest.mark.parametrize("pool_worker", ["prefork"], indirect=True)  # time limits need prefork
def test_soft_time_limit_then_next_task_in_its_tenant(pool_worker, tenants):
    with schema_context("tenant1"):
        limited = tasks.soft_limited.delay()
    assert limited.wait(timeout=TIMEOUT, propagate=False) is not None
    assert limited.state == "FAILURE"
    with schema_context("tenant2"):
        after = [tasks.whereami.delay() for _ in range(6)]
    assert {r.get(timeout=TIMEOUT)["schema"] for r in after} == {"tenant2"}


@pytest.fixture(scope="module")
def plain_app_worker(database):
    set_setting(plain_celery.app, "broker_url", BROKERS["redis"])
    process = worker(BROKERS["redis"])
    process.args[1] = "tests.project.plain_celery"
    process.args += ["-Q", plain_celery.app.conf.task_default_queue]
    process.start()
    yield
    process.stop()


def test_tenant_task_on_a_plain_celery_app(plain_app_worker, tenants):
    # A TenantTask on a plain app runs in its tenant; the next plain task sees public again
    with schema_context("tenant1"):
        tenant_result = plain_celery.tenant_schema.delay()
    plain_result = plain_celery.plain_schema.delay()
    assert tenant_result.get(timeout=TIMEOUT) == "tenant1"
    assert plain_result.get(timeout=TIMEOUT) == "public"


@pytest.mark.parametrize("method", ["delay_on_commit", "apply_async_on_commit"])
def test_on_commit_on_a_plain_app_uses_the_schema_of_the_call(plain_app_worker, tenants, method):
    # Given a TenantTask of a plain app sent on commit, from tenant1, inside a transaction
    with transaction.atomic(), schema_context("tenant1"):
        if method == "delay_on_commit":
            plain_celery.record_schema.delay_on_commit(method)
        else:
            plain_celery.record_schema.apply_async_on_commit((method,))
    # Then it runs in tenant1, not in the schema active at commit time (public)
    deadline = time.monotonic() + TIMEOUT
    while not recorded_events() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert recorded_events() == [f"plain:{method}:tenant1"]
