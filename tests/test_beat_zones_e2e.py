"""End to end: a real ``celery beat`` and worker, a ``tenant_timezone`` crontab entry.

The entry (``tests.beat_e2e_app``, schedule ``"zoned"``) is due every minute of Tokyo's
current and next hour in each tenant's zone: with tenants in Tokyo, New York and UTC
(``tenant1``, ``tenant2``: no zone), only the Tokyo tenant gets its messages.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import create_tenant
from tests.project.customers.models import Client
from tests.test_beat_e2e import (
    SCHEDULER,
    assert_each_message_ran_once,
    beat_and_worker,
    recorded,
    stop_and_drain,
    wait_for,
)

pytestmark = pytest.mark.integration


@contextmanager
def zoned_tenants(zones: dict[str, str]) -> Iterator[None]:
    """Real tenants (schema migrated), each with its ``timezone``; deleted on exit."""
    try:
        for schema_name, zone in zones.items():
            create_tenant(schema_name)
            Client.objects.filter(schema_name=schema_name).update(timezone=zone)
        yield
    finally:
        for tenant in Client.objects.filter(schema_name__in=list(zones)):
            tenant.delete(force_drop=True)


def test_a_real_beat_sends_to_the_due_zone_only(database: None) -> None:
    key = f"tsc-tests:beat-zones:{uuid.uuid4().hex[:8]}"
    zones = {"tz_e2e_tokyo": "Asia/Tokyo", "tz_e2e_ny": "America/New_York"}
    with zoned_tenants(zones), beat_and_worker(key, SCHEDULER, schedule="zoned") as beat:
        # The first run is due at the next minute
        wait_for(lambda: bool(recorded(key)), beat, timeout=120)
        runs, sent = stop_and_drain(beat, key)
    assert {message["schema"] for message in sent} == {"tz_e2e_tokyo"}
    assert {run["schema"] for run in runs} == {"tz_e2e_tokyo"}
    assert_each_message_ran_once(runs, sent)
