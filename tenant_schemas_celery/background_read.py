"""``BackgroundRead``: one daemon thread running the large reads of beat's database scheduler.

The beat loop hands a read (a callable) to the thread with ``start()`` and goes on
sending its current schedule; at each tick it collects the finished result with
``take()``, which never blocks unless told to wait (a read of ``schedule`` outside
the beat loop waits, to stay complete and current). One read runs at a time. The
thread is started at the first read and stopped by ``close()``. An exception of a
read is logged with its traceback and handed back as a failed ``Outcome``; the
thread goes on, and beat tries the read again.

Pure threading: what is read, and how a result is swapped in, is the scheduler's
(see ``db_scheduler.TenantAwareDatabaseScheduler``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .scheduler import logger

__all__ = ["BackgroundRead", "Outcome"]

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What a read gave: its ``value``, or the ``error`` it raised (then ``failed``)."""

    value: T | None = None
    error: Exception | None = None

    @property
    def failed(self) -> bool:
        """Whether the read raised."""
        return self.error is not None


class BackgroundRead(Generic[T]):
    """One daemon thread running one read at a time; its outcome waits for ``take()``.

    Parameters:
        name(str): the thread's name.

    Example:
        >>> reader: BackgroundRead[int] = BackgroundRead()
        >>> reader.start(lambda: 6 * 7)
        >>> reader.busy
        True
        >>> reader.take(timeout=None)
        Outcome(value=42, error=None)
        >>> reader.busy, reader.take()
        (False, None)
        >>> reader.close()
        True
    """

    def __init__(self, name: str = "tsc-beat-reader") -> None:
        self.name = name
        self._condition = threading.Condition()
        self._job: Callable[[], T] | None = None
        self._outcome: Outcome[T] | None = None
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """Whether a read was started and its outcome not taken yet."""
        return self._busy

    @property
    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, job: Callable[[], T]) -> None:
        """Run ``job()`` in the thread (started at the first read).

        Raises:
            RuntimeError: a read is running or not taken yet, or the reader is closed.
        """
        with self._condition:
            if self._closed:
                raise RuntimeError(f"{self.name}: closed")
            if self._busy:
                raise RuntimeError(f"{self.name}: a read is already running")
            self._job, self._outcome, self._busy = job, None, True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._condition.notify_all()

    def take(self, timeout: float | None = 0) -> Outcome[T] | None:
        """Return the outcome of the read, once it finished (None: none running, or not done).

        Parameters:
            timeout(float | None): seconds to wait for a running read to finish: 0 (the
                default) does not wait; None waits as long as it takes.
        """
        with self._condition:
            if not self._busy:
                return None
            if timeout != 0:
                self._condition.wait_for(lambda: self._outcome is not None, timeout)
            outcome = self._outcome
            if outcome is None:
                return None
            self._outcome, self._busy = None, False
            return outcome

    def close(self, timeout: float | None = None) -> bool:
        """Stop the thread once its running read ends; return whether it stopped in ``timeout``."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._job is not None or self._closed)
                if self._job is None:
                    return
                job, self._job = self._job, None
            try:
                outcome: Outcome[T] = Outcome(value=job())
            except Exception as exc:
                logger.exception("beat: The background read of the periodic tasks failed: %r", exc)
                outcome = Outcome(error=exc)
            with self._condition:
                self._outcome = outcome
                self._condition.notify_all()
