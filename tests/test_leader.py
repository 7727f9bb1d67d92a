"""leader: the election's state machine (fake clock and lock session), its settings, and
the election switched off (a real scheduler: no lock connection, no statement)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.beat import Scheduler
from django.db import connection

from tenant_schemas_celery.conf import (
    beat_failover_seconds,
    beat_leader_election,
    beat_leader_key,
)
from tenant_schemas_celery.exceptions import TenantConfigurationError
from tenant_schemas_celery.leader import (
    FOLLOWER,
    LEADER,
    TAKING_OVER,
    LeaderElection,
    Timing,
    scheduler_election,
)
from tenant_schemas_celery.liveness import LEADER_APPLICATION_NAME, leader_lock_key
from tenant_schemas_celery.scheduler import (
    TenantAwareScheduleEntry,
    TenantAwareScheduler,
    TenantAwareSchedulerMixin,
)
from tests.beat_helpers import make_due


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeSession:
    """A lock session: ``free`` says whether the lock can be taken; ``lost`` ends it."""

    def __init__(self, world: World) -> None:
        self.world, self.holds, self.closed = world, False, False

    def try_lock(self) -> bool:
        if self.world.error:
            raise self.world.error
        self.holds = self.holds or self.world.free
        self.world.free = self.world.free and not self.holds
        return self.holds

    def prove(self) -> bool:
        self.world.proofs += 1
        if self.world.error:
            raise self.world.error
        return self.holds and not self.world.lost

    def close(self) -> None:
        self.closed = True


class World:
    def __init__(self) -> None:
        self.free, self.lost, self.proofs = True, False, 0
        self.error: Exception | None = None
        self.sessions: list[FakeSession] = []

    def open(self) -> FakeSession:
        session = FakeSession(self)
        self.sessions.append(session)
        return session


@pytest.fixture
def world() -> World:
    return World()


def election(world: World, clock: Clock, failover: float = 10) -> LeaderElection:
    return LeaderElection(world.open, Timing(failover), "lock 'x'", clock)


def test_timing_follows_failover_seconds() -> None:
    timing = Timing(10)
    assert (timing.try_interval, timing.proof_max_age, timing.grace) == (2, 1, 1)
    assert (timing.idle_session_timeout, timing.network_timeout, timing.backoff) == (5, 3, 10)
    # A follower's attempt, the grace and the server's idle timeout fit in the failover time
    assert timing.idle_session_timeout + timing.try_interval + timing.grace < timing.failover
    assert Timing(2).proof_max_age == 0.2


def test_a_follower_takes_the_free_lock_and_leads_after_the_grace(
    world: World, caplog: Any
) -> None:
    clock = Clock()
    caplog.set_level(logging.INFO, logger="celery.beat")
    chosen = election(world, clock)
    # Given the lock is free: the first step takes it, but the beat sends nothing yet
    assert chosen.step() is False and chosen.role == TAKING_OVER
    assert not chosen.may_send() and not chosen.leading
    assert chosen.max_delay() == pytest.approx(1)
    # When the grace is over, the next step proves the lock and makes it the leader
    clock.now += 1
    assert chosen.step() is True and chosen.role == LEADER and chosen.may_send()
    assert chosen.step() is False  # leading goes on: no second takeover
    assert chosen.max_delay() == 2
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "beat: Leader election on",
        "beat: Took the leader lock",
        "beat: This beat is now the leader",
    ]


def test_a_follower_tries_every_try_interval_and_sends_nothing(world: World) -> None:
    clock = Clock()
    world.free = False
    chosen = election(world, clock)
    chosen.step()
    assert chosen.role == FOLLOWER and not chosen.may_send()
    assert chosen.max_delay() == 2
    # Not tried again before try_interval, tried again after it: the lock is free then
    world.free = True
    clock.now += 1.9
    chosen.step()
    assert chosen.role == FOLLOWER and chosen.max_delay() == pytest.approx(0.1)
    clock.now += 0.1
    chosen.step()
    assert chosen.role == TAKING_OVER and len(world.sessions) == 1


def test_the_leader_proves_before_sending_when_its_proof_is_old(world: World) -> None:
    clock = Clock()
    chosen = election(world, clock)
    chosen.step()
    clock.now += 1
    chosen.step()
    proofs = world.proofs
    # A proof at most proof_max_age old: sending needs no other statement
    clock.now += 1
    assert chosen.may_send() and world.proofs == proofs
    # An older one: proven again first
    clock.now += 0.5
    assert chosen.may_send() and world.proofs == proofs + 1


@pytest.mark.parametrize("failure", ["lost", "error"])
def test_a_leader_that_cannot_prove_its_lock_stops_and_backs_off(
    world: World, failure: str, caplog: Any
) -> None:
    clock = Clock()
    chosen = election(world, clock)
    chosen.step()
    clock.now += 1
    chosen.step()
    # When the lock session ends (terminated) or its statement fails (cut off)
    if failure == "lost":
        world.lost = True
    else:
        world.error = OSError("timeout expired")
    clock.now += 5
    # Then it sends nothing, closes the session (the lock goes), and says why
    assert not chosen.may_send() and chosen.role == FOLLOWER
    assert world.sessions[0].closed
    reason = "no longer holds it" if failure == "lost" else "timeout expired"
    assert "beat: Lost the leader lock (lock 'x') while leader" in caplog.text
    assert reason in caplog.text
    # And it tries again only after the failover time, on a new session
    world.error, world.free = None, True
    clock.now += 9.9
    chosen.step()
    assert chosen.role == FOLLOWER and len(world.sessions) == 1
    clock.now += 0.1
    chosen.step()
    assert chosen.role == TAKING_OVER and len(world.sessions) == 2


def test_a_failed_attempt_is_logged_once_and_retried_on_a_new_session(
    world: World, caplog: Any
) -> None:
    clock = Clock()
    world.error = ConnectionError("connection refused")
    chosen = election(world, clock)
    for _ in range(3):
        chosen.step()
        clock.now += 2
    assert caplog.text.count("Cannot try the leader lock") == 1
    assert all(session.closed for session in world.sessions) and len(world.sessions) == 3
    world.error = None
    chosen.step()
    assert chosen.role == TAKING_OVER


def test_close_releases_the_lock(world: World, caplog: Any) -> None:
    clock = Clock()
    chosen = election(world, clock)
    chosen.step()
    chosen.close()
    assert world.sessions[0].closed and chosen.role == FOLLOWER
    assert "Leaving the leader lock" in caplog.text


# Settings and the lock key ------------------------------------------------------------------


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("leader-tests", set_as_current=False)
    yield app
    app.close()


def test_settings_defaults(app: Celery) -> None:
    assert beat_leader_election(app) is False
    assert beat_leader_key(app) == "leader-tests"
    assert beat_failover_seconds(app) == 10


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("beat_tenant_leader_election", "yes"),
        ("beat_tenant_leader_election", 1),
        ("beat_tenant_leader_key", ""),
        ("beat_tenant_leader_key", 2**63),
        ("beat_tenant_leader_key", 1.5),
        ("beat_tenant_failover_seconds", 0),
        ("beat_tenant_failover_seconds", -3),
        ("beat_tenant_failover_seconds", "10"),
        ("beat_tenant_failover_seconds", True),
        ("beat_tenant_failover_seconds", float("nan")),
        ("beat_tenant_failover_seconds", float("inf")),
    ],
)
def test_a_malformed_setting_names_itself(app: Celery, setting: str, value: Any) -> None:
    app.conf[setting] = value
    read = {
        "beat_tenant_leader_election": beat_leader_election,
        "beat_tenant_leader_key": beat_leader_key,
        "beat_tenant_failover_seconds": beat_failover_seconds,
    }[setting]
    with pytest.raises(TenantConfigurationError, match=setting):
        read(app)


def test_an_app_without_a_main_name_needs_the_key_setting() -> None:
    app = Celery(set_as_current=False)
    try:
        with pytest.raises(TenantConfigurationError, match="beat_tenant_leader_key"):
            beat_leader_key(app)
        app.conf.beat_tenant_leader_key = 7
        assert beat_leader_key(app) == 7
    finally:
        app.close()


def test_the_lock_key_is_a_stable_64_bit_hash_of_the_name() -> None:
    # The first 8 bytes of SHA-256, big-endian, signed: pinned, so that beats of every
    # release and host agree
    assert leader_lock_key("proj") == -1784548903433105356
    assert leader_lock_key(-5) == -5 and leader_lock_key(2**63 - 1) == 2**63 - 1
    for bad in ("", 2**63, True, None):
        with pytest.raises(ValueError, match="leader lock"):
            leader_lock_key(bad)  # type: ignore[arg-type]


def test_election_over_redbeat_is_refused(app: Celery) -> None:
    from tests.beat_redbeat_scheduler import TenantRedBeatScheduler

    app.conf.beat_tenant_leader_election = True
    scheduler = TenantRedBeatScheduler.__new__(TenantRedBeatScheduler)
    scheduler.app = app
    with pytest.raises(TenantConfigurationError, match=r"RedBeatScheduler.*redbeat_lock_key"):
        scheduler_election(scheduler)


def test_with_election_on_the_banner_names_the_lock(app: Celery) -> None:
    app.conf.update(beat_tenant_leader_election=True, beat_tenant_leader_key="proj")
    scheduler = TenantAwareScheduler(app=app, lazy=True)
    assert f". leader election -> lock 'proj', key {leader_lock_key('proj')}" in scheduler.info


def test_with_election_off_a_beat_takes_no_lock_and_opens_no_session(database: None) -> None:
    # Given a scheduler of an app with election off (the default), due entries sent
    app = Celery("leader-off", set_as_current=False)
    app.conf.update(broker_url="memory://", beat_schedule={})
    try:
        scheduler = TenantAwareScheduler(app=app)
        assert scheduler.leader_election is None and scheduler.may_send()
        scheduler.tick()
        scheduler.close()
    finally:
        app.close()
    # Then no session of this database is a beat's lock session, and no advisory lock is held
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE %s",
            [f"{LEADER_APPLICATION_NAME}%"],
        )
        assert cursor.fetchone()[0] == 0
        cursor.execute(
            "SELECT count(*) FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_database d "
            "ON d.oid = l.database WHERE l.locktype = 'advisory' AND d.datname = current_database()"
        )
        assert cursor.fetchone()[0] == 0


class SyncCounting(Scheduler):
    """Celery's scheduler, counting its syncs and the messages sent to schemas."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.synced, self.sent = 0, []
        super().__init__(*args, **kwargs)

    def sync(self) -> None:
        self.synced += 1

    def apply_async(self, entry: Any, producer: Any = None, **kwargs: Any) -> None:
        self.sent.append(entry.name)


class RecordingScheduler(TenantAwareSchedulerMixin, SyncCounting):
    """The mixin over ``SyncCounting``."""

    Entry = TenantAwareScheduleEntry


def test_a_follower_touches_the_heartbeat_sends_nothing_and_writes_nothing(
    tmp_path: Any, world: World
) -> None:
    # Given a beat under leader election whose lock another beat holds, with a due entry
    app = Celery("leader-follower", set_as_current=False)
    heartbeat = tmp_path / "beat.heartbeat"
    app.conf.update(
        broker_url="memory://",
        beat_tenant_leader_election=True,
        beat_tenant_heartbeat_file=str(heartbeat),
        beat_schedule={"due": {"task": "t", "schedule": 1, "tenant_schemas": ["public"]}},
    )
    world.free = False
    try:
        scheduler = RecordingScheduler(app=app)
        clock = Clock()
        scheduler.__dict__["leader_election"] = LeaderElection(world.open, Timing(10), clock=clock)
        make_due(scheduler)
        # When it ticks, the entry being due
        scheduler.tick()
        scheduler.sync()
        # Then it touched the heartbeat file, sent nothing, and synced nothing
        assert heartbeat.exists() and scheduler.leader_election.role == FOLLOWER
        assert scheduler.sent == [] and scheduler.synced == 0
        # And once it leads, it sends the entries that come due, and syncs
        world.free = True
        clock.now += 2
        scheduler.tick()
        clock.now += 1
        scheduler.tick()
        make_due(scheduler)
        scheduler.tick()
        scheduler.sync()
        assert scheduler.sent == ["due@public"] and scheduler.synced >= 1
    finally:
        app.close()


def test_a_malformed_election_setting_stops_beat_at_its_banner(app: Celery) -> None:
    # Given election on with a failover time that is no positive number
    app.conf.update(beat_tenant_leader_election=True, beat_tenant_failover_seconds=0)
    scheduler = TenantAwareScheduler(app=app, lazy=True)
    # Then the banner, shown before the first tick, raises, naming the setting
    with pytest.raises(TenantConfigurationError, match="beat_tenant_failover_seconds"):
        scheduler.info  # noqa: B018
