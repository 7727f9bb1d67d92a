"""Beat high availability, with real processes: several ``celery beat`` and a worker.

Every beat runs with leader election on (``tests.beat_ha_app``, failover 3 s); beats are
SIGKILLed, or their lock session terminated, while they lead. Beat stamps each message
with the run it belongs to and the pid that sent it, the worker records each run: runs
are counted from those records, never against the wall clock.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from tenant_schemas_celery.liveness import beat_leader_status
from tests.beat_e2e_app import events
from tests.beat_ha_app import INTERVAL, TASK
from tests.beat_helpers import add_task
from tests.conftest import BROKERS
from tests.test_beat_e2e import Record, recorded
from tests.workers import CeleryProcess, worker

pytestmark = pytest.mark.integration
SCHEDULER = "tests.beat_ha_schedulers.StampingScheduler"
PERSISTENT_SCHEDULER = "tests.beat_ha_schedulers.StampingPersistentScheduler"
DB_SCHEDULER = "tests.beat_ha_schedulers.StampingDatabaseScheduler"
FAILOVER = 3.0
KILLS = 2


def _identity(record: Record) -> tuple[str, float]:
    return record["entry"], record["base"]


class Cluster:
    """Beats (``celery beat -S scheduler``) recording under ``key``, and one worker."""

    def __init__(self, key: str, scheduler: str, env: dict[str, str]) -> None:
        self.key, self.scheduler, self.env = key, scheduler, env
        self.directory = Path(tempfile.mkdtemp(prefix="tsc-beat-ha-"))
        self.beats: list[CeleryProcess] = []

    def beat(self) -> CeleryProcess:
        # Each beat has a schedule file of its own (the persistent scheduler's shelve)
        schedule_file = self.directory / f"beat-{len(self.beats)}"
        args = ["-A", "tests.beat_ha_app", "beat", "-S", self.scheduler, "-l", "INFO"]
        process = CeleryProcess(
            [*args, "-s", str(schedule_file)],
            {"TSC_BROKER_URL": BROKERS["redis"], **self.env},
            ready="beat: Starting...",
        )
        self.beats.append(process)
        return process.start()

    def by_pid(self, pid: int) -> CeleryProcess:
        return next(b for b in self.beats if b.process is not None and b.process.pid == pid)

    def logs(self) -> str:
        return "\n=====\n".join(b.log() for b in self.beats)

    def sent(self) -> list[Record]:
        return sorted(recorded(f"{self.key}:sent"), key=lambda r: r["t"])

    def wait_for(self, condition: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.2)

    def wait_for_sends(self, count: int, excluded: set[int]) -> int:
        """Wait until one beat not in ``excluded`` sent ``count`` runs; return its pid."""

        def senders() -> Counter[int]:
            return Counter(r["pid"] for r in self.sent() if r["pid"] not in excluded)

        self.wait_for(lambda: max(senders().values(), default=0) >= count)
        return senders().most_common(1)[0][0]

    def stop_and_drain(self) -> tuple[list[Record], list[Record]]:
        """Stop every beat; return the runs and the messages sent, once all have run."""
        for beat in self.beats:
            beat.stop()
        self.wait_for(lambda: len(recorded(self.key)) >= len(recorded(f"{self.key}:sent")))
        return recorded(self.key), self.sent()


@contextmanager
def cluster(scheduler: str, schedule: str = "static", beats: int = 3) -> Iterator[Cluster]:
    """``beats`` beats and a worker, stopped (killed at worst) by PID afterwards."""
    key = f"tsc-tests:beat-ha:{uuid.uuid4().hex[:8]}"
    env = {"TSC_HA_KEY": key, "TSC_HA_FAILOVER": str(FAILOVER), "TSC_HA_SCHEDULE": schedule}
    group = Cluster(key, scheduler, env)
    with ExitStack() as stack:
        stack.callback(events().delete, key, f"{key}:sent")
        stack.callback(shutil.rmtree, group.directory, True)
        consumer = worker(BROKERS["redis"], env=env, extra=("-I", "tests.beat_ha_app"))
        stack.callback(consumer.stop)
        consumer.start()
        stack.callback(lambda: [beat.stop() for beat in group.beats])
        for _ in range(beats):
            group.beat()
        yield group


def assert_each_run_sent_once(runs: list[Record], sent: list[Record]) -> None:
    """No run of an entry was sent twice (by one beat or two), and each message ran once."""
    sent_counts = Counter(map(_identity, sent))
    assert max(sent_counts.values(), default=1) == 1, sent_counts.most_common(3)
    assert Counter(map(_identity, runs)) == sent_counts


def assert_runs_apart(sent: list[Record]) -> None:
    """Consecutive runs of each entry, whichever beat sent them, are an interval apart."""
    for entry in {r["entry"] for r in sent}:
        times = [r["t"] for r in sent if r["entry"] == entry]
        gaps = [later - earlier for earlier, later in zip(times, times[1:])]
        assert all(gap > INTERVAL / 2 for gap in gaps), (entry, gaps)


def assert_row_runs_chain(sent: list[Record]) -> None:
    """Each run of a row is advanced from the run sent before it (shared ``last_run_at``):
    none sent twice, none lost across a change of leader."""
    for entry in {r["entry"] for r in sent}:
        runs = [r for r in sent if r["entry"] == entry]
        breaks = [(a, b) for a, b in zip(runs, runs[1:]) if b["base"] != a["next"]]
        assert not breaks, breaks


def kill_leaders(group: Cluster, kills: int) -> list[int]:
    """SIGKILL the sending beat ``kills`` times (starting a beat in its place each time),
    once it sent 2 runs; return the pids killed, once a survivor sent 2 runs after the last.
    """
    killed: list[int] = []
    for _ in range(kills):
        leader = group.wait_for_sends(2, set(killed))
        group.by_pid(leader).kill()
        killed.append(leader)
        group.beat()
    group.wait_for_sends(2, set(killed))
    return killed


@pytest.mark.parametrize(
    ("scheduler", "schedule"),
    [(SCHEDULER, "static"), (PERSISTENT_SCHEDULER, "static"), (DB_SCHEDULER, "rows")],
    ids=["code", "shelve", "rows"],
)
@pytest.mark.usefixtures("beat_db")
def test_one_beat_of_three_sends_while_leaders_are_killed(scheduler: str, schedule: str) -> None:
    # Given 3 beats with leader election (an entry due every second), and a worker
    if schedule == "rows":
        add_task("public", "ha-row", every=1, task=TASK)
    with cluster(scheduler, schedule) as group:
        # When the beat that sends is SIGKILLed, twice (another beat started each time)
        killed = kill_leaders(group, KILLS)
        runs, sent = group.stop_and_drain()
        logs = group.logs()
    # Then each run was sent once and ran once, whichever beat sent it
    assert_each_run_sent_once(runs, sent)
    assert_runs_apart(sent)
    # And a killed beat never sent after another one did: one leader at a time
    pids = [r["pid"] for r in sent]
    senders = [pid for i, pid in enumerate(pids) if i == 0 or pids[i - 1] != pid]
    assert senders[: KILLS + 1] == [*killed, senders[KILLS]] and len(set(senders)) == len(senders)
    # And each change of leader was logged
    assert logs.count("This beat is now the leader") >= KILLS + 1
    if schedule == "rows":
        # And the rows' shared last_run_at chains the runs across leaders: none lost, none twice
        assert_row_runs_chain(sent)


@pytest.mark.usefixtures("beat_db")
def test_a_leader_whose_lock_session_is_terminated_stops_and_another_takes_over() -> None:
    # Given 2 beats of the database scheduler, with a row due every second
    add_task("public", "ha-row", every=1, task=TASK)
    with cluster(DB_SCHEDULER, "rows", beats=2) as group:
        leader = group.wait_for_sends(2, set())
        status = beat_leader_status(group.key)
        assert status is not None and status.application_name.endswith(f":{leader}")
        # When its lock session is terminated while its process lives
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [status.pid])
        terminated = time.time()
        # Then the other beat takes over, and the old leader still runs, as a follower
        successor = group.wait_for_sends(2, {leader})
        old = group.by_pid(leader)
        assert old.process is not None and old.process.poll() is None
        runs, sent = group.stop_and_drain()
    assert "Lost the leader lock" in old.log(), old.log()
    assert all(r["pid"] == successor for r in sent if r["t"] > terminated + FAILOVER)
    assert_each_run_sent_once(runs, sent)
    assert_row_runs_chain(sent)


@pytest.mark.usefixtures("beat_db")
def test_a_frozen_leader_loses_the_lock_and_sends_nothing_once_it_thaws() -> None:
    # Given 2 beats of the in-memory scheduler
    with cluster(SCHEDULER, beats=2) as group:
        leader = group.wait_for_sends(2, set())
        old = group.by_pid(leader)
        assert old.process is not None
        # When the leader is frozen (as if cut off: its connections stay open, silent)
        old.process.send_signal(signal.SIGSTOP)
        frozen = time.time()
        try:
            # Then PostgreSQL ends its silent lock session, and the other beat takes over
            successor = group.wait_for_sends(2, {leader})
        finally:
            old.process.send_signal(signal.SIGCONT)
        # And once it thaws, it finds out it lost the lock before sending anything
        group.wait_for(lambda: "Lost the leader lock" in old.log())
        group.wait_for_sends(len([r for r in group.sent() if r["pid"] == successor]) + 2, {leader})
        runs, sent = group.stop_and_drain()
    assert all(r["pid"] == successor for r in sent if r["t"] > frozen)
    assert_each_run_sent_once(runs, sent)
    assert_runs_apart(sent)
