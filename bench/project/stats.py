"""Worker-side instrumentation: timing, CPU and SQL statements of the tasks a process ran.

Importing this module in a worker's app connects Celery signal receivers that
keep everything in process memory (no I/O per task) and write one Redis hash per
process when it shuts down (``worker_process_shutdown`` in a prefork child,
``worker_shutdown`` in a solo worker). The hash is ``<BENCH_STATS_KEY>:<pid>``.

Statements are counted by a ``connection.execute_wrapper`` installed at
``worker_process_init`` on every database alias, so they include django-tenants'
``SET search_path`` (it runs through Django's cursor wrapper) and are sorted in
three kinds: ``set`` (``SET search_path``), ``lookup`` (any statement on the
tenant table ``customers_client``) and ``other`` (the task body's query and
anything else).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import redis
from celery.signals import (
    task_postrun,
    task_prerun,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)
from django.conf import settings
from django.db import connections

#: Prefix of the Redis hashes (one per process) the stats are written to.
STATS_KEY_VARIABLE = "BENCH_STATS_KEY"
#: Redis database of the stats hashes.
STATS_DB = 9

_counts: dict[str, float] = {
    "tasks": 0,
    "set": 0,
    "lookup": 0,
    "other": 0,
    "first": 0.0,
    "last": 0.0,
    "cpu_first": 0.0,
    "cpu_last": 0.0,
}


def statement_kind(sql: str) -> str:
    """Return ``set``, ``lookup`` or ``other`` for an SQL statement."""
    if sql.startswith("SET search_path"):
        return "set"
    if '"customers_client"' in sql:
        return "lookup"
    return "other"


def _count_statement(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    _counts[statement_kind(sql)] += 1
    return execute(sql, params, many, context)


def stats_redis() -> redis.Redis:
    """Return a client of the Redis database holding the stats."""
    return redis.Redis.from_url(f"{settings.REDIS_URL}/{STATS_DB}")


@worker_process_init.connect(weak=False, dispatch_uid="bench.stats.install")
def _install_counter(**kwargs: Any) -> None:
    for alias in connections:
        connection = connections[alias]
        if _count_statement not in connection.execute_wrappers:
            connection.execute_wrappers.append(_count_statement)


@task_prerun.connect(weak=False, dispatch_uid="bench.stats.prerun")
def _task_started(**kwargs: Any) -> None:
    if not _counts["tasks"] and not _counts["first"]:
        _counts["first"] = time.monotonic()
        _counts["cpu_first"] = time.process_time()


@task_postrun.connect(weak=False, dispatch_uid="bench.stats.postrun")
def _task_finished(**kwargs: Any) -> None:
    _counts["tasks"] += 1
    _counts["last"] = time.monotonic()
    _counts["cpu_last"] = time.process_time()


def _flush(**kwargs: Any) -> None:
    key = os.environ.get(STATS_KEY_VARIABLE)
    if not key or not _counts["tasks"]:
        return
    stats_redis().hset(f"{key}:{os.getpid()}", mapping={k: v for k, v in _counts.items()})


worker_process_shutdown.connect(_flush, weak=False, dispatch_uid="bench.stats.flush_child")
worker_shutdown.connect(_flush, weak=False, dispatch_uid="bench.stats.flush_main")
