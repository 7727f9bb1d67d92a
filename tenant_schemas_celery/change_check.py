"""When ``TenantAwareDatabaseScheduler`` looks for changed rows, and what the last look found.

A look (a *check*) reads one digest of every schema's signature (see
``beat_sql.read_signatures``). When the digest is the one the schedule reflects,
nothing changed; else the signatures are compared with those the schedule was read
with, and the schemas whose signature differs (or that came or went) are read again
at the next reload: a ``PendingReload``. Every ``full_read_interval`` seconds every
schema is read again instead, whatever the signatures say.

In the beat loop there is at most one check per tick: at the first tick after a
sleep, and during a burst of due entries (ticks that sent, one after the other) at
most every ``check_interval`` seconds. A read of ``schedule`` outside the loop always
checks.

Pure logic: no database, the clock injected (``time.monotonic`` by default).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["ChangeCheck", "PendingReload", "Signature", "stale_schemas"]

#: What tells a schema's rows changed: the oids of its change marker and task tables,
#: and their activity counters.
Signature = tuple[int, int, int, int]


@dataclass(frozen=True)
class PendingReload:
    """The schemas the next reload reads, and the check it answers.

    Attributes:
        signatures: the signature of every schema of the schedule (public and every
            tenant with beat tables), in schedule order.
        stale: the schemas to read again (those gone are dropped, not read).
        digest: the digest of ``signatures``; the schedule reflects it once reloaded.
        full: every schema is read (the first read, and every ``full_read_interval``).
    """

    signatures: Mapping[str, Signature]
    stale: frozenset[str]
    digest: str
    full: bool = False

    @classmethod
    def every_schema(cls, digest: str, signatures: Mapping[str, Signature]) -> PendingReload:
        """Return the full reload: every schema of ``signatures`` is read."""
        return cls(signatures, frozenset(signatures), digest, full=True)

    @property
    def reading(self) -> list[str]:
        """The schemas read, in schedule order."""
        return [name for name in self.signatures if name in self.stale]


def stale_schemas(
    signatures: Mapping[str, Signature], known: Mapping[str, Signature]
) -> frozenset[str]:
    """Return the schemas whose signature is not the ``known`` one, and those gone.

    Example:
        >>> sorted(stale_schemas({"a": (1, 2, 3, 4), "b": (1, 2, 3, 5)},
        ...                      {"a": (1, 2, 3, 4), "b": (1, 2, 3, 4), "c": (1, 2, 3, 4)}))
        ['b', 'c']
    """
    changed = {name for name, signature in signatures.items() if known.get(name) != signature}
    return frozenset(changed | (known.keys() - signatures.keys()))


class ChangeCheck:
    """The change check's timers, its last digest, and the reload it found pending.

    Parameters:
        clock(Callable[[], float]): monotonic seconds; ``time.monotonic`` by default.

    Attributes:
        digest(str | None): the digest the schedule reflects (None before the first read).
        pending(PendingReload | None): what the last check found changed, not read yet.
        last_check(float): clock time of the last check (or full read); ``-inf`` after a
            failed read, so that the next tick checks.
        last_full_read(float): clock time of the last full read that succeeded.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.digest: str | None = None
        self.pending: PendingReload | None = None
        self.last_check = -float("inf")
        self.last_full_read = -float("inf")
        self._ticking = False  # tick() is running
        self._tick_may_check = False  # the running tick may still check
        self._sent = False  # the last tick sent an entry (no sleep since)

    def tick(self, check_interval: float, run: Callable[[], float]) -> float:
        """Return ``run()`` (one beat tick, returning its delay), during which at most one
        check is due: none if the last tick sent and the last check is less than
        ``check_interval`` seconds old.
        """
        elapsed = self.clock() - self.last_check
        self._tick_may_check = not self._sent or elapsed >= check_interval
        self._ticking = True
        try:
            delay = run()
        finally:
            self._ticking = False
        self._sent = not delay
        return delay

    def check_due(self) -> bool:
        """Return whether to check now (always, outside a tick); if so, count it as done."""
        if self._ticking:
            if not self._tick_may_check:
                return False
            self._tick_may_check = False
        self.last_check = self.clock()
        return True

    def full_read_due(self, full_read_interval: float) -> bool:
        """Return whether the last full read is ``full_read_interval`` seconds old at the
        last check; if so, the pending reload is dropped (the full read replaces it).
        """
        if self.last_check - self.last_full_read < full_read_interval:
            return False
        self.pending = None
        return True

    def changes_found(
        self, digest: str, signatures: Mapping[str, Signature], known: Mapping[str, Signature]
    ) -> bool:
        """Return whether a check that read ``signatures`` (digest ``digest``) found schemas
        changed since ``known`` (the schedule's); they become ``pending``. Else the
        schedule reflects ``digest``.
        """
        stale = stale_schemas(signatures, known)
        if stale:
            self.pending = PendingReload(signatures, stale, digest)
        else:
            self.digest = digest
        return bool(stale)

    def take_pending(self) -> PendingReload | None:
        """Return the pending reload (None: read every schema), and forget it."""
        pending, self.pending = self.pending, None
        return pending

    def begin_full_read(self) -> None:
        """Note that every schema is being read: the read counts as a check."""
        self.last_check = self.clock()

    def reloaded(self, reload: PendingReload) -> None:
        """Note that ``reload`` was read: the schedule now reflects its digest."""
        self.digest = reload.digest
        if reload.full:
            self.last_full_read = self.last_check

    def read_failed(self) -> None:
        """Note that a reload failed: the next tick checks again."""
        self.last_check = -float("inf")

    def force_full_read(self) -> None:
        """Make the next check a full read, whatever ``full_read_interval`` says."""
        self.last_full_read = -float("inf")
