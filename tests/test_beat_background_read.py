"""End to end: a real ``celery beat`` sends public rows while the tenants' rows still load.

``tests.beat_gated_scheduler.GatedScheduler`` holds its background read until the test
creates a file; a real worker runs what beat sends (see ``tests.beat_e2e_app``).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.beat_e2e_app import ROW_TASK
from tests.beat_gated_scheduler import GATE_ENV
from tests.beat_helpers import add_task
from tests.test_beat_e2e import (
    EVERY_TENANT,
    WANTED_RUNS,
    beat_and_worker,
    dues,
    recorded,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("beat_db")]
SCHEDULER = "tests.beat_gated_scheduler.GatedScheduler"


def test_public_rows_run_on_time_while_tenant_rows_load(tmp_path: Path) -> None:
    key = f"tsc-tests:beat-background-read:{uuid.uuid4().hex[:8]}"
    gate = tmp_path / "gate"
    add_task("public", "in-public", every=1, task=ROW_TASK)
    add_task("tenant1", "in-tenant1", every=1, task=ROW_TASK)
    with beat_and_worker(key, SCHEDULER, schedule="rows", env={GATE_ENV: str(gate)}) as beat:
        # While the tenants' rows are held, the public row and the beat_schedule entry
        # (a public row sent to every tenant) run, due after due
        wait_for(
            lambda: (
                len(dues(recorded(key), "in-public")) >= WANTED_RUNS
                and len(dues(recorded(key), EVERY_TENANT)) >= WANTED_RUNS
            ),
            beat,
        )
        assert not dues(recorded(key), "in-tenant1")
        # Once they are read, the tenant's row runs too, in its schema
        gate.touch()
        wait_for(lambda: len(dues(recorded(key), "in-tenant1")) >= WANTED_RUNS, beat)
        assert {r["schema"] for r in recorded(key) if r["entry"] == "in-tenant1"} == {"tenant1"}
        assert "beat raised exception" not in beat.log()
