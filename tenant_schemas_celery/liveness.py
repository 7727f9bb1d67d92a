"""Is beat alive? A heartbeat file touched at every tick.

The schedulers touch ``beat_tenant_heartbeat_file`` (a Celery setting) at every tick
(see ``TenantAwareSchedulerMixin.tick``): a container health check tests its age.
"""

from __future__ import annotations

from pathlib import Path

from celery.utils.log import get_logger

__all__ = ["HeartbeatFile"]

#: Celery's beat logger, as in ``scheduler.py``.
logger = get_logger("celery.beat")


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
