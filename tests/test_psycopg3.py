"""psycopg 3 and its connection pool (``DATABASES[...]["OPTIONS"]["pool"]``, Django 5.1+).

Run when psycopg 3 is Django's driver (``nox -s psycopg3``; the ``test`` extra installs
psycopg2 only, and Django prefers psycopg 3 when both are installed). Real workers on
the prefork and threads pools run with the pool on (``TSC_PSYCOPG_POOL=1``, read by
tests/project/settings.py): a pooled server session that served one tenant must never
carry its ``search_path`` into another tenant's task.
"""

from __future__ import annotations

import itertools

import django
import pytest
from django.db import connection
from django.db.backends.postgresql.psycopg_any import is_psycopg3
from django_tenants.utils import schema_context

from tests.conftest import BROKERS
from tests.project import deploy_tasks
from tests.project.notes.models import Note
from tests.workers import worker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not is_psycopg3, reason="psycopg 3 is not Django's driver here"),
    pytest.mark.skipif(django.VERSION < (5, 1), reason="Django's psycopg pool needs 5.1+"),
]
TIMEOUT = 60
SCHEMAS = ("tenant1", "tenant2", "public")
MAX_SIZE = 4  # the pool's max_size in tests/project/settings.py


def test_driver_is_psycopg3(database):
    import psycopg

    connection.ensure_connection()
    assert isinstance(connection.connection, psycopg.Connection)


WORKERS = {  # id -> (pool, extra environment)
    "prefork": ("prefork", {}),
    "threads": ("threads", {}),
    "prefork-db-reuse-max": ("prefork", {"TSC_DB_REUSE_MAX": "1000"}),
    "threads-db-reuse-max": ("threads", {"TSC_DB_REUSE_MAX": "1000"}),
}


@pytest.fixture(scope="module", params=list(WORKERS))
def pooled_worker(request, database):
    pool, env = WORKERS[request.param]
    process = worker(
        BROKERS["redis"], pool=pool, concurrency=3, env={"TSC_PSYCOPG_POOL": "1", **env},
        extra=("-I", "tests.project.deploy_tasks"),
    ).start()  # fmt: skip
    yield request.param, process
    process.stop()


@pytest.fixture
def notes(tenants):
    for schema_name in SCHEMAS:
        with schema_context(schema_name):
            Note.objects.create(text=f"note-of-{schema_name}")


def test_pooled_sessions_follow_each_tenant(pooled_worker, notes):
    # Given tasks of three schemas, interleaved, on a worker whose connections are pooled
    name, _ = pooled_worker
    sent = list(itertools.islice(itertools.cycle(SCHEMAS), 90))
    results = []
    for schema_name in sent:
        with schema_context(schema_name):
            results.append(deploy_tasks.session_info.delay())
    seen = [r.get(timeout=TIMEOUT) for r in results]
    # Then each ran in its schema, its session's search_path was that schema's, and it
    # read that schema's rows only
    assert [s["schema"] for s in seen] == sent
    assert [s["search_path"].split(",")[0].strip('" ') for s in seen] == sent
    assert [s["notes"] for s in seen] == [[f"note-of-{name}"] for name in sent]
    pids = {s["pid"] for s in seen}
    print(f"{name}: {len(seen)} tasks on {len(pids)} PostgreSQL sessions")
    if name == "prefork":  # Celery's fix-up closes each process's pool after every task
        assert len(pids) > len(seen) // 2
    else:  # threads share one pool; with DB_REUSE_MAX each prefork process keeps its own
        assert len(pids) <= (3 * MAX_SIZE if name.startswith("prefork") else MAX_SIZE)
        # so a session served more than one schema: its path was set for each task
        by_pid: dict[int, set[str]] = {}
        for s in seen:
            by_pid.setdefault(s["pid"], set()).add(s["schema"])
        assert any(len(names) > 1 for names in by_pid.values())
