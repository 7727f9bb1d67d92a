"""TenantAwareModelEntry and its helpers: where a row is sent, how two reads are compared.

Real PostgreSQL (public, tenant1, tenant2).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_tenants.utils import schema_context

from tenant_schemas_celery.exceptions import TenantConfigurationError
from tenant_schemas_celery.model_entry import TenantAwareModelEntry, row_targets, row_values
from tests.beat_helpers import TASK, add_task
from tests.project.celery import app

pytestmark = pytest.mark.usefixtures("beat_db")


def test_the_all_tenants_header_is_true_or_false() -> None:
    assert row_targets("public", {"_all_tenants_only": True}) == (None, 0.0)
    assert row_targets("public", {"_all_tenants_only": " TRUE"}) == (None, 0.0)
    # A string a person typed in the admin means what it says
    assert row_targets("public", {"_all_tenants_only": "false"}) == (("public",), 0.0)
    assert row_targets("public", {"_all_tenants_only": None}) == (("public",), 0.0)
    with pytest.raises(
        TenantConfigurationError, match="_all_tenants_only header must be true or false, got 'no'"
    ):
        row_targets("public", {"_all_tenants_only": "no"})
    # A tenant's row stays in its tenant, whatever its headers say
    assert row_targets("tenant1", {"_all_tenants_only": "no"}) == (("tenant1",), 0.0)


def test_a_tenant_row_is_an_entry_of_its_schema() -> None:
    add_task("tenant1", "job", headers='{"_schema_name": "tenant2"}')
    with schema_context("tenant1"):
        entry = TenantAwareModelEntry(PeriodicTask.objects.get(name="job"), app=app)
    assert (entry.schema_name, entry.tenant_schemas) == ("tenant1", ("tenant1",))


def test_row_values_tell_a_row_or_its_schedule_changed() -> None:
    add_task("tenant1", "job", every=60)

    def read() -> PeriodicTask:
        with schema_context("tenant1"):
            return PeriodicTask.objects.select_related("interval").get(name="job")

    first = row_values(read())
    assert row_values(read()) == first
    with schema_context("tenant1"):
        IntervalSchedule.objects.update(every=7)
    assert row_values(read()) != first
    # A row whose schedule is not loaded has None in its place
    with schema_context("tenant1"):
        assert row_values(PeriodicTask.objects.get(name="job"))[-4:] == (None,) * 4


def test_beat_schedule_items_become_public_rows_and_a_bad_one_is_logged(caplog: Any) -> None:
    caplog.set_level(logging.ERROR, logger="celery.beat")
    mapping = {
        "listed": {"task": TASK, "schedule": 60, "tenant_schemas": ["tenant1", "tenant2"]},
        "bad": {"task": TASK, "schedule": 60, "tenant_schemas": ["pg_catalog"]},
    }
    with schema_context("tenant1"):  # the rows go to public whatever the active schema
        entries = TenantAwareModelEntry.from_schedule(mapping, app=app)
    assert sorted(entries) == ["listed@tenant1", "listed@tenant2"]
    assert {e.schema_name for e in entries.values()} == {"public"}
    assert entries["listed@tenant2"].tenant_schemas == ("tenant2",)
    with schema_context("public"):
        assert sorted(PeriodicTask.objects.values_list("name", flat=True)) == sorted(entries)
    errors = [message for (_, _, message) in caplog.record_tuples]
    assert len(errors) == 1 and errors[0].startswith("beat: Ignoring schedule entry 'bad': ")
