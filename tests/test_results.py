"""django-celery-results: in which schema each state of a tenant's task is stored, and
whether a web request of that tenant reads it back (README, "Deployment: results").

Each layout gets its own database, worker and web-side process (tests/results_probe.py),
so that ``django_celery_results`` is installed there only; the other tests are unaffected.

- ``shared``: ``django_celery_results`` in SHARED_APPS only: one table, in public;
- ``both``: in SHARED_APPS and TENANT_APPS: a table in every schema.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.conftest import BROKERS, _admin_sql
from tests.workers import ROOT, worker

pytestmark = pytest.mark.integration


def _probe(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tests.results_probe", *args], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env}, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@contextlib.contextmanager
def _database_of(name: str):
    """A database migrated with django_celery_results in layout ``name``; its env."""
    run = uuid.uuid4().hex[:8]
    env = {
        "TSC_RESULTS_LAYOUT": name,
        "TSC_PG_DB": f"tsc_results_{run}",
        "TSC_QUEUE": f"tsc-results-{run}",
    }
    _admin_sql(f'CREATE DATABASE "{env["TSC_PG_DB"]}"')
    try:
        _probe(env, "setup")
        yield name, env
    finally:
        _admin_sql(f'DROP DATABASE IF EXISTS "{env["TSC_PG_DB"]}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["shared", "both", "tenant"])
def layout(request):
    with _database_of(request.param) as value:
        yield value


def states(layout, pool: str, *probe_args: str) -> dict:
    name, env = layout
    process = worker(
        BROKERS["redis"], pool=pool, env=env, extra=("-I", "tests.project.deploy_tasks")
    ).start()
    try:
        output = _probe(env, "run", pool, *probe_args)
    finally:
        process.stop()
    report = json.loads(output.splitlines()[-1])
    print(f"\n{name} / {pool}:")
    for case, seen in report.items():
        print(f"  {case}: {seen}")
    return report


#: Where the rows a task writes itself (started, success, failure) go, by layout.
TASK_STORED = {"shared": "public", "both": "tenant1", "tenant": "tenant1"}


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_where_each_state_is_stored_and_read(layout, pool):
    name, _ = layout
    # TENANT_APPS only: a write by the worker's consumer (in public) kills the worker
    main_process_writes = name != "tenant"
    report = states(layout, pool, *(() if main_process_writes else ("--task-writes-only",)))
    where = TASK_STORED[name]
    # received: no row is written (Celery stores no RECEIVED state): the request sees PENDING
    assert report["received"]["stored"] == {}
    assert report["received"]["tenant_reads"] == "PENDING"
    # started, success, failure: written by the task, in its tenant's search_path
    assert report["started"]["stored"] == {where: "STARTED"}
    assert report["started"]["tenant_reads"] == "STARTED"
    assert report["success"]["stored"] == {where: "SUCCESS"}
    assert report["success"]["tenant_reads"] == "SUCCESS"
    assert report["success"]["get"] == "'tenant1'"
    assert report["failure"]["stored"] == {where: "FAILURE"}
    assert report["failure"]["tenant_reads"] == "FAILURE"
    assert report["failure"]["get"] == "ValueError('failed in tenant1')"
    if not main_process_writes:
        return
    # revoked: written by the worker outside the task, in the schema its connection is in
    revoked = report["revoked"]
    if name == "shared":  # any search_path finds the one table
        assert revoked["stored"] == {"public": "REVOKED"}
        assert (revoked["tenant_reads"], revoked["get"]) == (
            "REVOKED",
            "TaskRevokedError('revoked')",
        )
    else:  # the consumer is in public between tasks (solo too: never in the last task's)
        assert revoked["stored"] == {"public": "REVOKED"}
        assert (revoked["tenant_reads"], revoked["get"]) == ("PENDING", "TimeoutError")
    if pool == "prefork":  # a hard time limit: the main process (public) writes FAILURE
        limited = report["failure_time_limit"]
        assert limited["stored"] == {"public": "FAILURE"}
        expected = (
            ("FAILURE", "TimeLimitExceeded(1)") if name == "shared" else ("PENDING", "TimeoutError")
        )
        assert (limited["tenant_reads"], limited["get"]) == expected


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_tenant_apps_only_a_revoke_kills_the_worker(pool):
    """django-tenants #961: the worker's consumer writes in public, which has no table."""
    with _database_of("tenant") as (_, env):
        revoke_kills(env, pool)


def revoke_kills(env: dict[str, str], pool: str) -> None:
    process = worker(
        BROKERS["redis"], pool=pool, env=env, extra=("-I", "tests.project.deploy_tasks")
    ).start()
    try:
        report = json.loads(_probe(env, "revoke").splitlines()[-1])
        assert process.process is not None
        process.process.wait(30)  # the worker stops by itself
    finally:
        process.stop()
        log = process.log()
    assert report["stored"] == {}
    assert report["tenant_reads"] == "PENDING"
    assert 'relation "django_celery_results_taskresult" does not exist' in log
    assert "Unrecoverable error" in log
