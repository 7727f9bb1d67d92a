"""Throughput of a real ``celery worker``: plain Celery vs tenant_schemas_celery.

Run (PostgreSQL on 127.0.0.1:5432 as ``postgres``, Redis on 127.0.0.1:6379)::

    .venv/bin/python bench/worker.py --tenants 50 --tasks 3000 --rounds 3 --pool solo
    .venv/bin/python bench/worker.py --pool prefork            # concurrency = CPU count
    .venv/bin/python bench/worker.py --pool solo --close-db    # Celery's default DB handling

What is measured: a fresh queue is filled with ``--tasks`` messages, then a
``celery worker`` subprocess (``-P solo`` or ``-P prefork``, Redis broker,
results ignored, log level WARNING) is started on it and stopped once the queue
is drained. Every task runs one ORM query (``SELECT`` on ``notes_note``). The
time is taken inside the worker, from the first task's ``task_prerun`` to the
last task's ``task_postrun`` (over all prefork children), so worker start-up and
shutdown are excluded. Variants run alternately (a b c d a b c d ...) for
``--rounds`` rounds; the medians are printed:

    a. plain: a ``celery.Celery`` app without tenant handling (the floor; the
       tasks still run their query, in public).
    b. cache off: a ``CeleryApp``; tasks round-robin over K tenants,
       ``task_tenant_cache_seconds = 0``.
    c. cache on: the same with ``task_tenant_cache_seconds = --cache-seconds``.
    d. one tenant: cache on, every task for the same tenant (no switch).

Columns: tasks/s, ratio to (a), worker CPU per task (the whole solo worker; for
prefork, the children only), and SQL statements per task issued outside the
task body (all statements the worker ran through Django, counted with a
``connection.execute_wrapper`` installed at ``worker_process_init``, minus the
body's one query), split into ``SET search_path`` and tenant lookups, and the
PostgreSQL sessions opened per task (``pg_stat_database.sessions`` before and
after the run). Note that django-tenants, unless ``TENANT_LIMIT_SET_CALLS`` is on
(``--limit-set-calls``), sends ``SET search_path`` with every cursor, so even the
floor has one per task. A run starts on a fresh worker, so with the cache on its
first task of each tenant looks the tenant up (K lookups per run).

Database connections: by default the connections are persistent
(``CELERY_DB_REUSE_MAX`` = 1,000,000, so Celery's Django fixup does not close
them around each task). ``--close-db`` measures Celery's default instead, where
the fixup closes every connection before and after each task (a new PostgreSQL
connection per task).

The database ``tsc_bench_worker`` (``--database``) is created with K tenants and
dropped at the end (``--keep-db`` keeps it). The broker is Redis database 10;
per-process stats go through Redis database 9. Only the worker processes this
script starts are stopped, by PID.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.project.revision import library_revision  # noqa: E402

UNACKED_KEY = "unacked"


@dataclass(frozen=True)
class Variant:
    """One configuration of the worker."""

    key: str
    label: str
    app_module: str
    cache_seconds: float
    one_tenant: bool
    tenant_aware: bool


@dataclass
class RunResult:
    """What one worker run measured."""

    tasks: int
    seconds: float
    cpu_seconds: float
    set_statements: int
    lookup_statements: int
    other_statements: int
    sessions: int = 0

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds

    @property
    def cpu_us_per_task(self) -> float:
        return self.cpu_seconds / self.tasks * 1e6

    @property
    def outside_body_per_task(self) -> float:
        total = self.set_statements + self.lookup_statements + self.other_statements
        return total / self.tasks - 1

    @property
    def sessions_per_task(self) -> float:
        return self.sessions / self.tasks

    @property
    def set_per_task(self) -> float:
        return self.set_statements / self.tasks

    @property
    def lookup_per_task(self) -> float:
        return self.lookup_statements / self.tasks


@dataclass
class VariantResults:
    """The runs of one variant."""

    variant: Variant
    runs: list[RunResult] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.runs)


def variants(cache_seconds: float) -> list[Variant]:
    """Return the four variants, in the order they run within a round."""
    plain, tenant = "bench.project.plain_app", "bench.project.tenant_app"
    return [
        Variant("a", "plain Celery (floor)", plain, 0, False, False),
        Variant("b", "library, cache off", tenant, 0, False, True),
        Variant("c", f"library, cache {cache_seconds:g} s", tenant, cache_seconds, False, True),
        Variant("d", "library, cache on, one tenant", tenant, cache_seconds, True, True),
    ]


class Bench:
    """Runs the variants against one database, broker and pool."""

    def __init__(self, args: argparse.Namespace, schema_names: list[str]) -> None:
        import redis
        from celery import Celery
        from django.conf import settings

        from bench.project.stats import stats_redis

        self.args = args
        self.schema_names = schema_names
        self.broker_url: str = settings.CELERY_BROKER_URL
        self.broker = redis.Redis.from_url(self.broker_url)
        self.stats = stats_redis()
        self.publisher = Celery("bench_publisher", broker=self.broker_url, set_as_current=False)
        self.publisher.conf.task_ignore_result = True

    def fill(self, queue: str, variant: Variant) -> None:
        """Publish the run's messages (with a ``_schema_name`` header unless plain)."""
        names = self.schema_names
        with self.publisher.producer_or_acquire() as producer:
            for number in range(self.args.tasks):
                headers = None
                if variant.tenant_aware:
                    schema = names[0] if variant.one_tenant else names[number % len(names)]
                    headers = {"_schema_name": schema}
                self.publisher.send_task(
                    "bench.query",
                    args=(number,),
                    queue=queue,
                    headers=headers,
                    producer=producer,
                    ignore_result=True,
                )
        queued = self.broker.llen(queue)
        if queued != self.args.tasks:
            raise RuntimeError(f"queue {queue} holds {queued} messages, not {self.args.tasks}")

    def run(self, variant: Variant) -> RunResult:
        """Fill a fresh queue, drain it with a new worker, return the worker's stats."""
        run_id = uuid.uuid4().hex[:10]
        queue = f"bench-{run_id}"
        stats_key = f"bench-stats:{run_id}"
        self.fill(queue, variant)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "BENCH_CACHE_SECONDS": str(variant.cache_seconds),
            "BENCH_STATS_KEY": stats_key,
        }
        concurrency = 1 if self.args.pool == "solo" else self.args.concurrency
        command = [
            sys.executable, "-m", "celery", "-A", variant.app_module, "worker",
            "-P", self.args.pool, "-c", str(concurrency), "-Q", queue,
            "-n", f"bench-{run_id}@%h", "-l", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        log_path = Path(tempfile.mkstemp(prefix="tsc-bench-worker-", suffix=".log")[1])
        sessions_before = _settled_sessions()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_drained(queue, process, log_path)
        finally:
            _stop(process)
        try:
            result = self._collect(stats_key)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; worker log:\n{log_path.read_text()[-4000:]}") from None
        result.sessions = _settled_sessions() - sessions_before
        if result.tasks != self.args.tasks:
            raise RuntimeError(
                f"the worker ran {result.tasks} tasks, not {self.args.tasks}; "
                f"log:\n{log_path.read_text()[-4000:]}"
            )
        self._cleanup(queue)
        log_path.unlink()
        return result

    def _wait_drained(self, queue: str, process: subprocess.Popen[bytes], log: Path) -> None:
        deadline = time.monotonic() + self.args.timeout
        idle_checks = 0
        while idle_checks < 2:
            time.sleep(0.05)
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited early:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the queue was not drained in time:\n{log.read_text()[-4000:]}")
            drained = self.broker.llen(queue) == 0 and self.broker.hlen(UNACKED_KEY) == 0
            idle_checks = idle_checks + 1 if drained else 0

    def _collect(self, stats_key: str) -> RunResult:
        keys = list(self.stats.scan_iter(f"{stats_key}:*"))
        if not keys:
            raise RuntimeError("the worker wrote no stats")
        rows = []
        for key in keys:
            raw = self.stats.hgetall(key)
            rows.append({k.decode(): float(v) for k, v in raw.items()})
            self.stats.delete(key)
        return RunResult(
            tasks=int(sum(row["tasks"] for row in rows)),
            seconds=max(row["last"] for row in rows) - min(row["first"] for row in rows),
            cpu_seconds=sum(row["cpu_last"] - row["cpu_first"] for row in rows),
            set_statements=int(sum(row["set"] for row in rows)),
            lookup_statements=int(sum(row["lookup"] for row in rows)),
            other_statements=int(sum(row["other"] for row in rows)),
        )

    def _cleanup(self, queue: str) -> None:
        doomed = list(self.broker.scan_iter(f"*{queue}*"))
        if doomed:
            self.broker.delete(*doomed)


def _settled_sessions() -> int:
    """Return PostgreSQL's session count of the database once it stops changing."""
    from bench.project.db import sessions_opened

    value = sessions_opened()
    for _ in range(20):
        time.sleep(0.1)
        again = sessions_opened()
        if again == value:
            break
        value = again
    return value


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Warm-stop the worker this script started (by its PID), killing it if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


def print_table(results: list[VariantResults], args: argparse.Namespace) -> None:
    """Print the medians of every variant, and the paired (same-round) comparisons to (a)."""
    floor = results[0]
    db_mode = "closed around every task" if args.close_db else "persistent"
    pool = "solo" if args.pool == "solo" else f"prefork -c {args.concurrency}"
    print()
    print(library_revision())
    print(
        f"celery worker -P {pool}, Redis broker, {args.tenants} tenants, "
        f"{args.tasks} tasks x {args.rounds} rounds, DB connections {db_mode}, "
        f"TENANT_LIMIT_SET_CALLS={args.limit_set_calls}"
    )
    cpu_label = "CPU us/task" if args.pool == "solo" else "child CPU us/task"
    header = (
        f"{'variant':<34} {'tasks/s':>7} {'range':>11} {'x floor':>7} {'paired':>6} "
        f"{cpu_label:>17} {'+us':>5} {'outside body':>12} {'SET':>5} {'lookup':>6} "
        f"{'DB conn/task':>12}"
    )
    print(header)
    print("-" * len(header))
    for item in results:
        rates = [run.rate for run in item.runs]
        paired_ratio = statistics.median(
            run.rate / base.rate for run, base in zip(item.runs, floor.runs)
        )
        paired_cpu = statistics.median(
            run.cpu_us_per_task - base.cpu_us_per_task for run, base in zip(item.runs, floor.runs)
        )
        print(
            f"{item.variant.key + '. ' + item.variant.label:<34} "
            f"{item.median('rate'):>7.0f} {min(rates):>5.0f}-{max(rates):<5.0f} "
            f"{item.median('rate') / floor.median('rate'):>7.3f} {paired_ratio:>6.3f} "
            f"{item.median('cpu_us_per_task'):>17.0f} {paired_cpu:>+5.0f} "
            f"{item.median('outside_body_per_task'):>12.3f} {item.median('set_per_task'):>5.3f} "
            f"{item.median('lookup_per_task'):>6.3f} {item.median('sessions_per_task'):>12.3f}"
        )
    print(
        "x floor = median tasks/s / the floor's; paired = median over rounds of the same-round "
        "ratio; +us = median same-round CPU difference to (a);\noutside body = SQL statements "
        "per task the worker ran besides the body's one query (SET = SET search_path, lookup = "
        "tenant-table queries);\nDB conn/task = PostgreSQL sessions opened per task "
        "(pg_stat_database.sessions)."
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=50, help="K tenants (default 50)")
    parser.add_argument("--tasks", type=int, default=3000, help="N tasks per run (default 3000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all variants (3)")
    parser.add_argument("--pool", choices=("solo", "prefork"), default="solo")
    parser.add_argument(
        "--concurrency", type=int, default=os.cpu_count() or 2, help="prefork processes"
    )
    parser.add_argument("--cache-seconds", type=float, default=60, help="cache TTL of c, d (60)")
    parser.add_argument(
        "--close-db",
        action="store_true",
        help="Celery's default: close the DB connections around every task",
    )
    parser.add_argument(
        "--limit-set-calls", action="store_true", help="set TENANT_LIMIT_SET_CALLS = True"
    )
    parser.add_argument("--database", default="tsc_bench_worker", help="database to create")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per run")
    parser.add_argument("--variants", default="abcd", help="subset to run, e.g. 'ac'")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.project.settings"
    os.environ["BENCH_PG_DB"] = args.database
    os.environ["BENCH_DB_REUSE_MAX"] = "" if args.close_db else "1000000"
    os.environ["BENCH_LIMIT_SET_CALLS"] = "1" if args.limit_set_calls else "0"

    import django

    django.setup()

    from bench.project.db import create_database, drop_database

    schema_names = create_database(args.tenants)
    try:
        bench = Bench(args, schema_names)
        chosen = [v for v in variants(args.cache_seconds) if v.key in args.variants]
        results = [VariantResults(variant) for variant in chosen]
        for round_number in range(1, args.rounds + 1):
            for item in results:
                run = bench.run(item.variant)
                item.runs.append(run)
                print(
                    f"round {round_number} {item.variant.key}: {run.rate:8.0f} tasks/s "
                    f"{run.cpu_us_per_task:6.0f} us CPU/task "
                    f"{run.outside_body_per_task:.3f} statements/task outside the body "
                    f"{run.sessions_per_task:.3f} DB connections/task",
                    flush=True,
                )
        print_table(results, args)
    finally:
        if not args.keep_db:
            drop_database()


if __name__ == "__main__":
    main()
