"""Beat at scale: the database scheduler's load, change check and reload, and a fan-out.

Run (PostgreSQL on 127.0.0.1:5432 as ``postgres``, Redis on 127.0.0.1:6379)::

    .venv/bin/python bench/beat.py --tenants 100 1000 10000

Setup: the database ``tsc_bench_beat`` (``--database``) is created and its public
schema migrated (the test project's shared apps, django-celery-beat included).
Tenants are made cheaply, by SQL, the counts being cumulative: per tenant a schema
holding copies of django-celery-beat's six tables (``CREATE TABLE ... (LIKE
public.... INCLUDING ALL)``) with one interval schedule, one enabled periodic task
(``job@<schema>``) and its change marker row, and a ``Client`` row (one ``INSERT``
for all). With ``--task-every N`` only every N-th tenant has the schedule, task and
marker rows (the others' tables are empty, as for tenants that never had a periodic
task of their own). The database is dropped at the end (``--keep-db`` keeps it);
``--reuse-db`` measures a database kept by an earlier run, adding only the tenants
it lacks (made with the same ``--task-every``).

Measured for each tenant count, with ``TenantAwareDatabaseScheduler`` (statements
are those sent through Django, ``SET search_path`` included):

* first load: creating the scheduler (setup, then the first read of every schema),
  on new database connections, as a starting ``celery beat`` does (the new schemas
  are settled first: catalogs vacuumed, every table read once by another scheduler);
* no-change check: reading ``scheduler.schedule`` when nothing changed, which beat
  does at most once per tick (at every read outside the beat loop); median of 5;
* reload after one edit: one tenant's task edited through the ORM, then
  ``scheduler.schedule``. The edit is made visible to PostgreSQL's statistics at
  once (``pg_stat_force_next_flush()``); another process's edit shows within about
  a second, or 10 s after that process's previous flush;
* full reload: the scheduler's full read (every ``full_read_interval``, 5 minutes), forced,
  as in the beat loop: read in the background, until swapped in;
* fan-out: ``TenantAwareScheduler.apply_entry`` of one entry without
  ``tenant_schemas``: a message to every tenant, over Redis (database 8, a fresh
  queue, purged afterwards); median of 3. The test project has a Redis result
  backend, and Celery subscribes to the result of every message it sends, unless
  sent with ``ignore_result``: the last column sends with
  ``options={"ignore_result": True}``.

The first load here includes waiting for the background read of the tenants' rows
(the scheduler is made, then ``scheduler.schedule`` read, which waits for it).

Then the beat loop's stall (``--no-stall`` skips it), with the background read off
and on, side by side in one run: a loop ticking as ``celery beat``'s does (the
scheduler's ``tick()``, then a sleep of the delay it returns) with 10 public rows
due every second, a tenth of a second apart, whose sends are recorded, not
published (the tenants' rows are made not due first, once per database: their
``last_run_at`` set ten years ahead). For each variant: the first load (until the
public rows are first sent, and until the tenants' rows are all loaded, from the
scheduler's creation), the largest
delay between a due time and its send during the first load and the second after
(the rows are due when the scheduler is made), how long the tick that swapped the
first load in took (the merge, the heap rebuild, its send), the largest delay in a
steady state (3 s) and during a full read (forced, as every ``full_read_interval``),
and how long that full read took (until its result was swapped in).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BEAT_TABLES = (
    "django_celery_beat_intervalschedule",
    "django_celery_beat_crontabschedule",
    "django_celery_beat_solarschedule",
    "django_celery_beat_clockedschedule",
    "django_celery_beat_periodictask",
    "django_celery_beat_periodictasks",
)
SCHEMAS_PER_TRANSACTION = 50  # each schema takes about 30 locks while it is created
TASK = "tests.project.notes.tasks.whereami"


def add_database_arguments(parser: argparse.ArgumentParser, database: str, task_every: int) -> None:
    """Add the options of the bench database and its tenants (shared with beat_failover.py)."""
    parser.add_argument("--database", default=database)
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    parser.add_argument(
        "--reuse-db",
        action="store_true",
        help="measure the database a --keep-db run left (implies --keep-db)",
    )
    parser.add_argument("--workers", type=int, default=2, help="connections creating schemas")
    parser.add_argument(
        "--task-every",
        type=int,
        default=task_every,
        help="only every N-th tenant has a periodic task",
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[100, 1000, 10000])
    add_database_arguments(parser, "tsc_bench_beat", task_every=1)
    parser.add_argument("--no-stall", action="store_true", help="skip the beat loop's stall")
    return parser.parse_args()


def setup_django(database: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.project.settings"
    os.environ["TSC_PG_DB"] = database
    os.environ["TSC_BROKER_URL"] = "redis://127.0.0.1:6379/8"
    os.environ["TSC_QUEUE"] = f"tsc-bench-beat-{uuid.uuid4().hex[:8]}"
    import django

    django.setup()


def admin_execute(statement: str) -> None:
    from bench.project.db import admin_execute as execute_in_postgres_db

    execute_in_postgres_db(statement)


def create_database(name: str) -> None:
    from django.core.management import call_command
    from django.db import connections

    connections.close_all()
    admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin_execute(f'CREATE DATABASE "{name}"')
    call_command("migrate_schemas", shared=True, verbosity=0)


def schema_name(index: int) -> str:
    return f"bench{index:05d}"


def tenant_statements(name: str, with_task: bool = True) -> list[str]:
    """The SQL making one tenant schema: beat's tables, an interval, a task, a change marker."""
    statements = [f'CREATE SCHEMA "{name}"']
    statements += [
        f'CREATE TABLE "{name}".{table} (LIKE public.{table} INCLUDING ALL)'
        for table in BEAT_TABLES
    ]
    if not with_task:
        return statements
    statements += [
        f'INSERT INTO "{name}".django_celery_beat_intervalschedule (id, every, period) '
        "VALUES (1, 60, 'seconds')",
        f'INSERT INTO "{name}".django_celery_beat_periodictask (name, task, args, kwargs, '
        "enabled, total_run_count, date_changed, description, interval_id, one_off, headers) "
        f"VALUES ('job@{name}', '{TASK}', '[]', '{{}}', true, 0, now(), '', 1, false, '{{}}')",
        f'INSERT INTO "{name}".django_celery_beat_periodictasks (ident, last_update) '
        "VALUES (1, now())",
    ]
    return statements


def existing_tenants() -> int:
    """Return how many bench tenants the database holds (they are numbered from 0)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM customers_client WHERE schema_name LIKE 'bench%%'")
        (count,) = cursor.fetchone()
    return int(count)


def add_tenants(start: int, stop: int, workers: int, task_every: int) -> None:
    """Create tenants ``start`` to ``stop - 1``: schemas on ``workers`` connections, then rows."""
    import psycopg2
    from django.conf import settings
    from django.db import connection

    db = settings.DATABASES["default"]
    chunks = [
        range(low, min(stop, low + SCHEMAS_PER_TRANSACTION))
        for low in range(start, stop, SCHEMAS_PER_TRANSACTION)
    ]
    lock = threading.Lock()

    def work() -> None:
        conn = psycopg2.connect(
            dbname=db["NAME"],
            user=db["USER"],
            password=db["PASSWORD"],
            host=db["HOST"],
            port=db["PORT"],
        )
        try:
            while True:
                with lock:
                    if not chunks:
                        return
                    chunk = chunks.pop()
                with conn, conn.cursor() as cursor:  # one transaction per chunk
                    statements = [
                        statement
                        for i in chunk
                        for statement in tenant_statements(schema_name(i), i % task_every == 0)
                    ]
                    cursor.execute(";".join(statements))
        finally:
            conn.close()

    threads = [threading.Thread(target=work) for _ in range(max(1, workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO customers_client (schema_name, name) "
            "SELECT 'bench' || lpad(g::text, 5, '0'), 'BENCH' FROM generate_series(%s, %s) g",
            [start, stop - 1],
        )


class Measure:
    """Run a block, counting the statements sent through Django (on every connection)."""

    def __init__(self) -> None:
        from django.db import connection
        from django.db.backends.signals import connection_created

        self.statements = 0
        self.counting = False
        connection.execute_wrappers.append(self._count)
        connection_created.connect(self._watch, weak=False)

    def _watch(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        if self._count not in connection.execute_wrappers:
            connection.execute_wrappers.append(self._count)

    def _count(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if self.counting:
            self.statements += 1
        return execute(sql, params, many, context)

    def __call__(self, block: Callable[[], Any]) -> Result:
        self.statements, self.counting = 0, True
        try:
            started, cpu = time.perf_counter(), time.process_time()
            block()
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        finally:
            self.counting = False
        return Result(self.statements, elapsed, cpu)


class Result(NamedTuple):
    statements: int
    elapsed: float
    cpu: float  # of this process (beat), all threads


def median_of(runs: int, measure: Measure, block: Callable[[], Any]) -> Result:
    results = sorted((measure(block) for _ in range(runs)), key=lambda result: result.elapsed)
    return results[len(results) // 2]


def edit_one_task(name: str) -> None:
    from django.db import connection
    from django_celery_beat.models import PeriodicTask
    from django_tenants.utils import schema_context

    with schema_context(name):
        task = PeriodicTask.objects.get()
        task.kwargs = f'{{"edited": {time.time()}}}'
        task.save()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")


def settle() -> None:
    """Vacuum the catalogs and read every table once, then close all connections.

    The schemas were just created: the first reader of their catalog and table
    rows would also pay for setting their hint bits, which a database in use has
    long done. The measured first load then starts from new connections.
    """
    from django.db import connection, connections

    from tenant_schemas_celery.db_scheduler import TenantAwareDatabaseScheduler
    from tests.project.celery import app

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.oid::regclass::text FROM pg_catalog.pg_class c "
            "WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind = 'r'"
        )
        for (table,) in cursor.fetchall():
            cursor.execute(f"VACUUM (ANALYZE) {table}")
    app.conf.beat_schedule = {}
    TenantAwareDatabaseScheduler(app=app).close()
    connections.close_all()


def measure_count(tenants: int, task_every: int) -> dict[str, Result]:
    from tenant_schemas_celery.db_scheduler import TenantAwareDatabaseScheduler
    from tenant_schemas_celery.scheduler import TenantAwareScheduler
    from tests.project.celery import app

    settle()
    app.conf.beat_schedule = {}
    measure = Measure()
    results: dict[str, Result] = {}
    holder: dict[str, Any] = {}

    def first_load() -> None:  # the tenants' rows are read in the background: waited for
        holder.setdefault("scheduler", TenantAwareDatabaseScheduler(app=app)).schedule  # noqa: B018

    results["first load"] = measure(first_load)
    scheduler = holder["scheduler"]
    scheduler.check_interval = 0
    with_task = -(-tenants // task_every)
    assert len([n for n in scheduler.schedule if n.startswith("job@")]) == with_task
    scheduler.schedule  # noqa: B018 -- settle (the rows setup wrote are read back)
    results["no-change check"] = median_of(5, measure, lambda: scheduler.schedule)
    edited = schema_name(tenants // 2 // task_every * task_every)
    edit_one_task(edited)
    results["reload after one edit"] = measure(lambda: scheduler.schedule)
    assert "edited" in scheduler.schedule[f"job@{edited}"].kwargs

    def full_reload() -> None:
        scheduler.change_check.force_full_read()  # a full read is due (full_read_interval)
        with scheduler._looping():  # as in the beat loop: read in the background...
            scheduler.schedule  # noqa: B018
        scheduler._swap_in_read(wait=True)  # ...until swapped in

    results["full reload"] = measure(full_reload)
    scheduler.close()
    fan_outs: list[tuple[str, dict[str, Any]]] = [
        ("fan-out", {}),
        ("fan-out, ignore_result", {"ignore_result": True}),
    ]
    for column, options in fan_outs:

        def send(options: dict[str, Any] = options) -> None:
            fan_out(TenantAwareScheduler, app, tenants, options)

        results[column] = median_of(3, measure, send)
    return results


def fan_out(cls: Any, app: Any, tenants: int, options: dict[str, Any]) -> None:
    import redis

    scheduler = cls(app=app, lazy=True)
    entry = scheduler.Entry(
        name="job@__all_tenants_only__", task=TASK, schedule=60, options=options, app=app
    )
    scheduler.apply_entry(entry, producer=scheduler.producer)
    queue = app.conf.task_default_queue
    client = redis.Redis.from_url(app.conf.broker_url)
    sent = client.llen(queue)
    client.delete(queue)
    scheduler.close()
    assert sent == tenants, (sent, tenants)


COLUMNS = [
    "first load",
    "no-change check",
    "reload after one edit",
    "full reload",
    "fan-out",
    "fan-out, ignore_result",
]


STALL_ENTRIES = 10  # public rows due every second, a tenth of a second apart


class Stall(NamedTuple):
    public_first_sent: float  # s from the scheduler's creation
    tenants_loaded: float  # s from the scheduler's creation
    load_delay: float  # largest delay of a due send during the first load, and 1 s after
    swap_in: float  # the tick that swapped the first load in (0: no background read)
    steady_delay: float  # ... in a steady state, no read running
    read_delay: float  # ... while a full read runs
    read_time: float  # the full read, until swapped in


def not_due_tenant_rows() -> None:
    """Set ``last_run_at`` of every bench tenant's row to ten years ahead, unless it is already
    (once per database: the updates leave dead rows for autovacuum), by batches of schemas."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT schema_name FROM customers_client WHERE schema_name LIKE 'bench%%' ORDER BY 1"
        )
        names = [name for (name,) in cursor.fetchall()]
        for low in range(0, len(names), 200):
            cursor.execute(
                ";".join(
                    f'UPDATE "{name}".django_celery_beat_periodictask '
                    "SET last_run_at = now() + interval '10 years' "
                    "WHERE last_run_at IS NULL OR last_run_at < now() + interval '1 year'"
                    for name in names[low : low + 200]
                )
            )


def add_due_rows() -> None:
    """Public rows ``due-N``, every second, the N-th due N tenths of a second from now."""
    from datetime import timedelta

    from django.utils import timezone
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from tests.beat_helpers import flush_stats

    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    now = timezone.now()
    for index in range(STALL_ENTRIES):
        PeriodicTask.objects.update_or_create(
            name=f"due-{index}",
            defaults={
                "task": TASK,
                "interval": every,
                "enabled": True,
                "last_run_at": now - timedelta(seconds=1 - index / STALL_ENTRIES),
            },
        )
    flush_stats()


def remove_due_rows() -> None:
    from django_celery_beat.models import PeriodicTask

    PeriodicTask.objects.filter(name__startswith="due-").delete()


def measure_stall(background: bool) -> Stall:
    """Run a beat loop over a new scheduler (``background_read`` as given); see the docstring."""
    from datetime import datetime, timezone

    from tenant_schemas_celery.db_scheduler import TenantAwareDatabaseScheduler
    from tests.project.celery import app

    not_due_tenant_rows()
    settle()
    app.conf.beat_schedule = {}
    add_due_rows()
    sends: list[tuple[float, float]] = []  # (perf_counter at the send, its delay)
    swaps: list[float] = []
    swap_times: list[float] = []

    class Scheduler(TenantAwareDatabaseScheduler):
        background_read = background

        def apply_entry(self, entry: Any, producer: Any = None) -> None:
            if entry.name.startswith("due-"):
                due = entry.last_run_at + entry.schedule.run_every
                late = (datetime.now(timezone.utc) - due).total_seconds()
                sends.append((time.perf_counter(), max(0.0, late)))

        def _swap_in_read(self, wait: bool = False) -> bool:
            swapped = super()._swap_in_read(wait)
            if swapped:
                swaps.append(time.perf_counter())
            return swapped

        def tick(self, *args: Any, **kwargs: Any) -> float:
            started, before = time.perf_counter(), len(swaps)
            delay = super().tick(*args, **kwargs)
            if len(swaps) > before:  # with the heap rebuilt, and the sends of this tick
                swap_times.append(time.perf_counter() - started)
            return delay

    def loop(until: Callable[[], bool]) -> None:
        while not until():
            delay = scheduler.tick()
            if delay:
                time.sleep(max(0.0, delay))

    def largest(start: float, stop: float) -> float:
        return max((late for at, late in sends if start <= at <= stop), default=0.0)

    created = time.perf_counter()
    scheduler = Scheduler(app=app)
    made = time.perf_counter()
    loop(lambda: bool(sends) and not scheduler._reader.busy)
    loaded = swaps[0] if swaps else made
    public_first_sent = sends[0][0] - created
    loop(lambda: time.perf_counter() > loaded + 1)
    steady = time.perf_counter()
    loop(lambda: time.perf_counter() > steady + 3)
    forced = time.perf_counter()
    scheduler.change_check.force_full_read()  # as every full_read_interval
    swaps.clear()
    loop(lambda: not scheduler._reader.busy and time.perf_counter() > forced + 0.5)
    read_done = swaps[0] if swaps else time.perf_counter()
    if not background:  # the read ran in one tick: the first send after the trigger ends it
        read_done = next((at for at, _ in sends if at > forced), read_done)
    loop(lambda: time.perf_counter() > read_done + 1.5)
    scheduler.close()
    remove_due_rows()
    return Stall(
        public_first_sent,
        loaded - created,
        largest(created, loaded + 1),
        swap_times[0] if background and swap_times else 0.0,
        largest(steady, forced),
        largest(forced, read_done + 1.5),
        read_done - forced,
    )


def print_stall(rows: dict[int, dict[str, Stall]]) -> None:
    """Print the stall figures, background read off and on side by side."""
    header = ["tenants", "background read", *Stall._fields]
    print("\nThe beat loop while rows load (seconds from the scheduler's creation; delays of")
    print("due sends):\n")
    lines = [header, ["---:"] * len(header)]
    for tenants, variants in rows.items():
        for variant, stall in variants.items():
            lines.append([f"{tenants:,}", variant, *(seconds(value) for value in stall)])
    for line in lines:
        print("| " + " | ".join(line) + " |")


def seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def print_table(rows: dict[int, dict[str, Result]]) -> None:
    """Print the wall time and statements of each measure, then beat's CPU time."""
    header = ["tenants", *COLUMNS]
    for title, cell in (
        ("Wall time (statements)", lambda r: f"{seconds(r.elapsed)} ({r.statements:,} stmts)"),
        ("CPU time of the beat process", lambda r: seconds(r.cpu)),
    ):
        print(f"\n{title}:\n")
        lines = [header, ["---:"] * len(header)]
        lines += [[f"{n:,}", *(cell(results[c]) for c in COLUMNS)] for n, results in rows.items()]
        for line in lines:
            print("| " + " | ".join(line) + " |")


def main() -> None:
    if "--failover" in sys.argv:  # the failover time instead (bench/beat_failover.py)
        from bench.beat_failover import main as failover_main

        return failover_main([a for a in sys.argv[1:] if a != "--failover"])
    args = parse_args()
    setup_django(args.database)
    if args.reuse_db:
        args.keep_db = True
        made = existing_tenants()
        print(f"Reusing database {args.database}: {made:,} tenants", flush=True)
    else:
        print(f"Creating database {args.database}...", flush=True)
        create_database(args.database)
        made = 0
    rows: dict[int, dict[str, Result]] = {}
    stalls: dict[int, dict[str, Stall]] = {}
    try:
        for tenants in sorted(args.tenants):
            if tenants < made:
                raise SystemExit(f"--tenants {tenants}: the database already holds {made:,}.")
            if tenants > made:
                started = time.perf_counter()
                add_tenants(made, tenants, args.workers, args.task_every)
                made = tenants
                print(f"{tenants:,} tenants made in {time.perf_counter() - started:.0f} s")
            rows[tenants] = measure_count(tenants, args.task_every)
            print_table({tenants: rows[tenants]})
            if not args.no_stall:
                stalls[tenants] = {
                    "off": measure_stall(background=False),
                    "on": measure_stall(background=True),
                }
                print_stall({tenants: stalls[tenants]})
    finally:
        if not args.keep_db:
            from django.db import connections

            connections.close_all()
            admin_execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
    print()
    print_table(rows)
    if stalls:
        print_stall(stalls)


if __name__ == "__main__":
    main()
