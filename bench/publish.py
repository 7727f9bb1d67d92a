"""Publish side: what header capture adds to ``apply_async``, plain Celery vs the library.

Run (Redis on 127.0.0.1:6379; no database is needed)::

    .venv/bin/python bench/publish.py --block 500 --rounds 30

Three senders live in this process, all configured from the benchmark's Django
settings: a plain ``celery.Celery`` app (the floor); a ``CeleryApp`` (its task is
a ``TenantTask``: ``apply_async`` puts the active schema in the ``_schema_name``
header); and a plain ``celery.Celery`` app whose task is declared with
``base=TenantTask`` (the same capture without ``CeleryApp``, which tells the cost
of the app class apart from the cost of the capture). The connection of
django-tenants is switched to a tenant schema (without a query), as in a web
request of a tenant, and each task is sent with ``task.apply_async((number,))``
in blocks of ``--block`` calls, the senders alternating (the order rotates every
round; the first ``--warmup`` rounds are dropped). This is done over kombu's
in-memory transport (``memory://``) and over Redis (database 10); queues are
purged between blocks, outside the timing. The script first checks that the
tenant-aware senders do put the header in the message and the plain one does not.

Three kinds of call are measured (``--calls``), each in blocks of its own:

- ``apply_async``: ``task.apply_async((number,))``, all three senders;
- ``send_task``: ``app.send_task("bench.query", (number,))`` by name, plain Celery
  and ``CeleryApp`` (whose ``send_task`` captures the schema too);
- ``link``: ``task.apply_async((number,), link=callback)``, a message carrying a
  callback signature (canvas: the callback is stamped with the schema as well), all
  three senders.

Printed per transport and kind: the median CPU (``time.process_time``) and wall
(``time.perf_counter``) µs per call of each sender, and the overhead of each
tenant-aware sender: the median over rounds of (its block / the plain block of
the same round) - 1, in %, with its interquartile range. Target (issue 15): CPU
within 2 % of plain Celery's per message.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.project.revision import library_revision  # noqa: E402

TARGET_PERCENT = 2.0
#: The kinds of call measured (``--calls``).
CALLS = ("apply_async", "send_task", "link")
QUEUE = "bench-publish"


@dataclass
class Sender:
    """One app's task and the per-call costs of its blocks."""

    name: str
    app: Any
    task: Any
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)


def make_senders(broker_url: str) -> list[Sender]:
    """Return the senders (plain first), all publishing to ``broker_url``."""
    from celery import Celery

    from tenant_schemas_celery.app import CeleryApp
    from tenant_schemas_celery.task import TenantTask

    senders = []
    for name, app, base in (
        ("plain Celery", Celery("publish_plain", set_as_current=False), None),
        ("CeleryApp", CeleryApp("publish_tenant", set_as_current=False), None),
        ("TenantTask", Celery("publish_base", set_as_current=False), TenantTask),
    ):
        app.config_from_object("django.conf:settings", namespace="CELERY")
        app.conf.broker_url = broker_url
        app.conf.task_default_queue = QUEUE
        options = {} if base is None else {"base": base}

        @app.task(name="bench.query", shared=False, **options)
        def query(number: int) -> int:
            return number

        senders.append(Sender(name, app, app.tasks["bench.query"]))
    return senders


def purge(sender: Sender) -> None:
    with sender.app.connection_for_write() as connection:
        connection.default_channel.queue_purge(QUEUE)


def sending(sender: Sender, kind: str) -> Any:
    """Return a function sending task number ``n`` of ``sender`` the ``kind`` way."""
    if kind == "send_task":
        send_task = sender.app.send_task
        return lambda number: send_task("bench.query", (number,))
    apply_async = sender.task.apply_async
    if kind == "link":
        callback = sender.task.si(0)
        return lambda number: apply_async((number,), link=callback)
    return lambda number: apply_async((number,))


def senders_of(senders: list[Sender], kind: str) -> list[Sender]:
    """The senders a kind of call is measured with (``send_task``: the apps' own)."""
    if kind == "send_task":
        return [sender for sender in senders if sender.name != "TenantTask"]
    return senders


def block(sender: Sender, count: int, kind: str = "apply_async") -> tuple[float, float]:
    """Send ``count`` tasks; return (CPU s, wall s) per call."""
    send = sending(sender, kind)
    wall = time.perf_counter()
    cpu = time.process_time()
    for number in range(count):
        send(number)
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    return cpu / count, wall / count


def check_header(senders: list[Sender], schema_name: str, kind: str = "apply_async") -> None:
    """Make sure the tenant-aware senders really capture the schema (and plain does not).

    With ``link``, the callback carried by the message is checked too.
    """
    with senders[1].app.connection_for_write() as connection:
        for sender in senders_of(senders, kind):
            purge(sender)
            sending(sender, kind)(0)
            message = connection.default_channel.basic_get(QUEUE, no_ack=True)
            header = message.headers.get("_schema_name") if message else None
            expected = None if sender.name == "plain Celery" else schema_name
            if header != expected:
                raise RuntimeError(f"{sender.name} sent _schema_name={header!r}, not {expected!r}")
            if kind == "link":
                (callback,) = message.decode()[2]["callbacks"] if message else [{}]
                stamp = (callback.get("options") or {}).get("headers", {}).get("_schema_name")
                if stamp != expected:
                    raise RuntimeError(f"{sender.name}'s callback carried {stamp!r}")


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def run_transport(
    label: str, broker_url: str, args: argparse.Namespace, schema: str, kind: str = "apply_async"
) -> bool:
    senders = senders_of(make_senders(broker_url), kind)
    check_header(senders, schema, kind)
    for round_number in range(args.warmup + args.rounds):
        shift = round_number % len(senders)
        order = senders[shift:] + senders[:shift]
        for sender in order:
            purge(sender)
            cpu, wall = block(sender, args.block, kind)
            if round_number >= args.warmup:
                sender.cpu.append(cpu)
                sender.wall.append(wall)
        purge(senders[0])
    plain = senders[0]
    print(f"\n{label}: {args.rounds} rounds x {args.block} {kind} calls per variant")
    header = f"{'variant':<14} {'CPU us/call':>12} {'wall us/call':>13}"
    print(header)
    print("-" * len(header))
    for sender in senders:
        print(
            f"{sender.name:<14} {statistics.median(sender.cpu) * 1e6:>12.1f} "
            f"{statistics.median(sender.wall) * 1e6:>13.1f}"
        )
    met = True
    for tenant in senders[1:]:
        for kind in ("cpu", "wall"):
            ratios = [
                (t / p - 1) * 100 for t, p in zip(getattr(tenant, kind), getattr(plain, kind))
            ]
            overhead = statistics.median(ratios)
            low, high = quartiles(ratios)
            ok = overhead < TARGET_PERCENT
            met = met and ok
            print(
                f"{tenant.name} over plain ({kind:>4}): {overhead:+6.2f} % "
                f"(IQR {low:+.2f} .. {high:+.2f} %), target < {TARGET_PERCENT:g} %: "
                f"{'met' if ok else 'MISSED'}"
            )
    return met


def _remove_redis_keys(url: str) -> None:
    """Delete the Redis keys kombu left for the benchmark's queue (bindings, the queue)."""
    import redis

    client = redis.Redis.from_url(url)
    doomed = list(client.scan_iter(f"*{QUEUE}*"))
    if doomed:
        client.delete(*doomed)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block", type=int, default=500, help="calls per block (500)")
    parser.add_argument("--rounds", type=int, default=30, help="measured rounds (30)")
    parser.add_argument("--warmup", type=int, default=3, help="rounds dropped first (3)")
    parser.add_argument(
        "--transports", default="memory,redis", help="comma-separated: memory, redis"
    )
    parser.add_argument(
        "--calls", default=",".join(CALLS), help=f"comma-separated: {', '.join(CALLS)}"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.project.settings"

    import django

    django.setup()

    from django.conf import settings
    from django.db import connection

    schema = "bench000"
    connection.set_schema(schema)  # as django-tenants' middleware would; no query is made
    urls = {"memory": "memory://", "redis": settings.CELERY_BROKER_URL}
    print(library_revision())
    met = True
    for name in args.transports.split(","):
        for kind in args.calls.split(","):
            label = f"{name} transport ({urls[name]})"
            met = run_transport(label, urls[name], args, schema, kind) and met
    if "redis" in args.transports.split(","):
        _remove_redis_keys(urls["redis"])
    print("\ntarget: met" if met else "\ntarget: MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
