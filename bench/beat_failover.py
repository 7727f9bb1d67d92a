"""Beat failover: from the leader's SIGKILL to the first send by the new leader.

Run (PostgreSQL on 127.0.0.1:5432 as ``postgres``, Redis on 127.0.0.1:6379)::

    .venv/bin/python bench/beat_failover.py --tenants 0 1000 10000 --failover-seconds 10 3

(or ``bench/beat.py --failover``, with these options). Setup: the database
``tsc_bench_failover`` (``--database``) is created and its public schema migrated, with
one django-celery-beat row due every second in public. Tenants are made as
``bench/beat.py`` makes them (by SQL, the counts cumulative; ``--task-every``, default
10: every 10th tenant has a periodic task, every minute, made not due: its
``last_run_at`` ten years ahead; ``--keep-db``, ``--reuse-db``).

For each tenant count and ``beat_tenant_failover_seconds`` value, two ``celery beat``
processes of ``TenantAwareDatabaseScheduler`` run with leader election on
(``tests.beat_ha_app``; beat records each message it publishes, with its pid and the
time, in Redis, and each beat records when its start-up load of every schema is done:
``bench.failover_scheduler``). Once both beats have loaded and the leader has sent two
runs, the leader is SIGKILLed; the time from the kill to the first message of another
beat that had loaded is one measurement (none within ``10 f + 60`` seconds: the row
says so, with the number of leader locks lost). Then a beat is started in the killed one's
place, and the next kill waits until it has loaded. A row due every second is sent as
soon as its beat leads (the run due during the gap is caught up from the shared
``last_run_at``), so the figure is the takeover time (which reads every schema's rows
at once) plus at most the wait for the row's next due time. Reported: median, minimum
and maximum, in seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCHEDULER = "bench.failover_scheduler.LoadReportingScheduler"
LOAD_TIMEOUT = 600.0  # seconds for a beat's start-up load (10,000 tenants: several)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from bench.beat import add_database_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[0])
    parser.add_argument("--failover-seconds", type=float, nargs="+", default=[10.0, 3.0])
    parser.add_argument("--repeat", type=int, default=5, help="kills per measure")
    parser.add_argument(
        "--repeat-at",
        nargs="*",
        default=[],
        metavar="TENANTS=N",
        help="kills for some tenant counts instead, e.g. 10000=3",
    )
    add_database_arguments(parser, "tsc_bench_failover", task_every=10)
    args = parser.parse_args(argv)
    if min(args.tenants) < 0 or args.repeat < 1 or args.task_every < 1:
        parser.error("--tenants must be >= 0, --repeat and --task-every >= 1")
    try:
        args.repeat_at = {int(k): int(v) for k, v in (i.split("=") for i in args.repeat_at)}
    except ValueError:
        parser.error(f"--repeat-at takes TENANTS=N items, got {args.repeat_at!r}")
    return args


class NoSend(Exception):
    """No loaded beat sent within the timeout (e.g. each new leader loses its lock in its
    takeover's read, longer than ``idle_session_timeout``: ``f/2``)."""


class Beats:
    """The ``celery beat`` processes of one measure, and what they recorded in Redis."""

    def __init__(self, failover: float) -> None:
        self.key = f"tsc-bench:failover:{uuid.uuid4().hex[:8]}"
        self.env = {"TSC_HA_KEY": self.key, "TSC_HA_FAILOVER": str(failover)}
        self.env["TSC_HA_SCHEDULE"] = "rows"
        self.timeout = 10 * failover + 60
        self.processes: list[Any] = []

    def start(self) -> Any:
        from tests.workers import CeleryProcess

        args = ["-A", "tests.beat_ha_app", "beat", "-S", SCHEDULER, "-l", "WARNING"]
        self.processes.append(CeleryProcess(args, self.env, ready="").start())
        return self.processes[-1]

    def sends(self) -> list[dict[str, Any]]:
        from tests.beat_e2e_app import events

        return [json.loads(item) for item in events().lrange(f"{self.key}:sent", 0, -1)]

    def loaded(self) -> set[int]:
        from tests.beat_e2e_app import events

        return {int(pid) for pid in events().lrange(f"{self.key}:loaded", 0, -1)}

    def wait_loaded(self, pids: set[int]) -> None:
        """Wait until each beat of ``pids`` has completed its start-up load."""
        deadline = time.monotonic() + LOAD_TIMEOUT
        while not pids <= self.loaded():
            if time.monotonic() > deadline:
                self.fail(f"beats {sorted(pids - self.loaded())} did not load")
            time.sleep(0.1)

    def wait_for_send(self, after: float, senders: set[int], count: int = 1) -> dict[str, Any]:
        """Return the ``count``-th send after ``after`` by a beat of ``senders``."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            found = [s for s in self.sends() if s["t"] > after and s["pid"] in senders]
            if len(found) >= count:
                return found[count - 1]
            time.sleep(0.02)
        lost = sum(b.log().count("Lost the leader lock") for b in self.processes)
        raise NoSend(f"no send within {self.timeout:.0f} s ({lost} leader locks lost)")

    def fail(self, message: str) -> NoReturn:
        raise SystemExit(message + ":\n" + "\n".join(b.log() for b in self.processes))

    def close(self) -> None:
        """Stop the beats; delete their records, and the messages they sent (never consumed)."""
        import redis
        from django.conf import settings

        from tests.beat_e2e_app import events

        for beat in self.processes:
            beat.stop()
        events().delete(self.key, f"{self.key}:sent", f"{self.key}:loaded")
        redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(settings.CELERY_TASK_DEFAULT_QUEUE)


def measure(failover: float, repeat: int) -> list[float]:
    """Kill the leader ``repeat`` times; return the seconds to the new leader's first send."""
    beats = Beats(failover)
    seconds: list[float] = []
    try:
        alive = {beats.start().process.pid, beats.start().process.pid}
        beats.wait_loaded(alive)
        last = beats.wait_for_send(0, alive, count=2)
        for _ in range(repeat):
            leader = next(b for b in beats.processes if b.process.pid == last["pid"])
            beats.wait_for_send(last["t"], alive)  # one more run by this leader
            leader.kill()
            killed_at = time.time()
            alive.discard(last["pid"])
            first = beats.wait_for_send(killed_at, alive)  # the loaded survivor
            seconds.append(first["t"] - killed_at)
            new = beats.start().process.pid
            beats.wait_loaded({new})
            alive.add(new)
            last = beats.wait_for_send(first["t"], alive)
    finally:
        beats.close()
    return seconds


def prepare(args: argparse.Namespace) -> int:
    """Create (or reuse) the database and its public row; return how many tenants it holds."""
    from bench.beat import create_database, existing_tenants
    from tests.beat_ha_app import TASK
    from tests.beat_helpers import add_task

    if args.reuse_db:
        args.keep_db = True
        made = existing_tenants()
        print(f"Reusing database {args.database}: {made:,} tenants", flush=True)
        return made
    print(f"Creating database {args.database}...", flush=True)
    create_database(args.database)
    add_task("public", "failover-row", every=1, task=TASK)
    return 0


def grow(made: int, tenants: int, args: argparse.Namespace) -> int:
    """Add the tenants the database lacks (up to ``tenants``); settle them."""
    from bench.beat import add_tenants, not_due_tenant_rows, settle

    if tenants < made:
        raise SystemExit(f"--tenants {tenants}: the database already holds {made:,}.")
    if tenants > made:
        started = time.perf_counter()
        add_tenants(made, tenants, args.workers, args.task_every)
        print(f"{tenants:,} tenants made in {time.perf_counter() - started:.0f} s", flush=True)
        not_due_tenant_rows()
        settle()
    return tenants


def main(argv: list[str] | None = None) -> None:
    """Print the failover time for each tenant count and ``--failover-seconds`` value."""
    args = parse_args(argv)
    from bench.beat import admin_execute, setup_django

    setup_django(args.database)
    made = prepare(args)
    rows: list[str] = []
    header = "| tenants | beat_tenant_failover_seconds | kills | median s | min s | max s |"
    try:
        for tenants in sorted(set(args.tenants)):
            made = grow(made, tenants, args)
            for failover in args.failover_seconds:
                try:
                    seconds = measure(failover, args.repeat_at.get(tenants, args.repeat))
                except NoSend as exc:
                    rows.append(f"| {tenants:,} | {failover:g} | - | {exc} | | |")
                    print(rows[-1], flush=True)
                    continue
                rows.append(
                    f"| {tenants:,} | {failover:g} | {len(seconds)} "
                    f"| {statistics.median(seconds):.2f} | {min(seconds):.2f} "
                    f"| {max(seconds):.2f} |"
                )
                print(rows[-1], " raw:", " ".join(f"{s:.2f}" for s in seconds), flush=True)
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep_db:
            admin_execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
    print(f"\n{header}\n| ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
