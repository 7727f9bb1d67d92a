"""End to end: a real ``celery beat`` and a real worker, on Redis, while tenants come and go.

``TenantAwareScheduler`` (``beat_schedule`` entries) and ``TenantAwareDatabaseScheduler``
(django-celery-beat rows in public and in tenant schemas). Beat records every message it
publishes and the worker every run, each with the due time of its run (see
``tests.beat_e2e_app``): runs are counted per due time from those records, never against
the wall clock.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.beat_e2e_app import ROW_TASK, events
from tests.beat_helpers import add_task, every_tenant
from tests.conftest import BROKERS, create_tenant
from tests.project.customers.models import Client
from tests.workers import CeleryProcess, worker

pytestmark = pytest.mark.integration
SCHEDULER = "tenant_schemas_celery.scheduler.TenantAwareScheduler"
DB_SCHEDULER = "tenant_schemas_celery.db_scheduler.TenantAwareDatabaseScheduler"
INTERVAL = 1.0
WANTED_RUNS = 3

Record = dict[str, Any]


def recorded(key: str) -> list[Record]:
    return [json.loads(item) for item in events().lrange(key, 0, -1)]


def _identity(record: Record) -> tuple[str, float, str]:
    return record["entry"], record["due"], record["schema"]


def by_due(runs: list[Record]) -> dict[tuple[str, float], list[str]]:
    """The schemas each due run of each entry ran in, sorted."""
    schemas: dict[tuple[str, float], list[str]] = defaultdict(list)
    for run in runs:
        schemas[(run["entry"], run["due"])].append(run["schema"])
    return {due: sorted(names) for due, names in schemas.items()}


def dues(runs: list[Record], entry: str) -> set[float]:
    return {run["due"] for run in runs if run["entry"] == entry}


@contextmanager
def beat_and_worker(
    key: str, scheduler: str, schedule: str = "static", env: dict[str, str] | None = None
) -> Iterator[CeleryProcess]:
    """A worker and a ``celery beat -S scheduler`` recording under ``key``; stopped after.

    ``schedule`` is the ``beat_schedule`` of ``tests.beat_e2e_app``; ``env`` is added to
    both processes' environment. The records are deleted afterwards.
    """
    env = {
        **(env or {}),
        "TSC_BEAT_E2E_KEY": key,
        "TSC_BEAT_E2E_INTERVAL": str(INTERVAL),
        "TSC_BEAT_E2E_SCHEDULE": schedule,
    }
    consumer = worker(BROKERS["redis"], env=env, extra=("-I", "tests.beat_e2e_app")).start()
    beat = CeleryProcess(
        ["-A", "tests.beat_e2e_app", "beat", "-S", scheduler, "--max-interval", "1", "-l", "INFO"],
        {"TSC_BROKER_URL": BROKERS["redis"], **env},
        ready="beat: Starting...",
    )
    try:
        beat.start()
        yield beat
    finally:
        beat.stop()
        consumer.stop()
        events().delete(key, f"{key}:sent")


def wait_for(condition: Any, beat: CeleryProcess, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, beat.log()
        time.sleep(0.2)


def stop_and_drain(beat: CeleryProcess, key: str) -> tuple[list[Record], list[Record]]:
    """Check beat is still running, stop it, and let the worker run what beat sent.

    Returns the runs and the messages sent, once every message sent to a schema that
    still exists has run.
    """
    assert beat.process is not None and beat.process.poll() is None, beat.log()
    assert "beat raised exception" not in beat.log()
    beat.stop()
    live = {"public", *every_tenant()}

    def drained() -> bool:
        ran = Counter(map(_identity, recorded(key)))
        sent = Counter(_identity(m) for m in recorded(f"{key}:sent") if m["schema"] in live)
        return all(ran[message] >= count for message, count in sent.items())

    wait_for(drained, beat)
    return recorded(key), recorded(f"{key}:sent")


def assert_each_message_ran_once(runs: list[Record], sent: list[Record]) -> None:
    """No due run was sent twice to a schema, and each message ran at most once."""
    sent_counts = Counter(map(_identity, sent))
    ran_counts = Counter(map(_identity, runs))
    assert max(sent_counts.values(), default=1) == 1, sent_counts.most_common(3)
    assert max(ran_counts.values(), default=1) == 1, ran_counts.most_common(3)
    assert set(ran_counts) <= set(sent_counts), set(ran_counts) - set(sent_counts)


@contextmanager
def churning_tenants(doomed: str, newcomer: str) -> Iterator[Callable[[], tuple[float, float]]]:
    """Create the tenant ``doomed``; yield ``replace()``, which deletes it and creates ``newcomer``.

    ``replace()`` returns the times the deletion, then the creation, were done. Both
    tenants are deleted (schemas dropped) on exit, whatever happened.
    """
    create_tenant(doomed)

    def replace() -> tuple[float, float]:
        Client.objects.get(schema_name=doomed).delete(force_drop=True)
        deleted = time.time()
        create_tenant(newcomer)
        return deleted, time.time()

    try:
        yield replace
    finally:
        for tenant in Client.objects.filter(schema_name__in=(doomed, newcomer)):
            tenant.delete(force_drop=True)


# TenantAwareScheduler ---------------------------------------------------------------------------


def test_each_due_run_reaches_every_tenant_once(database: None) -> None:
    # Given a real beat and worker, with an entry for every tenant and one for public
    tenants = every_tenant()
    key = f"tsc-tests:beat-e2e:{uuid.uuid4().hex[:8]}"
    with beat_and_worker(key, SCHEDULER) as beat:
        wait_for(lambda: len({run["due"] for run in recorded(key)}) >= 2 * WANTED_RUNS, beat)
        runs, sent = stop_and_drain(beat, key)
    schemas = by_due(runs)
    all_runs = [s for (entry, _), s in schemas.items() if entry == "every-tenant"]
    public_only = [s for (entry, _), s in schemas.items() if entry == "public-only"]
    # Then each due run of "every-tenant" ran once in each tenant (never in public),
    # and each due run of "public-only" ran once, in public
    assert len(all_runs) >= WANTED_RUNS - 1 and len(public_only) >= WANTED_RUNS - 1
    assert all(s == tenants for s in all_runs), all_runs
    assert all(s == ["public"] for s in public_only), public_only
    assert_each_message_ran_once(runs, sent)
    # And due runs are an interval apart: no due time was sent twice
    for entry in ("every-tenant", "public-only"):
        times = sorted(dues(runs, entry))
        assert all(later - earlier > INTERVAL / 2 for earlier, later in zip(times, times[1:]))


def test_tenants_created_and_deleted_while_beat_runs(database: None) -> None:
    # Given a real beat and worker, and a tenant that will be deleted while they run
    key = f"tsc-tests:beat-churn:{uuid.uuid4().hex[:8]}"
    churn = churning_tenants("churn_doomed", "churn_new")
    with churn as replace, beat_and_worker(key, SCHEDULER) as beat:
        wait_for(lambda: any(r["schema"] == "churn_doomed" for r in recorded(key)), beat)
        # When one tenant is deleted and another created while beat runs
        deleted, created = replace()
        wait_for(lambda: len({r["due"] for r in recorded(key) if r["due"] > created}) >= 6, beat)
        runs, sent = stop_and_drain(beat, key)
        live = every_tenant()
    # Then no due run reached a schema twice, and the deleted tenant got none after deletion
    assert_each_message_ran_once(runs, sent)
    assert all(r["due"] < deleted for r in runs if r["schema"] == "churn_doomed")
    # And every due run after the new tenant existed reached exactly the live tenants
    later = [
        s
        for (entry, due), s in by_due(runs).items()
        if entry == "every-tenant" and due > created + INTERVAL
    ]
    assert len(later) >= 2 and all(s == live for s in later), (later, live)
    assert "churn_new" in live


# TenantAwareDatabaseScheduler -------------------------------------------------------------------

#: The public row of the app's ``beat_schedule`` entry: sent to every tenant.
EVERY_TENANT = "every-tenant@__all_tenants_only__"


@pytest.mark.usefixtures("beat_db")
def test_database_scheduler_while_tenants_are_created_and_deleted() -> None:
    # Given rows due every second: in public, in tenants (one of them to be deleted), the
    # app's beat_schedule entry for every tenant, and "dup" in two schemas
    key = f"tsc-tests:beat-db-churn:{uuid.uuid4().hex[:8]}"
    own_schema = {
        "in-public": "public",
        "in-tenant1": "tenant1",
        "in-doomed": "dbchurn_doomed",
        "in-new": "dbchurn_new",
        "dup": "tenant1",  # the first schema by name is scheduled
    }
    with churning_tenants("dbchurn_doomed", "dbchurn_new") as replace:
        for name, schema_name in [*own_schema.items(), ("dup", "tenant2")]:
            if name != "in-new":
                add_task(schema_name, name, every=1, task=ROW_TASK)
        with beat_and_worker(key, DB_SCHEDULER, schedule="rows") as beat:

            def seen(entry: str, schema_name: str) -> bool:
                return any((r["entry"], r["schema"]) == (entry, schema_name) for r in recorded(key))

            wait_for(lambda: seen("in-doomed", "dbchurn_doomed"), beat)
            wait_for(lambda: seen(EVERY_TENANT, "dbchurn_doomed") and seen("dup", "tenant1"), beat)
            # When one tenant is deleted, and another created with a row of its own
            deleted, created = replace()
            add_task("dbchurn_new", "in-new", every=1, task=ROW_TASK)
            # (the new row is found at the scheduler's next check, within 5 s)
            wait_for(
                lambda: (
                    len(dues(recorded(key), "in-new")) >= WANTED_RUNS
                    and len({d for d in dues(recorded(key), EVERY_TENANT) if d > created}) >= 3
                ),
                beat,
            )
            runs, sent = stop_and_drain(beat, key)
            live = every_tenant()
    # Then beat kept running (checked by stop_and_drain), and logged the duplicate name
    # as an error naming both schemas
    assert "beat: Duplicate periodic task name 'dup' in schemas 'tenant1' and 'tenant2'" in (
        beat.log()
    )
    # And every message ran once, no due run of a row was sent twice to a schema
    assert_each_message_ran_once(runs, sent)
    # And each due run of a row ran once, in the row's own schema, the deleted tenant's
    # row only before the deletion
    schemas = by_due(runs)
    for (entry, _), names in schemas.items():
        if entry != EVERY_TENANT:
            assert names == [own_schema[entry]], (entry, names)
    assert all(r["due"] < deleted for r in runs if r["schema"] == "dbchurn_doomed")
    assert len(dues(runs, "in-new")) >= WANTED_RUNS
    assert {"in-public", "in-tenant1", "dup"} <= {e for e, due in schemas if due > created}
    # And each due run of the every-tenant row after the creation reached the live tenants
    later = [
        s
        for (entry, due), s in schemas.items()
        if entry == EVERY_TENANT and due > created + INTERVAL
    ]
    assert len(later) >= 2 and all(s == live for s in later), (later, live)
    assert "dbchurn_new" in live and "dbchurn_doomed" not in live
