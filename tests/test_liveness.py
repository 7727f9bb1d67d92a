"""liveness: the heartbeat file (touched by a real ``celery beat``), and the lock holder.

The heartbeat file is tested with each of the three schedulers running as a real
``celery beat`` (``--max-interval 1``: it ticks at least every second); the lock holder
with real PostgreSQL sessions holding advisory locks (the beats' own, in
``test_beat_ha.py``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from celery import Celery
from django.conf import settings
from django.db import connection

from tenant_schemas_celery.exceptions import TenantConfigurationError
from tenant_schemas_celery.liveness import (
    LEADER_APPLICATION_NAME,
    HeartbeatFile,
    beat_leader_status,
    leader_application_name,
    leader_lock_key,
    record_leader_tick,
)
from tenant_schemas_celery.scheduler import TenantAwareScheduler
from tests.conftest import BROKERS
from tests.project.settings import BEAT
from tests.workers import CeleryProcess

SCHEDULERS = {
    "memory": "tenant_schemas_celery.scheduler.TenantAwareScheduler",
    "persistent": "tenant_schemas_celery.scheduler.TenantAwarePersistentScheduler",
    "database": "tenant_schemas_celery.db_scheduler.TenantAwareDatabaseScheduler",
}
#: beat's ``--max-interval``: the longest it sleeps between two ticks, in seconds.
MAX_INTERVAL = 1
#: The logger the heartbeat's messages go to.
BEAT_LOGGER = "celery.beat"


def mtime(path: Path) -> float:
    return path.stat().st_mtime


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def advances(path: Path, timeout: float = 5 * MAX_INTERVAL) -> bool:
    """Whether the file's modification time changes within ``timeout`` seconds."""
    before = mtime(path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if mtime(path) != before:
            return True
        time.sleep(0.05)
    return False


def stays(path: Path, seconds: float = 3 * MAX_INTERVAL) -> bool:
    """Whether the file's modification time stays the same for ``seconds``."""
    before = mtime(path)
    time.sleep(seconds)
    return mtime(path) == before


# HeartbeatFile -----------------------------------------------------------------------------


def test_touch_creates_the_file_then_moves_its_time_to_now(tmp_path: Path) -> None:
    # Given no file yet
    path = tmp_path / "beat.heartbeat"
    heartbeat = HeartbeatFile(str(path))
    # When it is touched: the file is made, empty
    heartbeat.touch()
    assert path.read_bytes() == b""
    # And when an old file is touched: its time is now, its content untouched
    path.write_bytes(b"kept")
    os.utime(path, (1_000_000, 1_000_000))
    heartbeat.touch()
    assert abs(mtime(path) - time.time()) < 5
    assert path.read_bytes() == b"kept"


def test_no_path_touches_nothing() -> None:
    HeartbeatFile(None).touch()  # no error, nothing to check but that


def test_an_io_error_is_logged_once_never_raised_and_again_after_a_success(
    tmp_path: Path, caplog: Any
) -> None:
    # Given a heartbeat file in a directory that does not exist
    path = tmp_path / "missing" / "beat.heartbeat"
    heartbeat = HeartbeatFile(str(path))
    caplog.set_level(logging.INFO, BEAT_LOGGER)
    # When it is touched three times: one error, nothing raised
    for _ in range(3):
        heartbeat.touch()
    errors = [(name, level) for name, level, _ in caplog.record_tuples]
    assert errors == [(BEAT_LOGGER, logging.ERROR)]
    assert f"beat: Cannot touch the heartbeat file {str(path)!r}: " in caplog.text
    # When the directory appears: the file is made, and that is said once
    path.parent.mkdir()
    heartbeat.touch()
    heartbeat.touch()
    assert path.exists()
    assert caplog.record_tuples[1:] == [
        (BEAT_LOGGER, logging.WARNING, f"beat: The heartbeat file {str(path)!r} is touched again.")
    ]
    # And when it fails again: logged again, once
    path.unlink()
    path.parent.rmdir()
    heartbeat.touch()
    heartbeat.touch()
    assert [level for _, level, _ in caplog.record_tuples[2:]] == [logging.ERROR]


def test_the_scheduler_touches_the_file_of_the_setting_at_every_tick(tmp_path: Path) -> None:
    # Given a scheduler of an app whose setting names a heartbeat file
    path = tmp_path / "beat.heartbeat"
    app = Celery("liveness-tests", set_as_current=False)
    app.conf.beat_tenant_heartbeat_file = str(path)
    try:
        scheduler = TenantAwareScheduler(app=app, lazy=True)
        # Then the banner names it, and the first tick makes it
        assert f"    . heartbeat -> {path}" in scheduler.info.splitlines()
        scheduler.tick()
        assert path.exists()
        # And each later tick moves its time to now
        os.utime(path, (1_000_000, 1_000_000))
        scheduler.tick()
        assert abs(mtime(path) - time.time()) < 5
    finally:
        app.close()


def test_a_setting_that_is_no_path_stops_beat_at_start() -> None:
    # Given an app whose heartbeat setting is not a path
    app = Celery("liveness-tests", set_as_current=False)
    app.conf.beat_tenant_heartbeat_file = 42
    try:
        scheduler = TenantAwareScheduler(app=app, lazy=True)
        # Then the banner (shown before the first tick) and the first tick raise, naming it
        for start in (lambda: scheduler.info, scheduler.tick):
            with pytest.raises(TenantConfigurationError, match="beat_tenant_heartbeat_file"):
                start()
    finally:
        app.close()


# A real celery beat ------------------------------------------------------------------------


@pytest.fixture(params=[
    "memory",
    "persistent",
    pytest.param("database", marks=pytest.mark.skipif(not BEAT, reason="the beat extra")),
])  # fmt: skip
def scheduler(request: Any, database: None) -> str:
    """Each scheduler class, by its path (the database one with empty beat tables)."""
    if request.param == "database":
        request.getfixturevalue("beat_db")
    return SCHEDULERS[request.param]


def beat(scheduler: str, heartbeat: Path, schedule_file: Path) -> CeleryProcess:
    """A (not yet started) ``celery beat`` of the test project, with its heartbeat file."""
    return CeleryProcess(
        ["-A", "tests.project.celery", "beat", "-S", scheduler, "-s", str(schedule_file),
         "--max-interval", str(MAX_INTERVAL), "-l", "INFO"],
        {"TSC_BROKER_URL": BROKERS["redis"], "TSC_BEAT_HEARTBEAT_FILE": str(heartbeat)},
        ready="beat: Starting...",
    )  # fmt: skip


@pytest.fixture
def running_beat(scheduler: str, tmp_path: Path) -> Iterator[tuple[CeleryProcess, Path]]:
    """A real beat of ``scheduler`` and its heartbeat file; stopped (and continued) after."""
    heartbeat = tmp_path / "beat.heartbeat"
    process = beat(scheduler, heartbeat, tmp_path / "schedule").start()
    try:
        yield process, heartbeat
    finally:
        if process.process is not None and process.process.poll() is None:
            process.process.send_signal(signal.SIGCONT)
        process.stop()


@pytest.mark.integration
def test_a_running_beat_touches_the_file_and_a_stopped_one_does_not(
    running_beat: tuple[CeleryProcess, Path],
) -> None:
    process, heartbeat = running_beat
    assert process.process is not None
    # Given a real beat: the file is made at its first tick, and named in its banner
    wait_until(heartbeat.exists, 30, process.log())
    assert f". heartbeat -> {heartbeat}" in process.log()
    # Then its time keeps moving while beat runs, tick after tick
    assert all(advances(heartbeat) for _ in range(3)), process.log()
    # When beat is frozen (SIGSTOP): its time stays, for three times the longest sleep
    process.process.send_signal(signal.SIGSTOP)
    time.sleep(0.2)  # a touch under way when the signal came has landed
    assert stays(heartbeat)
    # When it is continued: its time moves again
    process.process.send_signal(signal.SIGCONT)
    assert advances(heartbeat), process.log()
    # When beat is stopped: its time stays, and the file is left in place
    process.stop()
    assert process.process.returncode is not None
    assert stays(heartbeat)
    assert "beat raised exception" not in process.log()


@pytest.mark.integration
def test_beat_keeps_running_when_the_file_cannot_be_touched(database: None, tmp_path: Path) -> None:
    # Given a real beat whose heartbeat file is in a directory that does not exist
    heartbeat = tmp_path / "missing" / "beat.heartbeat"
    process = beat(SCHEDULERS["memory"], heartbeat, tmp_path / "schedule").start()
    try:
        message = f"beat: Cannot touch the heartbeat file {str(heartbeat)!r}"
        wait_until(lambda: message in process.log(), 30, process.log())
        # When it keeps ticking (three times the longest sleep)
        time.sleep(3 * MAX_INTERVAL)
        # Then it is still running, said it once, and touches the file once it can
        assert process.process is not None and process.process.poll() is None, process.log()
        assert process.log().count(message) == 1, process.log()
        heartbeat.parent.mkdir()
        wait_until(heartbeat.exists, 5 * MAX_INTERVAL, process.log())
        assert advances(heartbeat), process.log()
    finally:
        process.stop()
    assert "is touched again." in process.log()


# The lock holder in PostgreSQL -------------------------------------------------------------


def lock_session(application_name: str = "") -> Any:
    """A psycopg2 connection of its own (autocommit) to the tests' database."""
    db = settings.DATABASES["default"]
    session = psycopg2.connect(
        dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"], host=db["HOST"],
        port=db["PORT"], application_name=application_name,
    )  # fmt: skip
    session.autocommit = True
    return session


@pytest.mark.parametrize("key", [0, 7, 2**40 + 7, -5, -(2**63), 2**63 - 1, (3, 9), (-3, -(2**31))])
def test_status_is_the_session_holding_the_lock_of_the_key(database: None, key: Any) -> None:
    # Given nobody holds the lock of the key: no status
    assert beat_leader_status(key) is None
    session = lock_session()
    try:
        # When a leader takes it, and records a tick
        arguments = key if isinstance(key, tuple) else (key,)
        placeholders = ", ".join(["%s"] * len(arguments))
        with session.cursor() as cursor:
            cursor.execute(f"SELECT pg_advisory_lock({placeholders})", arguments)
            cursor.execute("SELECT pg_backend_pid()")
            (pid,) = cursor.fetchone()
            record_leader_tick(cursor)
        status = beat_leader_status(key)
        # Then the status is its session: its identity, and when it ticked
        assert status is not None
        assert (status.pid, status.application_name) == (pid, leader_application_name())
        assert status.last_tick is not None and status.backend_start is not None
        assert status.seconds_since_tick is not None and 0 <= status.seconds_since_tick < 5
        # And no other key's lock is taken for it
        other = (key[0], key[1] ^ 1) if isinstance(key, tuple) else key ^ 1
        assert beat_leader_status(other) is None
    finally:
        session.close()
    # And once the session is gone (its backend exits just after), nobody holds it
    wait_until(lambda: beat_leader_status(key) is None, 10, "the lock outlived its session")


def test_each_tick_moves_the_last_tick_time(database: None) -> None:
    # Given a leader's session that recorded a tick, one second ago
    session = lock_session()
    try:
        with session.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(4242)")
            record_leader_tick(cursor)
            first = beat_leader_status(4242)
            time.sleep(1.1)
            aged = beat_leader_status(4242)
            # When it records another
            record_leader_tick(cursor)
        latest = beat_leader_status(4242)
    finally:
        session.close()
    # Then the time of the last tick moved on, and its age started again
    assert first is not None and aged is not None and latest is not None
    assert first.last_tick is not None and latest.last_tick is not None
    assert aged.last_tick == first.last_tick and (aged.seconds_since_tick or 0) >= 1
    assert latest.last_tick > first.last_tick and (latest.seconds_since_tick or 0) < 1


def test_a_session_waiting_for_the_lock_is_not_its_holder(database: None) -> None:
    # Given a session holding the lock, and another one waiting for it (in a thread)
    holder, waiter = lock_session("holder"), lock_session("waiter")
    take_lock(holder, 4343)
    thread = threading.Thread(target=take_lock, args=(waiter, 4343))
    thread.start()
    try:
        wait_until(lambda: waiting_for(4343), 10, "the waiter's lock request was never seen")
        # Then the status is the holder's
        status = beat_leader_status(4343)
        assert status is not None and status.application_name == "holder"
    finally:
        holder.close()  # the waiter gets the lock, then is closed in turn
        thread.join(10)
        waiter.close()


def take_lock(session: Any, key: int) -> None:
    with session.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [key])


def waiting_for(key: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' "
            "AND NOT granted AND objid = %s",
            [key],
        )
        (count,) = cursor.fetchone()
    return bool(count)


@pytest.mark.parametrize("key", [True, 2**63, -(2**63) - 1, (1, 2**31), (1,), (1, 2, 3), 1.0])
def test_a_key_that_is_no_lock_key_is_refused(key: Any) -> None:
    with pytest.raises(ValueError, match="an advisory lock key is a bigint or two integers"):
        beat_leader_status(key)


def test_the_leader_name_is_the_prefix_host_and_pid_within_63_bytes() -> None:
    name = leader_application_name()
    assert name.startswith(f"{LEADER_APPLICATION_NAME} ")
    assert len(name.encode()) <= 63
    assert name.endswith(f":{os.getpid()}") or len(name.encode()) == 63


def test_a_lock_name_reads_the_lock_of_its_key(database: None) -> None:
    # Given a session holding the lock of the key of the name "proj"
    session = lock_session("named")
    try:
        take_lock(session, leader_lock_key("proj"))
        # Then the status of the name is that session's; another name's is None
        status = beat_leader_status("proj")
        assert status is not None and status.application_name == "named"
        assert beat_leader_status("proj2") is None
    finally:
        session.close()
