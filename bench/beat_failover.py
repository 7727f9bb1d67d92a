"""Beat failover: from the leader's SIGKILL to the first send by the new leader.

Run (PostgreSQL on 127.0.0.1:5432 as ``postgres``, Redis on 127.0.0.1:6379)::

    .venv/bin/python bench/beat_failover.py --failover-seconds 10 3 --repeat 5

(or ``bench/beat.py --failover``, with these defaults). Setup: the database
``tsc_bench_failover`` (``--database``) is created and its public schema migrated, with
one django-celery-beat row due every second in public. For each
``beat_tenant_failover_seconds`` value, two ``celery beat`` processes of
``TenantAwareDatabaseScheduler`` run with leader election on (``tests.beat_ha_app``;
beat records each message it publishes, with its pid and the time, in Redis). Once the
leader has sent two runs it is SIGKILLed, and a beat is started in its place; the time
from the kill to the first message of another beat is one measurement. A row due every
second is sent as soon as its beat leads (the run due during the gap is caught up from
the shared ``last_run_at``), so the figure is the takeover time plus at most the wait
for the row's next due time. Reported: median, minimum and maximum, in seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCHEDULER = "tests.beat_ha_schedulers.StampingDatabaseScheduler"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failover-seconds", type=float, nargs="+", default=[10.0, 3.0])
    parser.add_argument("--repeat", type=int, default=5, help="kills per failover value")
    parser.add_argument("--database", default="tsc_bench_failover")
    return parser.parse_args(argv)


def measure(failover: float, repeat: int) -> list[float]:
    """Kill the leader ``repeat`` times; return the seconds to the new leader's first send."""
    import json

    from tests.beat_e2e_app import events
    from tests.workers import CeleryProcess

    key = f"tsc-bench:failover:{uuid.uuid4().hex[:8]}"
    env = {"TSC_HA_KEY": key, "TSC_HA_FAILOVER": str(failover), "TSC_HA_SCHEDULE": "rows"}
    beats: list[CeleryProcess] = []

    def start_beat() -> None:
        args = ["-A", "tests.beat_ha_app", "beat", "-S", SCHEDULER, "-l", "WARNING"]
        beats.append(CeleryProcess(args, env, ready="").start())

    def sends() -> list[dict[str, Any]]:
        return [json.loads(item) for item in events().lrange(f"{key}:sent", 0, -1)]

    def wait_for_send(after: float, excluded: set[int], count: int = 1) -> dict[str, Any]:
        deadline = time.monotonic() + 10 * failover + 60
        while time.monotonic() < deadline:
            found = [s for s in sends() if s["t"] > after and s["pid"] not in excluded]
            if len(found) >= count:
                return found[count - 1]
            time.sleep(0.02)
        raise SystemExit("no beat sent:\n" + "\n".join(b.log() for b in beats))

    seconds: list[float] = []
    killed: set[int] = set()
    try:
        start_beat()
        start_beat()
        last = wait_for_send(0, killed, count=2)
        for _ in range(repeat):
            leader = next(b for b in beats if b.process and b.process.pid == last["pid"])
            wait_for_send(last["t"], killed)  # one more run by this leader
            leader.kill()
            killed_at = time.time()
            killed.add(last["pid"])
            first = wait_for_send(killed_at, killed)
            seconds.append(first["t"] - killed_at)
            start_beat()
            last = wait_for_send(first["t"], killed)
    finally:
        for beat in beats:
            beat.stop()
        events().delete(key, f"{key}:sent")
    return seconds


def main(argv: list[str] | None = None) -> None:
    """Print the failover time for each ``--failover-seconds`` value."""
    args = parse_args(argv)
    from bench.beat import admin_execute, create_database, setup_django

    setup_django(args.database)
    print(f"Creating database {args.database}...", flush=True)
    create_database(args.database)
    try:
        from tests.beat_ha_app import TASK
        from tests.beat_helpers import add_task

        add_task("public", "failover-row", every=1, task=TASK)
        print("| beat_tenant_failover_seconds | kills | median s | min s | max s |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for failover in args.failover_seconds:
            seconds = measure(failover, args.repeat)
            print(
                f"| {failover:g} | {len(seconds)} | {statistics.median(seconds):.2f} "
                f"| {min(seconds):.2f} | {max(seconds):.2f} |",
                flush=True,
            )
    finally:
        from django.db import connections

        connections.close_all()
        admin_execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
