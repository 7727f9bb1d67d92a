"""Worker-side CPU cost of tenant_schemas_celery per task, in-process, without a broker.

Run (PostgreSQL on 127.0.0.1:5432 as ``postgres``)::

    .venv/bin/python bench/inprocess.py --tenants 50 --block 200 --rounds 40
    .venv/bin/python bench/inprocess.py --no-pypi       # without the PyPI package (offline)
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

The PyPI package tenant-schemas-celery 5.0.0 is measured the same way, side
by side, from the same run. It is imported as ``tenant_schemas_celery`` too, so
it runs in a child process: the Python of a throw-away environment (made on
demand by ``bench/project/pypi.py`` under ``~/.cache/tsc-bench/``, holding the
PyPI package and this environment's Celery, Django, django-tenants, psycopg2
and redis versions), started as ``python -m bench.inprocess --child`` with a
``PYTHONPATH`` that holds ``bench`` and ``tests`` but not the repository's
library. The child builds the same harness (``InProcessWorker`` with
``PyPILibrary``: the same four variants, its own plain block included, the cache
set with ``task_tenant_cache_seconds``, which 5.0.0 reads from the app's
configuration on every lookup) on the same database, and runs a round when the
parent tells it to, over a pipe: round *n* runs in one process, then in the
other (which goes first alternates), so both libraries see the same rounds of
the same machine. Each library's figures are over the plain block of its own
process and round. The comparison table prints, per variant, ours over plain,
PyPI over plain, ours / PyPI (the ratio of those medians, with the quartiles of
the same-round ratios), the statements outside the body of each, and issue 15's
goals (cache off at most 0.5x PyPI's cache off; cache on and same tenant at
most 0.3x PyPI's cache on). 5.0.0 keeps one process-wide cache whose entries
keep the expiry they were stored with, so the child sets that cache aside
during its cache-off blocks and puts it back after them (unmeasured): otherwise
each cache-off block would leave expired entries that cost the next cache-on
block a lookup per tenant. ``--no-pypi`` skips the child (nothing is made or
downloaded); ``--profile`` only profiles this repository's library.

The database ``tsc_bench_inprocess`` is created with K tenants and dropped at
the end (``--keep-db`` keeps it).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# A PyPI child imports ``bench`` from a directory without the repository's library.
if os.environ.get("BENCH_PYPI_CHILD") != "1" and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.project import pypi  # noqa: E402
from bench.project.revision import library_revision  # noqa: E402

#: Budgets, in CPU µs per task over the plain floor.
BUDGETS = {"cache on": 60.0, "same tenant": 40.0, "cache off": 450.0}
#: Goals against the PyPI package (issue 15): variant -> (PyPI variant, at most this ratio).
PYPI_GOALS = {"cache off": ("cache off", 0.5), "cache on": ("cache on", 0.3),
              "same tenant": ("cache on", 0.3)}  # fmt: skip
#: ``dispatch_uid`` of the library's run-side receivers.
LIBRARY_RECEIVERS = ("tenant_schemas_celery.activate", "tenant_schemas_celery.deactivate")
#: ``dispatch_uid`` of the PyPI package's (5.0.0) run-side receivers.
PYPI_RECEIVERS = ("tenant_schemas_switch_schema", "tenant_schemas_restore_schema")
QUERY_TASK = "bench.query"
VARIANT_NAMES = ("plain", "cache off", "cache on", "same tenant")


class Library:
    """What differs between this repository's library and the PyPI package in the harness.

    Both are imported as ``tenant_schemas_celery`` (so a process holds one of
    them): the app is ``tenant_schemas_celery.app.CeleryApp`` either way, and
    the cache is set with ``task_tenant_cache_seconds``. They differ in the
    ``dispatch_uid`` of their ``task_prerun``/``task_postrun`` receivers and in
    what is reset, unmeasured, before a block.
    """

    name = "ours"
    receivers = LIBRARY_RECEIVERS

    def before_block(self, cache_seconds: float | None) -> None:
        """Reset the library's per-process state between blocks (not measured).

        Nothing since the restore at the end of each task is immediate; a library that
        still defers it (``restore_deferred``, before 5.1.0's isolation fixes) settles it.
        """
        from tenant_schemas_celery import activation

        restore = getattr(activation, "restore_deferred", None)
        if restore is not None:
            restore()

    def after_block(self, cache_seconds: float | None) -> None:
        """Undo :meth:`before_block`, if it needs undoing (not measured)."""


class PyPILibrary(Library):
    """The PyPI package tenant-schemas-celery 5.0.0 (run in its own environment)."""

    name = "pypi"
    receivers = PYPI_RECEIVERS

    def __init__(self) -> None:
        self._stashed: dict[Any, Any] | None = None

    def before_block(self, cache_seconds: float | None) -> None:
        """Set its tenant cache aside before a cache-off block.

        5.0.0 keeps one process-wide cache whose entries carry the expiry they
        were stored with. Entries of a cache-on block would otherwise be served
        during the next cache-off block, and the cache-off block's entries
        (stored with a 0 s expiry) would replace them, costing the next cache-on
        block a lookup per tenant that a worker with one setting never pays.
        """
        if cache_seconds == 0:
            storage = self._storage()
            self._stashed = dict(storage)
            storage.clear()

    def after_block(self, cache_seconds: float | None) -> None:
        """Put back the cache set aside by :meth:`before_block` (not measured)."""
        if self._stashed is not None:
            storage = self._storage()
            storage.clear()
            storage.update(self._stashed)
            self._stashed = None

    @staticmethod
    def _storage() -> dict[Any, Any]:
        from tenant_schemas_celery import task

        storage = getattr(task, "_shared_storage", None)
        if not isinstance(storage, dict):
            raise RuntimeError("tenant_schemas_celery.task._shared_storage is gone")
        return storage


LIBRARIES: dict[str, type[Library]] = {"ours": Library, "pypi": PyPILibrary}


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

    def __init__(self, args: argparse.Namespace, schema_names: list[str], library: Library) -> None:
        from celery import Celery
        from celery.concurrency.solo import TaskPool
        from celery.fixups.django import DjangoWorkerFixup
        from celery.signals import task_postrun, task_prerun

        from bench.project.body import query_note
        from tenant_schemas_celery.app import CeleryApp

        self.args = args
        self.schema_names = schema_names
        self.library = library
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
            ReceiverSwitch(task_prerun, library.receivers[0]),
            ReceiverSwitch(task_postrun, library.receivers[1]),
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

        self.library.before_block(variant.cache_seconds)
        if variant.tenant_mode == "none":
            for switch in self.library_switches:
                switch.detach()
        else:
            for switch in self.library_switches:
                switch.attach()
            variant.app.conf.task_tenant_cache_seconds = variant.cache_seconds
        setup_worker_optimizations(variant.app, hostname="bench@inprocess")

    def finish(self, variant: Variant) -> None:
        self.library.after_block(variant.cache_seconds)
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
    """Run unmeasured blocks with a statement counter; return statements per task by kind.

    One uncounted block runs first, so that a cache that expired during the
    measured rounds is filled again before counting.
    """
    from django.db import connections

    from bench.project.stats import statement_kind

    counts: dict[str, int] = defaultdict(int)

    def counter(execute: Callable[..., Any], sql: str, *rest: Any) -> Any:
        counts[statement_kind(sql)] += 1
        return execute(sql, *rest)

    # One uncounted block first, so that the counted ones start from the steady state
    # (the cache may have expired while the measured rounds ran).
    worker.block(variant)
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


def deltas_of(variant: Variant, plain: Variant) -> list[float]:
    """Per-round differences (µs per task) between a variant and the same round's plain block."""
    return [(v - p) * 1e6 for v, p in zip(variant.costs, plain.costs)]


def print_table(
    variants: list[Variant], args: argparse.Namespace, title: str, budgets: bool
) -> bool:
    """Print one library's variants (each over the plain block of its own process)."""
    plain = variants[0]
    print()
    print(title)
    header = (
        f"{'variant':<12} {'CPU us/task':>11} {'over plain':>11} {'IQR':>15} {'wall us/task':>12} "
        f"{'outside body':>12} {'SET':>6} {'lookup':>7} {'budget':>7} {'':>6}"
    )
    print(header)
    print("-" * len(header))
    all_met = True
    for variant in variants:
        deltas = deltas_of(variant, plain)
        delta = statistics.median(deltas)
        low, high = quartiles(deltas)
        budget = BUDGETS.get(variant.name) if budgets else None
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
    return all_met


def print_header(args: argparse.Namespace) -> None:
    print()
    print(library_revision())
    print(
        f"In-process worker path (memory transport, Strategy/Request, solo pool, fast_trace_task, "
        f"Django fixup), {args.tenants} tenants, {args.rounds} rounds x {args.block} tasks per "
        f"variant ({args.warmup} warm-up rounds dropped), TENANT_LIMIT_SET_CALLS="
        f"{args.limit_set_calls}, task_tenant_databases={args.tenant_databases or 'unset'}"
    )


def print_comparison(ours: list[Variant], theirs: list[Variant]) -> bool:
    """Print ours and the PyPI package side by side, each over its own process's plain."""
    print()
    print("Side by side (each over plain Celery in its own process, same rounds):")
    header = (
        f"{'variant':<12} {'ours over plain':>15} {'PyPI over plain':>15} {'ours / PyPI':>11} "
        f"{'per-round IQR':>15} {'stmts ours':>10} {'stmts PyPI':>10} "
        f"{'goal':>22} {'':>6}"
    )
    print(header)
    print("-" * len(header))
    ours_by_name = {v.name: v for v in ours}
    theirs_by_name = {v.name: v for v in theirs}
    medians = {
        name: statistics.median(deltas_of(theirs_by_name[name], theirs[0]))
        for name in VARIANT_NAMES[1:]
    }
    all_met = True
    for name in VARIANT_NAMES[1:]:
        mine, other = ours_by_name[name], theirs_by_name[name]
        mine_deltas = deltas_of(mine, ours[0])
        other_deltas = deltas_of(other, theirs[0])
        mine_median = statistics.median(mine_deltas)
        ratio = mine_median / medians[name] if medians[name] > 0 else float("nan")
        per_round = [m / o for m, o in zip(mine_deltas, other_deltas) if o > 0]
        low, high = quartiles(per_round) if per_round else (float("nan"), float("nan"))
        reference, limit = PYPI_GOALS[name]
        goal_ratio = mine_median / medians[reference] if medians[reference] > 0 else float("inf")
        met = goal_ratio <= limit
        all_met = all_met and met
        goal = f"{goal_ratio:.2f} <= {limit:.2f}x {reference}"
        print(
            f"{name:<12} {mine_median:>+15.1f} {medians[name]:>+15.1f} {ratio:>11.2f} "
            f"{f'[{low:.2f}, {high:.2f}]':>15} "
            f"{mine.statements.get('outside body', 0):>10.3f} "
            f"{other.statements.get('outside body', 0):>10.3f} "
            f"{goal:>22} {'met' if met else 'MISSED':>6}"
        )
    plain_ours = statistics.median(ours[0].costs) * 1e6
    plain_theirs = statistics.median(theirs[0].costs) * 1e6
    print(
        f"plain Celery: {plain_ours:.1f} CPU us/task in this process, {plain_theirs:.1f} in the "
        f"PyPI child ({plain_theirs / plain_ours:.3f}x)."
    )
    print(
        "ours / PyPI = ratio of the two medians; per-round IQR = quartiles of the same-round "
        "ratios; stmts = SQL statements per task outside the body;\ngoal = ours over plain / "
        "the PyPI package's over plain for the named PyPI variant (issue 15)."
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
    parser.add_argument(
        "--no-pypi",
        action="store_true",
        help="skip the PyPI package (no throw-away environment, no child process)",
    )
    parser.add_argument(
        "--pypi-venv",
        metavar="PATH",
        help=f"the PyPI package's environment (default {pypi.default_location()})",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_round(worker: InProcessWorker, variants: list[Variant], round_number: int) -> None:
    """Run one block of every variant (the order rotates with the round number)."""
    shift = round_number % len(variants)
    for variant in variants[shift:] + variants[:shift]:
        cpu, wall = worker.block(variant)
        if round_number >= worker.args.warmup:
            variant.costs.append(cpu / worker.args.block)
            variant.walls.append(wall / worker.args.block)


def child_arguments(args: argparse.Namespace) -> list[str]:
    """Return the command-line options a PyPI child needs to mirror this run."""
    words = [
        "--tenants", str(args.tenants), "--block", str(args.block),
        "--rounds", str(args.rounds), "--warmup", str(args.warmup),
        "--cache-seconds", str(args.cache_seconds), "--database", args.database,
    ]  # fmt: skip
    if args.limit_set_calls:
        words.append("--limit-set-calls")
    if args.tenant_databases:
        words += ["--tenant-databases", args.tenant_databases]
    return words


class PyPIChild:
    """The same harness with the PyPI package, in a child process of its own environment.

    The parent sends one JSON command per line on the child's stdin and reads
    one JSON answer per line from its stdout: ``round`` (run round *n* of the
    four variants), ``statements`` (count them, unmeasured) and ``results``
    (every variant's per-round figures). The child's stderr is this process's.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        location = Path(args.pypi_venv) if args.pypi_venv else None
        python = pypi.ensure_environment(location)
        command = [str(python), "-m", "bench.inprocess", "--child", *child_arguments(args)]
        self.process = subprocess.Popen(
            command,
            cwd=pypi.import_root(location),
            env=pypi.child_environment(location),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.description = str(self.ask({"op": "hello"})["library"])

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait(30)
            raise RuntimeError(f"the PyPI child exited ({code}) on {command}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the PyPI child failed on {command}: {answer['error']}")
        return answer

    def results(self) -> list[Variant]:
        """The child's variants, with their costs, walls and statements (no apps)."""
        answer = self.ask({"op": "results"})
        return [
            Variant(row["name"], None, row["cache_seconds"], row["tenant_mode"],
                    costs=row["costs"], walls=row["walls"], statements=row["statements"])
            for row in answer["variants"]
        ]  # fmt: skip

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(RuntimeError, BrokenPipeError):
                self.ask({"op": "quit"})
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


def serve(args: argparse.Namespace) -> int:
    """The PyPI child: set up the harness, then answer the parent's commands (see PyPIChild)."""
    answers = sys.stdout
    sys.stdout = sys.stderr  # anything else printed must not reach the parent's pipe
    description = pypi.check_pypi_imported()

    from bench.project.db import schema_names

    worker = InProcessWorker(args, schema_names(args.tenants), PyPILibrary())
    variants = worker.variants()
    for line in sys.stdin:
        command = json.loads(line)
        answer: dict[str, Any] = {}
        try:
            op = command["op"]
            if op == "hello":
                answer["library"] = description
            elif op == "round":
                run_round(worker, variants, int(command["round"]))
            elif op == "statements":
                for variant in variants:
                    variant.statements = count_statements(worker, variant, blocks=2)
            elif op == "results":
                answer["variants"] = [
                    {"name": v.name, "cache_seconds": v.cache_seconds,
                     "tenant_mode": v.tenant_mode, "costs": v.costs, "walls": v.walls,
                     "statements": v.statements}
                    for v in variants
                ]  # fmt: skip
            elif op == "quit":
                answers.write("{}\n")
                answers.flush()
                return 0
            else:
                raise ValueError(f"unknown command {op!r}")
        except Exception as exc:  # reported to the parent, which stops
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.project.settings"
    os.environ["BENCH_PG_DB"] = args.database
    os.environ["BENCH_BROKER_URL"] = "memory://"
    os.environ["BENCH_DB_REUSE_MAX"] = "1000000"
    os.environ["BENCH_LIMIT_SET_CALLS"] = "1" if args.limit_set_calls else "0"

    import django

    django.setup()

    if args.child:
        return serve(args)

    from bench.project.db import create_database, drop_database

    schema_names = create_database(args.tenants)
    child: PyPIChild | None = None
    try:
        worker = InProcessWorker(args, schema_names, Library())
        variants = worker.variants()
        if args.profile:
            names = {"a": "plain", "b": "cache off", "c": "cache on", "d": "same tenant"}
            wanted = names.get(args.profile, args.profile)
            chosen = next(v for v in variants if v.name == wanted)
            profile(worker, chosen, args.rounds, args.profiler == "cprofile")
            return 0
        if not args.no_pypi:
            child = PyPIChild(args)
        for round_number in range(args.warmup + args.rounds):
            # Alternate which process goes first, so neither always runs on a warmer machine.
            if child is not None and round_number % 2:
                child.ask({"op": "round", "round": round_number})
            run_round(worker, variants, round_number)
            if child is not None and not round_number % 2:
                child.ask({"op": "round", "round": round_number})
        for variant in variants:
            variant.statements = count_statements(worker, variant, blocks=2)
        theirs: list[Variant] = []
        if child is not None:
            child.ask({"op": "statements"})
            theirs = child.results()
        print_header(args)
        met = print_table(variants, args, "this repository's library:", budgets=True)
        print("budgets: all met" if met else "budgets: MISSED (see above)")
        if child is not None:
            print_table(theirs, args, f"{child.description}:", budgets=False)
        print(
            "over plain = median over rounds of (variant's CPU us/task - plain's in the same "
            "round, same process); outside body = SQL statements per task besides the body's "
            "query."
        )
        if child is not None:
            goals = print_comparison(variants, theirs)
            print("goals against PyPI: all met" if goals else "goals against PyPI: MISSED")
        return 0
    finally:
        if child is not None:
            child.close()
        if not args.keep_db:
            drop_database()


if __name__ == "__main__":
    sys.exit(main())
