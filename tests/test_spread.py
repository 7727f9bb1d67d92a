"""spread: each schema's stable offset within a window, and its message options."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from tenant_schemas_celery.exceptions import TenantConfigurationError
from tenant_schemas_celery.spread import (
    MAX_SPREAD_SECONDS,
    entry_spread,
    options_for_schema,
    spread_offset,
    validate_spread,
)


def test_spread_offset_is_within_the_window_and_stable() -> None:
    offsets = [spread_offset(f"tenant{index}", 300) for index in range(1000)]
    assert all(0 <= offset < 300 for offset in offsets)
    assert offsets == [spread_offset(f"tenant{index}", 300) for index in range(1000)]
    # Spread evenly: each tenth of the window gets about a tenth of the tenants
    tenths = Counter(int(offset // 30) for offset in offsets)
    assert set(tenths) == set(range(10))
    assert all(60 <= count <= 140 for count in tenths.values())


def test_spread_offset_is_the_same_in_another_process() -> None:
    code = "from tenant_schemas_celery import spread; print(spread.spread_offset('tenant1', 300))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(other.stdout) == spread_offset("tenant1", 300)


def test_no_window_means_no_offset() -> None:
    assert spread_offset("tenant1", 0) == 0.0


@pytest.mark.parametrize("value", [-1, MAX_SPREAD_SECONDS + 1, float("inf"), True, "60"])
def test_a_spread_that_is_not_a_number_of_seconds_names_the_option(value: object) -> None:
    with pytest.raises(TenantConfigurationError, match=r"^spread_seconds must be a number"):
        validate_spread(value, "spread_seconds")


def test_an_entry_spread_comes_from_its_field_else_its_header() -> None:
    headers = {"_tenant_spread_seconds": 30}
    assert entry_spread(SimpleNamespace(tenant_spread_seconds=60.0, options={})) == 60.0
    assert entry_spread(SimpleNamespace(options={"headers": headers})) == 30.0
    assert entry_spread(SimpleNamespace(options={})) == 0.0


def test_options_for_a_schema_carry_it_and_its_offset_and_leave_the_base_alone() -> None:
    base = {"queue": "q", "headers": {"x": 1}, "countdown": 5, "expires": 100}
    offset = spread_offset("tenant1", 60)
    options = options_for_schema(base, "tenant1", 60)
    assert options["headers"] == {"x": 1, "_schema_name": "tenant1"}
    assert options["countdown"] == 5 + offset
    assert options["expires"] == 100 + offset  # a relative expiry stays relative
    assert base == {"queue": "q", "headers": {"x": 1}, "countdown": 5, "expires": 100}
    # Without a window, nothing moves
    assert options_for_schema(base, "tenant1", 0) == {**base, "headers": options["headers"]}


def test_an_eta_moves_with_the_offset_and_an_absolute_expiry_stays() -> None:
    eta = datetime(2026, 1, 1, tzinfo=timezone.utc)
    expires = eta + timedelta(hours=1)
    options = options_for_schema({"headers": {}, "eta": eta, "expires": expires}, "tenant1", 60)
    assert options["eta"] == eta + timedelta(seconds=spread_offset("tenant1", 60))
    assert options["expires"] == expires
    assert "countdown" not in options
