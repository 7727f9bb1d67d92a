"""A ``TenantAwareDatabaseScheduler`` whose background reads wait for a file.

For ``celery beat -S tests.beat_gated_scheduler.GatedScheduler`` in
``tests/test_beat_background_read.py``: every read of more than one schema runs in
the background (``batch_size = 1``), and starts only once the file that
``TSC_BEAT_READ_GATE`` names exists, so the test decides how long the tenants' rows
take to load.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tenant_schemas_celery.db_scheduler import TenantAwareDatabaseScheduler

GATE_ENV = "TSC_BEAT_READ_GATE"


class GatedScheduler(TenantAwareDatabaseScheduler):
    """Background reads wait (at most 60 s) for the file ``TSC_BEAT_READ_GATE`` names."""

    batch_size = 1

    def _read_in_background(self, *args: Any, **kwargs: Any) -> Any:
        gate = Path(os.environ[GATE_ENV])
        deadline = time.monotonic() + 60
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return super()._read_in_background(*args, **kwargs)
