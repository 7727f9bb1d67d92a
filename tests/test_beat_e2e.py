"""End to end: a real ``celery beat`` (TenantAwareScheduler) and a real worker, on Redis."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from typing import Any

import pytest

from tests.beat_helpers import every_tenant
from tests.conftest import BROKERS
from tests.project.notes.tasks import events
from tests.workers import CeleryProcess, worker

pytestmark = pytest.mark.integration
SCHEDULER = "tenant_schemas_celery.scheduler.TenantAwareScheduler"
INTERVAL = 1.0
WANTED_RUNS = 3


def recorded(key: str) -> list[dict[str, Any]]:
    return [json.loads(item) for item in events().lrange(key, 0, -1)]


def run_beat(key: str) -> list[dict[str, Any]]:
    """Run beat and a worker until each entry had ``WANTED_RUNS`` runs; return the runs."""
    env = {"TSC_BEAT_E2E_KEY": key, "TSC_BEAT_E2E_INTERVAL": str(INTERVAL)}
    consumer = worker(BROKERS["redis"], env=env, extra=("-I", "tests.beat_e2e_app")).start()
    beat = CeleryProcess(
        ["-A", "tests.beat_e2e_app", "beat", "-S", SCHEDULER, "--max-interval", "1", "-l", "INFO"],
        {"TSC_BROKER_URL": BROKERS["redis"], **env},
        ready="beat: Starting...",
    )
    try:
        beat.start()
        deadline = time.monotonic() + 30
        while len({run["due"] for run in recorded(key)}) < 2 * WANTED_RUNS:
            assert time.monotonic() < deadline, f"{beat.log()}\n{consumer.log()}"
            time.sleep(0.2)
        beat.stop()
        time.sleep(1.5)  # the worker runs what beat sent last
        return recorded(key)
    finally:
        beat.stop()
        consumer.stop()
        events().delete(key)


def test_each_due_run_reaches_every_tenant_once(database: None) -> None:
    # Given a real beat and worker, with an entry for every tenant and one for public
    tenants = every_tenant()
    runs = run_beat(f"tsc-tests:beat-e2e:{uuid.uuid4().hex[:8]}")
    schemas: dict[tuple[str, float], list[str]] = defaultdict(list)
    for run in runs:
        schemas[(run["entry"], run["due"])].append(run["schema"])
    all_runs = [sorted(s) for (entry, _), s in schemas.items() if entry == "every-tenant"]
    public_only = [sorted(s) for (entry, _), s in schemas.items() if entry == "public-only"]
    # Then each due run of "every-tenant" ran once in each tenant (never in public),
    # and each due run of "public-only" ran once, in public
    assert len(all_runs) >= WANTED_RUNS - 1 and len(public_only) >= WANTED_RUNS - 1
    assert all(s == tenants for s in all_runs), all_runs
    assert all(s == ["public"] for s in public_only), public_only
    # And due runs are an interval apart: no due time was sent twice
    for entry in ("every-tenant", "public-only"):
        dues = sorted(due for (name, due) in schemas if name == entry)
        assert all(later - earlier > INTERVAL / 2 for earlier, later in zip(dues, dues[1:]))


def test_tenants_created_and_deleted_while_beat_runs(database: None) -> None:
    # Given a real beat and worker, and a tenant that will be deleted while they run
    from tests.conftest import create_tenant

    key = f"tsc-tests:beat-churn:{uuid.uuid4().hex[:8]}"
    doomed = create_tenant("churn_doomed")
    env = {"TSC_BEAT_E2E_KEY": key, "TSC_BEAT_E2E_INTERVAL": str(INTERVAL)}
    consumer = worker(BROKERS["redis"], env=env, extra=("-I", "tests.beat_e2e_app")).start()
    beat = CeleryProcess(
        ["-A", "tests.beat_e2e_app", "beat", "-S", SCHEDULER, "--max-interval", "1", "-l", "INFO"],
        {"TSC_BROKER_URL": BROKERS["redis"], **env},
        ready="beat: Starting...",
    )
    newcomer = None
    try:
        beat.start()
        _wait_for(lambda: any(r["schema"] == "churn_doomed" for r in recorded(key)), beat)
        # When one tenant is deleted and another created while beat runs
        deleted_at = time.time()
        doomed.delete(force_drop=True)
        newcomer = create_tenant("churn_new")
        created_at = time.time()
        _wait_for(
            lambda: len({r["due"] for r in recorded(key) if r["due"] > created_at}) >= 6, beat
        )
        assert beat.process is not None and beat.process.poll() is None, beat.log()
        beat.stop()
        time.sleep(1.5)  # the worker runs what beat sent last
        runs = recorded(key)
        live = every_tenant()
    finally:
        beat.stop()
        consumer.stop()
        events().delete(key)
        if newcomer is not None:
            newcomer.delete(force_drop=True)
    by_due: dict[tuple[str, float], list[str]] = defaultdict(list)
    for run in runs:
        by_due[(run["entry"], run["due"])].append(run["schema"])
    # Then no due run reached a schema twice, and the deleted tenant got none after deletion
    assert all(len(s) == len(set(s)) for s in by_due.values()), by_due
    assert all(r["due"] < deleted_at for r in runs if r["schema"] == "churn_doomed")
    # And every due run after the new tenant existed reached exactly the live tenants
    later = [
        sorted(s)
        for (entry, due), s in by_due.items()
        if entry == "every-tenant" and due > created_at + INTERVAL
    ]
    assert len(later) >= 2 and all(s == live for s in later), (later, live)
    assert "churn_new" in live


def _wait_for(condition: Any, beat: CeleryProcess, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, beat.log()
        time.sleep(0.2)
