"""The scheduler of ``bench/beat_failover.py``: the HA tests' stamping database scheduler,
which also tells (once) when its start-up load of every schema has completed.

When the first tick after the load ends, the beat's pid is appended to the Redis list
``<TSC_HA_KEY>:loaded``: a beat is only killed, or its sends only measured, once loaded.
"""

from __future__ import annotations

import os
from typing import Any

from tests.beat_e2e_app import events
from tests.beat_ha_app import KEY
from tests.beat_ha_schedulers import StampingDatabaseScheduler


class LoadReportingScheduler(StampingDatabaseScheduler):
    """``StampingDatabaseScheduler``, reporting the end of its start-up load in Redis."""

    _load_reported = False

    def tick(self, *args: Any, **kwargs: Any) -> float:
        delay = super().tick(*args, **kwargs)
        if not self._load_reported and self._read_once and not self._reader.busy:
            self._load_reported = True
            events().rpush(f"{KEY}:loaded", os.getpid())
        return delay
