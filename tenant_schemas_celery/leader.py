"""Beat high availability: of any number of beats, the one holding a PostgreSQL advisory lock sends.

With ``beat_tenant_leader_election`` on, each beat opens a connection of its own, the
*lock connection* (never the one its reads and writes use), and tries
``pg_try_advisory_lock`` on it. The beat whose session holds the lock is the leader; the
others are followers: they keep ticking (their schedule stays loaded and current) and
send nothing. PostgreSQL frees the lock when the leader's session ends: at once when its
process dies (its socket closes) or it is terminated (``pg_terminate_backend``), and
after ``idle_session_timeout`` (set on the lock connection) when its host is cut off.

The intervals follow ``beat_tenant_failover_seconds`` (``f``, see ``Timing``): a
follower tries the lock every ``f/5`` seconds; a new leader waits ``min(1, f/10)``
seconds before its first send; a leader sends only within that long of a proof that its
session still holds the lock (one statement on the lock connection, also recording its
tick, see ``liveness.record_leader_tick``), so the old leader has stopped before a new
one can start. ``LeaderElection`` is that state machine (pure logic, clock injected);
``PostgresLockSession`` its lock connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from celery.utils.log import get_logger
from django.db import connections

from .conf import beat_failover_seconds, beat_leader_election, beat_leader_key, tenant_db_alias
from .exceptions import TenantConfigurationError
from .liveness import leader_application_name, leader_lock_key, lock_columns, record_leader_tick

__all__ = [
    "FOLLOWER",
    "LEADER",
    "TAKING_OVER",
    "LeaderElection",
    "LockSession",
    "PostgresLockSession",
    "Timing",
    "scheduler_election",
]

#: Celery's beat logger, as in ``scheduler.py``.
logger = get_logger("celery.beat")

#: The roles of a beat under leader election.
FOLLOWER, TAKING_OVER, LEADER = "follower", "taking over", "leader"

#: Whether this session holds the advisory lock of a ``bigint`` key (its pg_locks columns).
_HOLDS_LOCK_SQL = (
    "SELECT EXISTS (SELECT FROM pg_catalog.pg_locks WHERE locktype = 'advisory' "
    "AND pid = pg_catalog.pg_backend_pid() AND granted "
    "AND classid = %s::oid AND objid = %s::oid AND objsubid = %s)"
)
#: The lock connection's timeouts (ms); ``idle_session_timeout`` exists from PostgreSQL 14 on.
_TIMEOUTS_SQL = (
    "SELECT pg_catalog.set_config('statement_timeout', %s, false), "
    "CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 140000 "
    "THEN pg_catalog.set_config('idle_session_timeout', %s, false) END"
)


@dataclass(frozen=True)
class Timing:
    """The election's intervals, in seconds, derived from ``failover`` (``f``).

    Attributes:
        failover(float): ``beat_tenant_failover_seconds``.
    """

    failover: float

    @property
    def try_interval(self) -> float:
        """``f/5``: between a follower's lock attempts; the longest a beat sleeps."""
        return self.failover / 5

    @property
    def proof_max_age(self) -> float:
        """``min(1, f/10)``: a leader sends only this long after its last proof."""
        return min(1.0, self.failover / 10)

    @property
    def grace(self) -> float:
        """A new leader's wait, after taking the lock, before it sends (``proof_max_age``)."""
        return self.proof_max_age

    @property
    def idle_session_timeout(self) -> float:
        """``f/2``: PostgreSQL ends a lock session silent that long (a cut-off or frozen
        leader's; also a leader's whose tick lasts longer)."""
        return self.failover / 2

    @property
    def network_timeout(self) -> float:
        """``3f/10``: the lock connection's connect, statement and TCP timeouts."""
        return self.failover * 3 / 10

    @property
    def backoff(self) -> float:
        """``f``: a leader that lost the lock waits that long before trying again."""
        return self.failover


class LockSession(Protocol):
    """A session that can hold the leader lock (see ``PostgresLockSession``)."""

    def try_lock(self) -> bool:
        """Take the lock if it is free, without waiting; return whether this session holds it."""

    def prove(self) -> bool:
        """Record a leader's tick; return whether this session still holds the lock."""

    def close(self) -> None:
        """End the session (releasing the lock); never raise."""


class LeaderElection:
    """Which role this beat has, and when it may send.

    Parameters:
        open_session(Callable[[], LockSession]): opens a lock session (connecting may
            wait up to ``timing.network_timeout``).
        timing(Timing): the intervals.
        lock(str): how the lock is named in log lines.
        clock(Callable[[], float]): monotonic seconds (``time.monotonic`` by default).

    Any exception of the session (a database error, a lost connection) counts as not
    holding the lock: the session is closed, and a new one opened at the next attempt.
    """

    def __init__(
        self,
        open_session: Callable[[], LockSession],
        timing: Timing,
        lock: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.open_session = open_session
        self.timing = timing
        self.lock = lock
        self.clock = clock
        self.role = FOLLOWER
        self.session: LockSession | None = None
        self.next_try = -float("inf")
        self.leading_at = float("inf")  # TAKING_OVER: when sending may start
        self.last_proof = -float("inf")  # LEADER: clock time before the last proof
        self._started = False
        self._failing = False  # the last attempt failed on an error (logged once)

    @property
    def leading(self) -> bool:
        """Whether this beat is the leader (it sends, and writes bookkeeping)."""
        return self.role == LEADER

    def step(self) -> bool:
        """Advance the role at the start of a tick; return True when this beat just became
        the leader (its scheduler catches up then, before the tick's sends).

        A follower tries the lock when its attempt is due; one taking over becomes the
        leader once its grace is over and a proof succeeds; a leader proves (and records
        its tick) at every tick.
        """
        now = self.clock()
        if not self._started:
            self._started = True
            logger.info(
                "beat: Leader election on (%s): following until this beat holds it.", self.lock
            )
        if self.role == FOLLOWER and now >= self.next_try:
            self._try_lock(now)
        if self.role == TAKING_OVER and now >= self.leading_at:
            if self._prove(now):
                self.role = LEADER
                logger.warning(
                    "beat: This beat is now the leader (%s): it sends due tasks.", self.lock
                )
                return True
        elif self.role == LEADER:
            self._prove(now)
        return False

    def may_send(self) -> bool:
        """Return whether this beat may send now: it leads, with a proof at most
        ``proof_max_age`` old (proving again first when it is older).
        """
        if self.role != LEADER:
            return False
        now = self.clock()
        return now - self.last_proof <= self.timing.proof_max_age or self._prove(now)

    def max_delay(self) -> float:
        """Return the longest beat may sleep: until the next attempt, the end of the grace,
        or the leader's next proof (``try_interval``); at least 10 ms.
        """
        now = self.clock()
        if self.role == FOLLOWER:
            until = self.next_try - now
        elif self.role == TAKING_OVER:
            until = self.leading_at - now
        else:
            until = self.timing.try_interval
        return max(min(until, self.timing.try_interval), 0.01)

    def close(self) -> None:
        """End the lock session (a leader's lock is released); the role becomes follower."""
        if self.role != FOLLOWER:
            logger.warning("beat: Leaving the leader lock (%s): beat stops.", self.lock)
        self.role = FOLLOWER
        self._close_session()

    def _try_lock(self, now: float) -> None:
        self.next_try = now + self.timing.try_interval
        try:
            if self.session is None:
                self.session = self.open_session()
            taken = self.session.try_lock()
        except Exception as exc:
            if not self._failing:
                logger.warning(
                    "beat: Cannot try the leader lock (%s): %r; trying again every %.1f s.",
                    self.lock,
                    exc,
                    self.timing.try_interval,
                )
            self._failing = True
            self._close_session()
            return
        self._failing = False
        if taken:
            self.role = TAKING_OVER
            self.leading_at = self.clock() + self.timing.grace
            logger.info(
                "beat: Took the leader lock (%s); sending from %.1f s on.",
                self.lock,
                self.timing.grace,
            )

    def _prove(self, now: float) -> bool:
        assert self.session is not None
        try:
            held = self.session.prove()
            reason = "its session no longer holds it"
        except Exception as exc:
            held, reason = False, f"{exc!r}".strip()
        if held:
            self.last_proof = now
            return True
        was = self.role
        self.role = FOLLOWER
        self.next_try = now + self.timing.backoff
        self._close_session()
        logger.warning(
            "beat: Lost the leader lock (%s) while %s: %s. Following; trying again in %.1f s.",
            self.lock,
            was,
            reason,
            self.timing.backoff,
        )
        return False

    def _close_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.close()


class PostgresLockSession:
    """A lock connection of its own to PostgreSQL, holding the advisory lock ``key``.

    Made from the settings of the Django database ``alias`` (its driver, psycopg 2 or 3,
    with Django's connection parameters, never a pool), in autocommit, with
    ``application_name`` ``leader_application_name()``, a connect timeout, TCP keepalives
    and ``tcp_user_timeout`` of ``timing.network_timeout``, that ``statement_timeout``, and
    ``idle_session_timeout`` of ``timing.idle_session_timeout`` (PostgreSQL 14+).

    Parameters:
        alias(str): the Django database alias (the database of the tenant table).
        key(int): the lock's ``bigint`` key (see ``liveness.leader_lock_key``).
        timing(Timing): the timeouts.
    """

    def __init__(self, alias: str, key: int, timing: Timing) -> None:
        self.key = key
        self.columns = lock_columns(key)
        self.connection = self._connect(alias, timing)

    @staticmethod
    def _connect(alias: str, timing: Timing) -> Any:
        wrapper = connections.create_connection(alias)
        network = max(timing.network_timeout, 1.0)
        params = {
            **wrapper.get_connection_params(),
            "application_name": leader_application_name(),
            "connect_timeout": max(int(network), 2),  # libpq: whole seconds, at least 2
            "keepalives": 1,
            "keepalives_idle": max(int(network / 3), 1),
            "keepalives_interval": max(int(network / 3), 1),
            "keepalives_count": 3,
            "tcp_user_timeout": int(network * 1000),
        }
        connection = wrapper.Database.connect(**params)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(
                    _TIMEOUTS_SQL,
                    [f"{int(network * 1000)}ms", f"{int(timing.idle_session_timeout * 1000)}ms"],
                )
        except Exception:
            connection.close()
            raise
        return connection

    def try_lock(self) -> bool:
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT pg_catalog.pg_try_advisory_lock(%s)", [self.key])
            return bool(cursor.fetchone()[0])

    def prove(self) -> bool:
        with self.connection.cursor() as cursor:
            record_leader_tick(cursor)
            cursor.execute(_HOLDS_LOCK_SQL, self.columns)
            return bool(cursor.fetchone()[0])

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception as exc:  # a connection already lost
            logger.debug("beat: Closing the lock connection: %r", exc)


def scheduler_election(scheduler: Any) -> LeaderElection | None:
    """Return the election of a beat scheduler's process, or None when it is off.

    Read from its app's settings: ``beat_tenant_leader_election``,
    ``beat_tenant_leader_key`` and ``beat_tenant_failover_seconds``; the lock connection
    goes to django-tenants' ``TENANT_DB_ALIAS`` database.

    Raises:
        TenantConfigurationError: a setting is malformed, or election is on over
            celery-redbeat's ``RedBeatScheduler``, which takes a Redis lock of its own.
    """
    app = scheduler.app
    if not beat_leader_election(app):
        return None
    if any(cls.__module__.split(".")[0] == "redbeat" for cls in type(scheduler).__mro__):
        raise TenantConfigurationError(
            "the beat_tenant_leader_election setting is on, but this scheduler is based on "
            "celery-redbeat's RedBeatScheduler, which elects its own leader with a Redis lock "
            "(redbeat_lock_key): turn one of them off."
        )
    name = beat_leader_key(app)
    key = leader_lock_key(name)
    timing = Timing(beat_failover_seconds(app))
    alias = tenant_db_alias()
    return LeaderElection(
        lambda: PostgresLockSession(alias, key, timing), timing, f"lock {name!r}, key {key}"
    )
