"""Seeded random task mixes on every pool and broker: no task ever runs in the wrong tenant."""

from __future__ import annotations

import random
import time

import pytest

from tests import isolation
from tests.conftest import BROKERS, create_tenant, use_broker
from tests.project.customers.models import Client
from tests.workers import worker

pytestmark = pytest.mark.integration
STEPS = 40
EXTRA_TENANTS = ("iso_a", "iso_b")


@pytest.fixture(scope="module")
def schemas(database):
    for schema_name in EXTRA_TENANTS:
        if not Client.objects.filter(schema_name=schema_name).exists():
            create_tenant(schema_name)
    gone = create_tenant("iso_gone")
    gone.delete(force_drop=True)
    return ["public", "tenant1", "tenant2", *EXTRA_TENANTS]


#: (pool, concurrency, broker): every pool on both brokers; the greenlet pools on Redis.
MATRIX = [
    *((pool, 3, broker) for pool in ("prefork", "threads", "solo") for broker in sorted(BROKERS)),
    ("gevent", 50, "redis"),
    ("eventlet", 50, "redis"),
]


@pytest.mark.parametrize(("pool", "concurrency", "broker_name"), MATRIX)
def test_random_mix_is_never_misrouted(schemas, tenants, pool, concurrency, broker_name):
    # Given a worker of this pool on this broker, and a marker row in each schema
    use_broker(BROKERS[broker_name])
    isolation.prepare(schemas)
    process = worker(BROKERS[broker_name], pool=pool, concurrency=concurrency).start()
    try:
        # When a seeded random mix of tasks is sent from random schemas
        started = time.monotonic()
        rng = random.Random(f"{pool}-{broker_name}")
        run = isolation.send_random(
            rng, STEPS, schemas, "iso_gone", soft=pool == "prefork", prefix=f"{pool}-{broker_name}-"
        )
        summary = isolation.collect(run, timeout=60, started=started)
    finally:
        process.stop()
        use_broker(BROKERS["redis"])
    # Then every run saw only its own schema, none was lost, no failing task ran its body
    assert (summary.misrouted, summary.lost, summary.unexpected) == (0, 0, 0), (
        summary.line(),
        summary.problems,
    )
    for result in run.must_fail:
        assert result.state == "FAILURE"
        assert type(result.result).__name__ in ("TenantNotFound", "InvalidSchemaName")
    assert isolation.probe_rows_outside_their_schema(run, schemas) == []
