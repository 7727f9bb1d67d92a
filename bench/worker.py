"""Throughput of a real ``celery worker``: plain Celery vs tenant_schemas_celery vs PyPI's.

Run (PostgreSQL on 127.0.0.1:5432 as ``postgres``, Redis on 127.0.0.1:6379)::

    .venv/bin/python bench/worker.py --tenants 50 --tasks 3000 --rounds 3 --pool solo
    .venv/bin/python bench/worker.py --pool prefork            # concurrency = CPU count
    .venv/bin/python bench/worker.py --pool solo --close-db    # Celery's default DB handling
    .venv/bin/python bench/worker.py --no-pypi                 # offline: without e-h

What is measured: a fresh queue is filled with ``--tasks`` messages, then a
``celery worker`` subprocess (``-P solo`` or ``-P prefork``, Redis broker,
results ignored, log level WARNING) is started on it and stopped once the queue
is drained. Every task runs one ORM query (``SELECT`` on ``notes_note``). The
time is taken inside the worker, from the first task's ``task_prerun`` to the
last task's ``task_postrun`` (over all prefork children), so worker start-up and
shutdown are excluded. Variants run alternately (see the order below) for
``--rounds`` rounds; the medians are printed:

    a. plain: a ``celery.Celery`` app without tenant handling (the floor; the
       tasks still run their query, in public).
    b. cache off: a ``CeleryApp``; tasks round-robin over K tenants,
       ``task_tenant_cache_seconds = 0``.
    c. cache on: the same with ``task_tenant_cache_seconds = --cache-seconds``.
    d. one tenant: cache on, every task for the same tenant (no switch).

and the same four with the PyPI package tenant-schemas-celery 5.0.0, whose
workers run with the Python of a throw-away environment (made on demand by
``bench/project/pypi.py`` under ``~/.cache/tsc-bench/``, with the PyPI package
and this environment's Celery, Django, django-tenants, psycopg2 and redis
versions) and a ``PYTHONPATH`` that holds the benchmark project but not the
repository's library, so the same ``bench.project.tenant_app`` (``CeleryApp``
from ``tenant_schemas_celery.app``) is the PyPI package's there:

    e. plain Celery in that environment (the floor of e-h).
    f. cache off, g. cache on, h. one tenant, as b, c, d.

A round runs a e b f c g d h (each configuration of both libraries back to
back). Every variant is compared with the floor of its own environment in the
same round (a for b-d, e for f-h): the paired ratio, median [min, max] over the
rounds. A second table puts the two libraries side by side: ours x plain, PyPI x
plain, and ours / PyPI (the ratio of the two, per round), the CPU per task over
the floor, the statements outside the body, and issue 15's throughput goals.
``--no-pypi`` leaves e-h out (no environment is made, nothing is downloaded).

Columns: tasks/s, ratio to the floor, worker CPU per task (the whole solo worker; for
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

from bench.project import pypi  # noqa: E402
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
    #: Run from the PyPI package's throw-away environment (see bench/project/pypi.py).
    pypi: bool = False
    #: The plain variant of the same environment, the variant's floor.
    floor: str = "a"
    #: The variant of the other library it is compared with ("" for none).
    counterpart: str = ""


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
    """Return the eight variants, in the order they run within a round.

    a-d run with this interpreter (the repository's library), e-h with the PyPI
    package's environment; each pair of the same configuration runs back to back.
    """
    plain, tenant = "bench.project.plain_app", "bench.project.tenant_app"
    cache = f"cache {cache_seconds:g} s"
    ours = [
        Variant("a", "plain Celery (floor)", plain, 0, False, False),
        Variant("b", "library, cache off", tenant, 0, False, True, counterpart="f"),
        Variant("c", f"library, {cache}", tenant, cache_seconds, False, True, counterpart="g"),
        Variant("d", "library, cache on, one tenant", tenant, cache_seconds, True, True,
                counterpart="h"),
    ]  # fmt: skip
    theirs = [
        Variant("e", "PyPI env: plain Celery (floor)", plain, 0, False, False, True, "e"),
        Variant("f", "PyPI 5.0.0, cache off", tenant, 0, False, True, True, "e"),
        Variant("g", f"PyPI 5.0.0, {cache}", tenant, cache_seconds, False, True, True, "e"),
        Variant("h", "PyPI 5.0.0, cache on, one tenant", tenant, cache_seconds, True, True,
                True, "e"),
    ]  # fmt: skip
    return [variant for pair in zip(ours, theirs) for variant in pair]


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
        self.pypi_location = Path(args.pypi_venv) if args.pypi_venv else None
        self.pypi_python: Path | None = None

    def prepare_pypi(self) -> None:
        """Make (or reuse) the PyPI package's throw-away environment."""
        self.pypi_python = pypi.ensure_environment(self.pypi_location)

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
        extra = {"BENCH_CACHE_SECONDS": str(variant.cache_seconds), "BENCH_STATS_KEY": stats_key}
        python, cwd = sys.executable, ROOT
        if variant.pypi:
            # Never the repository root on the path: its tenant_schemas_celery would win.
            python, cwd = str(self.pypi_python), pypi.import_root(self.pypi_location)
            env = pypi.child_environment(self.pypi_location, **extra)
        else:
            path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
            env = {**os.environ, "PYTHONPATH": path, **extra}
        concurrency = 1 if self.args.pool == "solo" else self.args.concurrency
        command = [
            python, "-m", "celery", "-A", variant.app_module, "worker",
            "-P", self.args.pool, "-c", str(concurrency), "-Q", queue,
            "-n", f"bench-{run_id}@%h", "-l", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        log_path = Path(tempfile.mkstemp(prefix="tsc-bench-worker-", suffix=".log")[1])
        sessions_before = _settled_sessions()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
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
            rows.append({_text(k): float(v) for k, v in raw.items()})
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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


#: Goals of issue 15 for the library's throughput, as a ratio to the floor's (paired).
THROUGHPUT_GOALS = {"b": 0.85, "c": 0.95, "d": 0.95}


def paired(item: VariantResults, other: VariantResults, attribute: str, ratio: bool) -> list[float]:
    """Per-round ratios (or differences) of ``attribute`` between two variants."""
    values = []
    for run, base in zip(item.runs, other.runs):
        mine, theirs = getattr(run, attribute), getattr(base, attribute)
        values.append(mine / theirs if ratio else mine - theirs)
    return values


def spread(values: list[float], digits: int = 3, sign: str = "") -> str:
    """``median [min, max]`` of paired values."""
    if not values:
        return "n/a"
    spec = f"{sign}.{digits}f"
    low, middle, high = (
        format(value, spec) for value in (min(values), statistics.median(values), max(values))
    )
    return f"{middle} [{low}, {high}]"


def print_table(results: list[VariantResults], args: argparse.Namespace) -> None:
    """Print the medians of every variant, and the paired (same-round) comparisons to its floor."""
    by_key = {item.variant.key: item for item in results}
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
        f"{'variant':<37} {'tasks/s':>7} {'range':>11} {'x floor':>7} "
        f"{'paired [min, max]':>21} {cpu_label:>17} {'+us':>5} {'outside body':>12} "
        f"{'SET':>5} {'lookup':>6} {'DB conn/task':>12}"
    )
    print(header)
    print("-" * len(header))
    for item in results:
        floor = by_key.get(item.variant.floor)
        rates = [run.rate for run in item.runs]
        if floor is None:
            x_floor, paired_rate, paired_cpu = "n/a", "n/a", "n/a"
        else:
            x_floor = f"{item.median('rate') / floor.median('rate'):.3f}"
            paired_rate = spread(paired(item, floor, "rate", ratio=True))
            paired_cpu = f"{statistics.median(paired(item, floor, 'cpu_us_per_task', False)):+.0f}"
        print(
            f"{item.variant.key + '. ' + item.variant.label:<37} "
            f"{item.median('rate'):>7.0f} {min(rates):>5.0f}-{max(rates):<5.0f} "
            f"{x_floor:>7} {paired_rate:>21} "
            f"{item.median('cpu_us_per_task'):>17.0f} {paired_cpu:>5} "
            f"{item.median('outside_body_per_task'):>12.3f} {item.median('set_per_task'):>5.3f} "
            f"{item.median('lookup_per_task'):>6.3f} {item.median('sessions_per_task'):>12.3f}"
        )
    print(
        "floor = the plain variant of the same environment (a for a-d, e for e-h); x floor = "
        "median tasks/s / the floor's; paired = same-round ratio to the floor,\nmedian "
        "[min, max] over rounds; +us = median same-round CPU difference to the floor; outside "
        "body = SQL statements per task the worker ran besides the body's one query\n(SET = "
        "SET search_path, lookup = tenant-table queries); DB conn/task = PostgreSQL sessions "
        "opened per task (pg_stat_database.sessions)."
    )
    print_comparison(by_key)


def print_comparison(by_key: dict[str, VariantResults]) -> None:
    """Print the library and the PyPI package side by side, each over its own floor."""
    rows = [
        (by_key[key], by_key[item.variant.counterpart])
        for key, item in by_key.items()
        if item.variant.counterpart in by_key
    ]
    if not rows or "a" not in by_key or "e" not in by_key:
        return
    ours_floor, pypi_floor = by_key["a"], by_key["e"]
    print()
    print("Side by side (paired, same round: median [min, max] over rounds):")
    header = (
        f"{'variant':<22} {'ours x plain':>21} {'PyPI x plain':>21} {'ours / PyPI':>21} "
        f"{'+us ours':>8} {'+us PyPI':>8} {'stmts ours':>10} {'stmts PyPI':>10} "
        f"{'goal':>13}"
    )
    print(header)
    print("-" * len(header))
    for mine, theirs in rows:
        ours_ratio = paired(mine, ours_floor, "rate", ratio=True)
        theirs_ratio = paired(theirs, pypi_floor, "rate", ratio=True)
        goal = THROUGHPUT_GOALS.get(mine.variant.key)
        verdict = ""
        if goal is not None:
            met = statistics.median(ours_ratio) >= goal
            verdict = f">= {goal:.2f} {'met' if met else 'MISSED'}"
        label = mine.variant.label.replace("library, ", "")
        print(
            f"{label:<22} {spread(ours_ratio):>21} "
            f"{spread(theirs_ratio):>21} "
            f"{spread([o / t for o, t in zip(ours_ratio, theirs_ratio)]):>21} "
            f"{statistics.median(paired(mine, ours_floor, 'cpu_us_per_task', False)):>+8.0f} "
            f"{statistics.median(paired(theirs, pypi_floor, 'cpu_us_per_task', False)):>+8.0f} "
            f"{mine.median('outside_body_per_task'):>10.3f} "
            f"{theirs.median('outside_body_per_task'):>10.3f} {verdict:>13}"
        )
    floors = paired(pypi_floor, ours_floor, "rate", ratio=True)
    print(
        f"the two floors (plain Celery, PyPI environment / this one): {spread(floors)}. "
        "x plain = tasks/s over the plain floor of the same environment and round;\nours / PyPI "
        "= ours x plain / PyPI x plain, per round; +us = "
        "worker CPU per task over that floor; goal = issue 15's throughput goal for the "
        "library (cache off >= 0.85x plain, cache on >= 0.95x)."
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
    parser.add_argument(
        "--variants",
        default="abcdefgh",
        help="subset to run, e.g. 'ac' (a-d: this library, e-h: the PyPI package)",
    )
    parser.add_argument(
        "--no-pypi",
        action="store_true",
        help="skip the PyPI package's variants e-h (no throw-away environment)",
    )
    parser.add_argument(
        "--pypi-venv",
        metavar="PATH",
        help=f"the PyPI package's environment (default {pypi.default_location()})",
    )
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
        chosen = [
            v
            for v in variants(args.cache_seconds)
            if v.key in args.variants and not (v.pypi and args.no_pypi)
        ]
        if any(v.pypi for v in chosen):
            bench.prepare_pypi()
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
