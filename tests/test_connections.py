"""How many PostgreSQL sessions a worker opens: Celery's Django fix-up closes the
connections before and after every task unless ``CELERY_DB_REUSE_MAX`` is set, and from
Celery 5.6 on whatever ``CONN_MAX_AGE`` says (README, "Deployment: connections in a worker")."""

from __future__ import annotations

import itertools

import celery
import pytest
from django_tenants.utils import schema_context

from tests.conftest import BROKERS
from tests.project import deploy_tasks
from tests.workers import worker

pytestmark = pytest.mark.integration
TASKS = 12


def sessions_of(env: dict[str, str]) -> tuple[list[str], list[str], set[int]]:
    """Run TASKS tasks of alternating tenants on a solo worker; return what they saw."""
    process = worker(
        BROKERS["redis"], pool="solo", env=env, extra=("-I", "tests.project.deploy_tasks")
    ).start()
    try:
        sent = list(itertools.islice(itertools.cycle(["tenant1", "tenant2"]), TASKS))
        results = []
        for schema_name in sent:
            with schema_context(schema_name):
                results.append(deploy_tasks.session_info.delay())
        seen = [r.get(timeout=60) for r in results]
    finally:
        process.stop()
    return sent, [s["schema"] for s in seen], {s["pid"] for s in seen}


#: Celery 5.6 and later close every connection around a task; 5.4 and 5.5 close only those
#: that ``CONN_MAX_AGE`` (or a failed health check) says are obsolete.
CLOSES_EVERY_CONNECTION = celery.VERSION >= (5, 6)


@pytest.mark.parametrize(
    "env", [{}, {"TSC_CONN_MAX_AGE": "600"}], ids=["default", "CONN_MAX_AGE=600"]
)
def test_a_new_session_for_every_task_without_db_reuse_max(tenants, env):
    sent, ran, pids = sessions_of(env)
    assert ran == sent
    kept = "TSC_CONN_MAX_AGE" in env and not CLOSES_EVERY_CONNECTION
    assert len(pids) == (1 if kept else TASKS)


@pytest.mark.parametrize(
    "env",
    [{"TSC_DB_REUSE_MAX": "100"}, {"TSC_DB_REUSE_MAX": "100", "TSC_CONN_MAX_AGE": "600"}],
    ids=["DB_REUSE_MAX=100", "DB_REUSE_MAX=100,CONN_MAX_AGE=600"],
)
def test_one_session_with_db_reuse_max(tenants, env):
    # One session serves both tenants: each task still runs in its own schema
    sent, ran, pids = sessions_of(env)
    assert ran == sent
    assert len(pids) == 1
