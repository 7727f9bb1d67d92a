"""Worker-side CPU cost of tenant_schemas_celery per task, in-process, without a broker.

Run (PostgreSQL on 127.0.0.1:5432 as ``postgres``)::

    .venv/bin/python bench/inprocess.py --tenants 50 --block 200 --rounds 40
    .venv/bin/python bench/inprocess.py --profile c     # cProfile of variant c's blocks
    .venv/bin/python bench/inprocess.py --profile d --profiler none --rounds 400 &
    py-spy record --pid $! --rate 1000 --format raw -o stacks.txt   # sampled instead

Real messages go through Celery's own worker path, in this process: they are
published to kombu's in-memory transport (``memory://``), received by a
``kombu.Consumer`` whose ``on_message`` hands them to the task's ``Strategy``
(``task.start_strategy(app, consumer)``), which builds a
``celery.worker.request.Request`` and runs it on a solo pool
(``celery.concurrency.solo.TaskPool``) through ``celery.app.trace.fast_trace_task``
(``setup_worker_optimizations(app)`` is called for the variant's app before each
block). Celery's Django fixup is active: both apps are configured from Django
settings, so ``celery.fixups.django`` installs ``DjangoFixup``, and this script
installs its ``DjangoWorkerFixup`` as a worker would. Database connections are
persistent (``CELERY_DB_REUSE_MAX``), as in ``bench/worker.py``'s default.
Every task runs one ORM query on a tenant model against real PostgreSQL.

Variants, interleaved in blocks of ``--block`` tasks (the order rotates every
round; the first ``--warmup`` rounds are discarded):

    plain        a ``celery.Celery`` app, no tenant handling; the library's
                 ``task_prerun``/``task_postrun`` receivers are detached during
                 its blocks, so the floor pays nothing for the library.
    cache off    a ``CeleryApp`` task, ``task_tenant_cache_seconds = 0``, tasks
                 round-robin over K tenants.
    cache on     the same with ``task_tenant_cache_seconds = 60``.
    same tenant  cache on, every task of a block for one tenant.

For each block, CPU time (``time.process_time``) is measured around the
delivery of its messages only (publishing is outside). Printed: the median CPU
µs per task of each variant, and the median over rounds of the per-round
difference to the plain block of the same round ("over plain", with its
interquartile range), checked against the budgets (cache on ≤ 60 µs, same
tenant ≤ 40 µs, cache off ≤ 450 µs). SQL statements per task outside the body
are counted in separate, unmeasured blocks with a ``connection.execute_wrapper``
(so the counting costs nothing in the CPU figures).

The database ``tsc_bench_inprocess`` is created with K tenants and dropped at
the end (``--keep-db`` keeps it).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.project.revision import library_revision  # noqa: E402

#: Budgets, in CPU µs per task over the plain floor.
BUDGETS = {"cache on": 60.0, "same tenant": 40.0, "cache off": 450.0}
#: ``dispatch_uid`` of the library's run-side receivers.
LIBRARY_RECEIVERS = ("tenant_schemas_celery.activate", "tenant_schemas_celery.deactivate")
QUERY_TASK = "bench.query"


class ReceiverSwitch:
    """Detach and re-attach a Celery signal receiver, keeping its place in the list."""

    def __init__(self, signal: Any, dispatch_uid: str) -> None:
        self.signal = signal
        self.dispatch_uid = dispatch_uid
        self._saved: tuple[int, Any] | None = None

    def detach(self) -> None:
        with self.signal.lock:
            for index, entry in enumerate(self.signal.receivers):
                if entry[0][0] == self.dispatch_uid:
                    del self.signal.receivers[index]
                    self._saved = (index, entry)
                    break
            else:
                raise LookupError(f"no receiver {self.dispatch_uid!r} on {self.signal!r}")
            self.signal.sender_receivers_cache.clear()

    def attach(self) -> None:
        if self._saved is None:
            return
        index, entry = self._saved
        with self.signal.lock:
            self.signal.receivers.insert(index, entry)
            self.signal.sender_receivers_cache.clear()
        self._saved = None


class _Timer:
    """The consumer's timer (no ETA tasks are sent, so it is never used)."""

    def call_at(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("no ETA task expected")


class _Controller:
    def __init__(self) -> None:
        from celery.worker import state

        self.state = state


class MiniConsumer:
    """What ``celery.worker.strategy.default`` needs of ``celery.worker.consumer.Consumer``.

    ``on_task_request`` is what ``WorkController._process_task`` does: hand the
    request to the pool.
    """

    def __init__(self, app: Any, pool: Any, connection_errors: tuple[type, ...]) -> None:
        self.app = app
        self.pool = pool
        self.hostname = "bench@inprocess"
        self.connection_errors = connection_errors
        self.event_dispatcher = None
        self.timer = _Timer()
        self.disable_rate_limits = True
        self.task_buckets: defaultdict[str, Any] = defaultdict(lambda: None)
        self.controller = _Controller()

    def on_task_request(self, request: Any) -> None:
        request.execute_using_pool(self.pool)

    def apply_eta_task(self, *args: Any) -> None:
        raise AssertionError("no ETA task expected")

    def _limit_task(self, *args: Any) -> None:
        raise AssertionError("rate limits are disabled")

    def _limit_post_eta(self, *args: Any) -> None:
        raise AssertionError("rate limits are disabled")


@dataclass
class Variant:
    """One variant: which app delivers, with which cache, to which tenants."""

    name: str
    app: Any
    cache_seconds: float | None
    tenant_mode: str  # "none", "round-robin" or "same"
    deliver: Callable[[int], None] = field(repr=False, default=lambda count: None)
    publish: Callable[[list[dict[str, Any] | None]], None] = field(
        repr=False, default=lambda headers: None
    )
    costs: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    statements: dict[str, float] = field(default_factory=dict)


class InProcessWorker:
    """Two apps (plain and tenant-aware) delivering from the memory transport in-process."""

    def __init__(self, args: argparse.Namespace, schema_names: list[str]) -> None:
        from celery import Celery
        from celery.concurrency.solo import TaskPool
        from celery.fixups.django import DjangoWorkerFixup
        from celery.signals import task_postrun, task_prerun

        from bench.project.body import query_note
        from tenant_schemas_celery.app import CeleryApp

        self.args = args
        self.schema_names = schema_names
        self.plain_app = Celery("inprocess_plain", set_as_current=False)
        self.tenant_app = CeleryApp("inprocess_tenant", set_as_current=False)
        for app in (self.plain_app, self.tenant_app):
            app.config_from_object("django.conf:settings", namespace="CELERY")
            app.conf.broker_url = "memory://"
            app.conf.broker_transport_options = {"polling_interval": 0.001}

            @app.task(name=QUERY_TASK, shared=False)
            def query(number: int) -> int:
                return query_note()

        if args.tenant_databases:
            aliases = tuple(args.tenant_databases.split(","))
            self.tenant_app.conf.task_tenant_databases = aliases
        # What a worker does at start-up: the Django worker fixup, then the pool.
        # Its receivers are weak references: keep the fixup alive, as DjangoFixup does.
        self.django_worker_fixup = DjangoWorkerFixup(self.tenant_app).install()
        self.pool = TaskPool()
        self.library_switches = [
            ReceiverSwitch(task_prerun, LIBRARY_RECEIVERS[0]),
            ReceiverSwitch(task_postrun, LIBRARY_RECEIVERS[1]),
        ]
        self._next_tenant = 0
        self._consumers: dict[str, Any] = {}

    def variants(self) -> list[Variant]:
        cache = self.args.cache_seconds
        variants = [
            Variant("plain", self.plain_app, None, "none"),
            Variant("cache off", self.tenant_app, 0, "round-robin"),
            Variant("cache on", self.tenant_app, cache, "round-robin"),
            Variant("same tenant", self.tenant_app, cache, "same"),
        ]
        for variant in variants:
            self._wire(variant)
        return variants

    def _wire(self, variant: Variant) -> None:
        """Give the variant its own queue, consumer and strategy."""
        from celery.app.trace import build_tracer, setup_worker_optimizations
        from kombu import Consumer, Queue
        from vine import promise

        app = variant.app
        setup_worker_optimizations(app, hostname="bench@inprocess")
        queue_name = f"bench-inprocess-{variant.name.replace(' ', '-')}"
        queue = Queue(queue_name, routing_key=queue_name)
        connection = app.connection_for_read()
        channel = connection.default_channel
        consumer_stub = MiniConsumer(app, self.pool, connection.connection_errors)
        task = app.tasks[QUERY_TASK]
        # What Consumer.update_strategies does for every task of the worker's app.
        strategy = task.start_strategy(app, consumer_stub)
        task.__trace__ = build_tracer(task.name, task, app.loader, consumer_stub.hostname, app=app)
        delivered = [0]

        def on_message(message: Any) -> None:
            delivered[0] += 1
            strategy(
                message, None, promise(message.ack_log_error), promise(message.reject_log_error), []
            )

        consumer = Consumer(channel, queues=[queue], on_message=on_message, accept=["json"])
        consumer.consume()
        self._consumers[variant.name] = consumer

        def deliver(count: int) -> None:
            delivered[0] = 0
            while delivered[0] < count:
                connection.drain_events(timeout=5)

        def publish(headers_list: list[dict[str, Any] | None]) -> None:
            with app.producer_or_acquire() as producer:
                for number, headers in enumerate(headers_list):
                    task.apply_async((number,), queue=queue, headers=headers, producer=producer)

        variant.deliver = deliver
        variant.publish = publish

    def headers_for(self, variant: Variant, count: int) -> list[dict[str, Any] | None]:
        names = self.schema_names
        if variant.tenant_mode == "none":
            return [None] * count
        if variant.tenant_mode == "same":
            schema = names[self._next_tenant % len(names)]
            self._next_tenant += 1
            return [{"_schema_name": schema}] * count
        start = self._next_tenant
        self._next_tenant += count
        return [{"_schema_name": names[(start + i) % len(names)]} for i in range(count)]

    def prepare(self, variant: Variant) -> None:
        """Switch the process to the variant's app and cache setting (not measured)."""
        from celery.app.trace import setup_worker_optimizations

        from tenant_schemas_celery.activation import restore_deferred

        restore_deferred()
        if variant.tenant_mode == "none":
            for switch in self.library_switches:
                switch.detach()
        else:
            for switch in self.library_switches:
                switch.attach()
            variant.app.conf.task_tenant_cache_seconds = variant.cache_seconds
        setup_worker_optimizations(variant.app, hostname="bench@inprocess")

    def finish(self, variant: Variant) -> None:
        for switch in self.library_switches:
            switch.attach()

    def block(
        self, variant: Variant, profiler: cProfile.Profile | None = None
    ) -> tuple[float, float]:
        """Publish and deliver one block; return (CPU s, wall s) of the delivery."""
        count = self.args.block
        variant.publish(self.headers_for(variant, count))
        self.prepare(variant)
        try:
            if profiler is not None:
                profiler.enable()
            wall = time.perf_counter()
            cpu = time.process_time()
            variant.deliver(count)
            cpu = time.process_time() - cpu
            wall = time.perf_counter() - wall
            if profiler is not None:
                profiler.disable()
        finally:
            self.finish(variant)
        return cpu, wall


def count_statements(worker: InProcessWorker, variant: Variant, blocks: int) -> dict[str, float]:
    """Run unmeasured blocks with a statement counter; return statements per task by kind."""
    from django.db import connections

    from bench.project.stats import statement_kind

    counts: dict[str, int] = defaultdict(int)

    def counter(execute: Callable[..., Any], sql: str, *rest: Any) -> Any:
        counts[statement_kind(sql)] += 1
        return execute(sql, *rest)

    wrapped = [connections[alias] for alias in connections]
    for connection in wrapped:
        connection.execute_wrappers.append(counter)
    try:
        for _ in range(blocks):
            worker.block(variant)
    finally:
        for connection in wrapped:
            connection.execute_wrappers.remove(counter)
    tasks = blocks * worker.args.block
    per_task = {kind: value / tasks for kind, value in counts.items()}
    per_task["outside body"] = sum(counts.values()) / tasks - 1
    return per_task


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def print_table(variants: list[Variant], args: argparse.Namespace) -> bool:
    plain = variants[0]
    print()
    print(library_revision())
    print(
        f"In-process worker path (memory transport, Strategy/Request, solo pool, fast_trace_task, "
        f"Django fixup), {args.tenants} tenants, {args.rounds} rounds x {args.block} tasks per "
        f"variant ({args.warmup} warm-up rounds dropped), TENANT_LIMIT_SET_CALLS="
        f"{args.limit_set_calls}, task_tenant_databases={args.tenant_databases or 'unset'}"
    )
    header = (
        f"{'variant':<12} {'CPU us/task':>11} {'over plain':>11} {'IQR':>15} {'wall us/task':>12} "
        f"{'outside body':>12} {'SET':>6} {'lookup':>7} {'budget':>7} {'':>6}"
    )
    print(header)
    print("-" * len(header))
    all_met = True
    for variant in variants:
        deltas = [(v - p) * 1e6 for v, p in zip(variant.costs, plain.costs)]
        delta = statistics.median(deltas)
        low, high = quartiles(deltas)
        budget = BUDGETS.get(variant.name)
        verdict = ""
        if budget is not None:
            met = delta <= budget
            all_met = all_met and met
            verdict = "met" if met else "MISSED"
        stmts = variant.statements
        print(
            f"{variant.name:<12} {statistics.median(variant.costs) * 1e6:>11.1f} "
            f"{delta:>+11.1f} {f'[{low:+.0f}, {high:+.0f}]':>15} "
            f"{statistics.median(variant.walls) * 1e6:>12.1f} "
            f"{stmts.get('outside body', 0):>12.3f} {stmts.get('set', 0):>6.3f} "
            f"{stmts.get('lookup', 0):>7.3f} "
            f"{'' if budget is None else f'{budget:.0f}':>7} {verdict:>6}"
        )
    print(
        "over plain = median over rounds of (variant's CPU us/task - plain's in the same round); "
        "outside body = SQL statements per task besides the body's query."
    )
    return all_met


def profile(worker: InProcessWorker, variant: Variant, blocks: int, use_cprofile: bool) -> None:
    """Run ``blocks`` blocks of one variant alone; print a CPU-time cProfile of them.

    Without cProfile, only the CPU µs per task are printed: for a sampling
    profiler attached from outside (``py-spy record --pid``).
    """
    for _ in range(3):
        worker.block(variant)
    if not use_cprofile:
        costs = [worker.block(variant)[0] / worker.args.block for _ in range(blocks)]
        print(f"{variant.name}: {statistics.median(costs) * 1e6:.1f} CPU us/task (median)")
        return
    profiler = cProfile.Profile(time.process_time)
    for _ in range(blocks):
        worker.block(variant, profiler)
    tasks = blocks * worker.args.block
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats("cumulative").print_stats(r"tenant_schemas_celery|django_tenants", 40)
    stats.sort_stats("tottime").print_stats(30)
    print(f"cProfile of {blocks} blocks x {worker.args.block} = {tasks} tasks of {variant.name!r}")
    print("(divide cumtime by the task count for seconds per task)")
    print(stream.getvalue())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=50, help="K tenants (default 50)")
    parser.add_argument("--block", type=int, default=200, help="tasks per block (200)")
    parser.add_argument("--rounds", type=int, default=40, help="measured rounds (40)")
    parser.add_argument("--warmup", type=int, default=3, help="rounds discarded first (3)")
    parser.add_argument("--cache-seconds", type=float, default=60, help="cache TTL (60)")
    parser.add_argument(
        "--limit-set-calls", action="store_true", help="set TENANT_LIMIT_SET_CALLS = True"
    )
    parser.add_argument(
        "--tenant-databases",
        metavar="ALIASES",
        help="set the task_tenant_databases setting (comma-separated), e.g. 'default'",
    )
    parser.add_argument("--database", default="tsc_bench_inprocess", help="database to create")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    parser.add_argument(
        "--profile",
        choices=("plain", "cache off", "cache on", "same tenant", "a", "b", "c", "d"),
        help="instead of measuring, cProfile this variant (a-d = plain, cache off, on, same)",
    )
    parser.add_argument(
        "--profiler",
        choices=("cprofile", "none"),
        default="cprofile",
        help="with --profile: 'none' just runs the variant (for py-spy record --pid)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.project.settings"
    os.environ["BENCH_PG_DB"] = args.database
    os.environ["BENCH_BROKER_URL"] = "memory://"
    os.environ["BENCH_DB_REUSE_MAX"] = "1000000"
    os.environ["BENCH_LIMIT_SET_CALLS"] = "1" if args.limit_set_calls else "0"

    import django

    django.setup()

    from bench.project.db import create_database, drop_database

    schema_names = create_database(args.tenants)
    try:
        worker = InProcessWorker(args, schema_names)
        variants = worker.variants()
        if args.profile:
            names = {"a": "plain", "b": "cache off", "c": "cache on", "d": "same tenant"}
            wanted = names.get(args.profile, args.profile)
            chosen = next(v for v in variants if v.name == wanted)
            profile(worker, chosen, args.rounds, args.profiler == "cprofile")
            return 0
        for round_number in range(args.warmup + args.rounds):
            shift = round_number % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                cpu, wall = worker.block(variant)
                if round_number >= args.warmup:
                    variant.costs.append(cpu / args.block)
                    variant.walls.append(wall / args.block)
        for variant in variants:
            variant.statements = count_statements(worker, variant, blocks=2)
        met = print_table(variants, args)
        print("budgets: all met" if met else "budgets: MISSED (see above)")
        return 0
    finally:
        if not args.keep_db:
            drop_database()


if __name__ == "__main__":
    sys.exit(main())
