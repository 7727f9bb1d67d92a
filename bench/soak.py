"""Long isolation soak: random task mixes over many tenants; counts misrouted and lost runs.

Run (PostgreSQL, Redis and RabbitMQ on their local default ports, see README):

    python bench/soak.py --tasks 100000 --tenants 1000 --pool prefork --broker redis

It creates its own database (``tsc_soak``, dropped and re-created; dropped at the end
unless ``--keep-db``), makes the tenants cheaply (schemas cloned by SQL, tenant rows
bulk-inserted), starts one real worker, and sends the mix of ``tests/isolation.py`` in
batches. Each lost or misrouted run is printed with its token, kind and schema. The
last line is the summary: ``sent=... run=... misrouted=0 lost=0 ...``; the exit status
is 1 if any run was misrouted or lost.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["TSC_PG_DB"] = os.environ.get("TSC_SOAK_DB", "tsc_soak")
os.environ.setdefault("TSC_QUEUE", f"tsc-soak-{uuid.uuid4().hex[:8]}")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.project.settings")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--broker", default="redis", choices=["redis", "amqp"])
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--seed", default="soak")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    options = parser.parse_args()

    from tests import conftest, isolation  # sets Django up
    from tests.workers import worker

    conftest._recreate_database()
    conftest.call_command("migrate_schemas", shared=True, verbosity=0)
    schemas = ["public", *clone_tenants(options.tenants)]
    conftest.create_tenant("soak_gone").delete(force_drop=True)
    conftest.use_broker(conftest.BROKERS[options.broker])
    process = worker(
        conftest.BROKERS[options.broker], pool=options.pool, concurrency=options.concurrency
    ).start()
    rng = random.Random(options.seed)
    totals = isolation.Summary(0, 0, 0, 0, 0, 0.0)
    started = time.monotonic()
    try:
        remaining = options.tasks
        while remaining > 0:
            steps = min(options.batch, remaining)
            isolation.prepare(schemas)
            run = isolation.send_random(
                rng, steps, schemas, "soak_gone", soft=options.pool == "prefork"
            )
            summary = isolation.collect(run, timeout=600, started=started)
            wrong = isolation.probe_rows_outside_their_schema(run, schemas)
            totals = isolation.Summary(
                totals.sent + summary.sent,
                totals.run + summary.run,
                totals.misrouted + summary.misrouted + len(wrong),
                totals.lost + summary.lost,
                totals.unexpected + summary.unexpected,
                time.monotonic() - started,
            )
            remaining -= steps
            print(f"batch: {summary.line()}", flush=True)
            for problem in summary.problems + [f"written outside its schema: {w}" for w in wrong]:
                print(f"  {problem}", flush=True)
    finally:
        process.stop()
        _clean_up(options.keep_db)
    print(f"tenants={options.tenants} pool={options.pool} broker={options.broker} {totals.line()}")
    return 1 if totals.misrouted or totals.lost else 0


def _clean_up(keep_db: bool) -> None:
    """Delete the run's queue and probe records, and drop its database unless kept."""
    from django.db import connections

    from tests import conftest
    from tests.project.celery import app
    from tests.project.notes.tasks import PROBES_KEY, events

    events().delete(PROBES_KEY)
    with app.connection_for_write() as connection:
        connection.default_channel.queue_delete(app.conf.task_default_queue)
    connections.close_all()
    if not keep_db:
        conftest._drop_database()


def clone_tenants(count: int) -> list[str]:
    """Create ``count`` tenants by cloning the notes table into new schemas (no migrations)."""
    from django.db import connection

    from tests.project.customers.models import Client

    names = [f"soak_{i:05d}" for i in range(count)]
    with connection.cursor() as cursor:
        for name in names:
            cursor.execute(f'CREATE SCHEMA "{name}"')
            cursor.execute(
                f'CREATE TABLE "{name}".notes_note (LIKE public.notes_note INCLUDING ALL)'
            )
    Client.objects.bulk_create(Client(schema_name=n, name=n) for n in names)
    return names


if __name__ == "__main__":
    sys.exit(main())
