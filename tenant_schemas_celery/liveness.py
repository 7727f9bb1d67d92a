"""Is beat alive? A heartbeat file touched at every tick; the lock-holding leader, from PostgreSQL.

The schedulers touch ``beat_tenant_heartbeat_file`` (a Celery setting) at every tick
(see ``TenantAwareSchedulerMixin.tick``): a container health check tests its age.

With leader election (one beat holds a PostgreSQL advisory lock), the leader's lock
connection carries its identity as ``application_name`` (``leader_application_name()``),
and the leader runs ``record_leader_tick(cursor)`` on it at every tick: PostgreSQL's
``pg_stat_activity.query_start`` of that connection is then the time of its last tick.
``beat_leader_status(key)`` reads both, from any process, for the lock ``key``.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Union

from celery.utils.log import get_logger
from django.db import DEFAULT_DB_ALIAS, connections

__all__ = [
    "LEADER_APPLICATION_NAME",
    "HeartbeatFile",
    "LeaderStatus",
    "beat_leader_status",
    "leader_application_name",
    "leader_lock_key",
    "record_leader_tick",
]

#: Celery's beat logger, as in ``scheduler.py``.
logger = get_logger("celery.beat")

#: The start of the ``application_name`` of a beat leader's lock connection.
LEADER_APPLICATION_NAME = "tenant-schemas-celery beat"
#: PostgreSQL keeps the first 63 bytes of an ``application_name`` (``NAMEDATALEN - 1``).
_NAME_BYTES = 63

#: An advisory lock key: one ``bigint``, or two ``integer`` (as ``pg_advisory_lock`` takes).
LockKey = Union[int, tuple[int, int]]
#: ``pg_locks`` shows each 32-bit half of a key as an unsigned ``oid``.
_OID_MASK = 0xFFFFFFFF


class HeartbeatFile:
    """A file whose modification time is the time of beat's last tick.

    ``touch()`` sets it to now, creating the (empty) file if it is missing: one system
    call, nothing written, so a reader never sees a partial file. An I/O error is
    logged once (an error on the ``celery.beat`` logger), and again only after the
    file could be touched in between; it is never raised.

    Parameters:
        path(str | None): the file; None makes ``touch()`` do nothing.
    """

    def __init__(self, path: str | None) -> None:
        self.path = None if path is None else Path(path)
        self._failing = False

    def touch(self) -> None:
        """Set the file's modification time to now (create it if missing); never raise."""
        if self.path is None:
            return
        try:
            self.path.touch()
        except OSError as exc:
            if not self._failing:
                logger.error(
                    "beat: Cannot touch the heartbeat file %r: %s. Beat keeps running; "
                    "this is logged again only after the file could be touched.",
                    str(self.path),
                    exc,
                )
            self._failing = True
            return
        if self._failing:
            logger.warning("beat: The heartbeat file %r is touched again.", str(self.path))
            self._failing = False


def leader_application_name() -> str:
    """Return the ``application_name`` a beat leader sets on its lock connection.

    ``"tenant-schemas-celery beat HOST:PID"`` (this process's host name and pid),
    cut to the 63 bytes PostgreSQL keeps.
    """
    name = f"{LEADER_APPLICATION_NAME} {socket.gethostname()}:{os.getpid()}"
    return name.encode("ascii", "replace")[:_NAME_BYTES].decode("ascii")


def record_leader_tick(cursor: Any) -> None:
    """Record a tick of the beat leader: run it on the connection that holds the lock.

    One statement, which sets that session's ``application_name`` to
    ``leader_application_name()``; PostgreSQL stamps its ``query_start``, which
    ``beat_leader_status`` reads as the time of the last tick.

    Parameters:
        cursor: a DB-API cursor (psycopg 2 or 3, Django's) of the lock connection.
    """
    cursor.execute(
        "SELECT pg_catalog.set_config('application_name', %s, false)",
        [leader_application_name()],
    )


@dataclass(frozen=True)
class LeaderStatus:
    """The session that holds a beat leader's advisory lock, as PostgreSQL reports it.

    Attributes:
        pid(int): the PostgreSQL backend pid of the lock connection.
        application_name(str): the leader's identity (see ``leader_application_name``).
        client_addr(str | None): the leader's address (None: a Unix socket, or not
            visible to this role).
        backend_start(datetime | None): when the lock connection was opened.
        last_tick(datetime | None): when the leader last ran a statement on it: its
            last tick (see ``record_leader_tick``).
        seconds_since_tick(float | None): ``last_tick``'s age by PostgreSQL's clock.

    The times and the address are None unless the reading role is the leader's, or
    has ``pg_read_all_stats``; the pid and ``application_name`` are always visible.
    """

    pid: int
    application_name: str
    client_addr: str | None
    backend_start: datetime | None
    last_tick: datetime | None
    seconds_since_tick: float | None


#: The holder of one advisory lock of this database, and its session's activity.
_LEADER_SQL = (
    "SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start, a.query_start, "
    "EXTRACT(EPOCH FROM pg_catalog.clock_timestamp() - a.query_start)::float8 "
    "FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT d.oid "
    "FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()) "
    "AND l.classid = %s::oid AND l.objid = %s::oid AND l.objsubid = %s "
    "ORDER BY a.backend_start LIMIT 1"
)


def leader_lock_key(name: str | int) -> int:
    """Return the advisory lock key (a ``bigint``) of beat's leader lock named ``name``.

    An integer is the key itself; a string's key is the first 8 bytes of the SHA-256 of
    its UTF-8 encoding, read as a big-endian signed integer: the same in every process,
    on every host and Python version.

    Raises:
        ValueError: ``name`` is neither a non-empty string nor a 64-bit signed integer.

    Example:
        >>> leader_lock_key(42)
        42
        >>> leader_lock_key("proj") == leader_lock_key("proj") != leader_lock_key("proj2")
        True
    """
    if _fits(name, 64):
        return int(name)
    if not isinstance(name, str) or not name:
        raise ValueError(f"a leader lock is named by a non-empty string or a bigint, got {name!r}.")
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def beat_leader_status(key: LockKey | str, using: str = DEFAULT_DB_ALIAS) -> LeaderStatus | None:
    """Return the session holding the advisory lock ``key``, or None when none holds it.

    Parameters:
        key(str | int | tuple[int, int]): the lock key the leader passes to
            ``pg_advisory_lock``: one ``bigint``, or two ``integer``; or the lock's
            name (``beat_tenant_leader_key``, see ``leader_lock_key``).
        using(str): the Django database alias to read through, on the lock's database.
            Defaults to ``"default"``.

    Raises:
        ValueError: ``key`` is neither a ``bigint`` nor a pair of ``integer``.
    """
    columns = lock_columns(leader_lock_key(key) if isinstance(key, str) else key)
    with connections[using].cursor() as cursor:
        cursor.execute(_LEADER_SQL, columns)
        row = cursor.fetchone()
    return None if row is None else LeaderStatus(*row)


def lock_columns(key: LockKey) -> list[int]:
    """Return ``pg_locks``' ``classid``, ``objid`` and ``objsubid`` of an advisory lock key.

    Raises:
        ValueError: ``key`` is neither a ``bigint`` nor a pair of ``integer``.
    """
    if isinstance(key, tuple) and len(key) == 2 and all(_fits(part, 32) for part in key):
        return [key[0] & _OID_MASK, key[1] & _OID_MASK, 2]
    if not isinstance(key, tuple) and _fits(key, 64):
        return [(key >> 32) & _OID_MASK, key & _OID_MASK, 1]
    raise ValueError(f"an advisory lock key is a bigint or two integers, got {key!r}.")


def _fits(value: object, bits: int) -> bool:
    """Whether ``value`` is an ``int`` (not a bool) of a signed ``bits``-bit range."""
    return type(value) is int and -(1 << (bits - 1)) <= value < 1 << (bits - 1)
