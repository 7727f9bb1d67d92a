"""Drop-in compatibility with the PyPI package 5.0.0: its schedule files, entries and names.

The PyPI package's behaviour stated here was observed by running it in a throw-away
virtualenv (``python3 -m venv /tmp/pypi-tsc && /tmp/pypi-tsc/bin/pip install
tenant-schemas-celery==5.0.0``): its schedule file is ``tests/fixtures/pypi-5.0.0-schedule``
(made by ``tests/fixtures/make_pypi_schedule.py``, which says how), and its module
names are listed in ``PYPI_PUBLIC_NAMES``.
"""

from __future__ import annotations

import importlib
import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from tenant_schemas_celery.dispatch import send_to_tenants
from tenant_schemas_celery.scheduler import (
    TenantAwarePersistentScheduler,
    TenantAwareScheduler,
    TenantAwareSchedulerMixin,
    expand_entry,
)
from tests.beat_helpers import (
    TASK,
    beat_schedule,
    drain,
    every_tenant,
    make_due,
    run_due,
    schemas_of,
)
from tests.fixtures.make_pypi_schedule import BEAT_SCHEDULE, RUNS
from tests.project.celery import app
from tests.project.customers.models import Client
from tests.project.notes.tasks import whereami

FIXTURES = Path(__file__).parent / "fixtures"
README = Path(__file__).parent.parent / "README.md"

#: The public names of the PyPI package 5.0.0's modules (test modules left out): those
#: defined there (``__module__`` is the module), and the imported names that projects
#: import from them (``compat``'s re-exports, ``app.headers_with_schema``, the scheduler
#: mixin in ``db_scheduler``; ``registry``'s import of ``TenantTask`` is left out).
#: Listed in its virtualenv from ``vars(importlib.import_module("tenant_schemas_celery." +
#: module))``, names without a leading underscore that are not modules.
PYPI_PUBLIC_NAMES = {
    "app": [
        "CeleryApp",
        "get_schema_name_from_task",
        "headers_with_schema",
        "restore_schema",
        "switch_schema",
    ],
    "cache": ["SimpleCache"],
    "compat": [
        "TenantMixin",
        "TenantTestCase",
        "get_public_schema_name",
        "get_tenant_model",
        "schema_context",
        "tenant_context",
    ],
    "registry": ["TenantTaskRegistry"],
    "scheduler": [
        "Tenant",
        "TenantAwarePersistentScheduler",
        "TenantAwareScheduleEntry",
        "TenantAwareScheduler",
        "TenantAwareSchedulerMixin",
    ],
    "db_scheduler": [
        "TenantAwareDatabaseScheduler",
        "TenantAwareModelEntry",
        "TenantAwarePeriodicTasks",
        "TenantAwareSchedulerMixin",
    ],
    "task": ["SharedTenantCache", "TenantTask", "headers_with_schema"],
}


def not_provided() -> set[str]:
    """The ``module.name`` items of the README's "Not provided" paragraph."""
    text = README.read_text()
    match = re.search(r"\*\*Not provided\*\*(.*?)(?:\n\n|\Z)", text, re.S)
    assert match, "README: the Differences section has no **Not provided** paragraph"
    return set(re.findall(r"`tenant_schemas_celery\.(\w+\.\w+)`", match.group(1)))


def missing_names() -> set[str]:
    missing = set()
    for module_name, names in PYPI_PUBLIC_NAMES.items():
        module = importlib.import_module(f"tenant_schemas_celery.{module_name}")
        missing |= {f"{module_name}.{name}" for name in names if not hasattr(module, name)}
    return missing


def test_every_public_name_of_the_pypi_package_imports_or_is_listed_as_not_provided() -> None:
    listed = not_provided()
    missing = missing_names()
    assert missing <= listed, f"missing and not listed in the README: {missing - listed}"
    assert listed <= missing, f"listed as not provided, but importable: {listed - missing}"


def test_the_scheduler_module_names_the_tenant_model_lazily() -> None:
    from tenant_schemas_celery import scheduler

    assert scheduler.Tenant is Client


# Schedule entries -------------------------------------------------------------------------


def stored_pypi_entries(tmp_path: Path) -> dict[str, Any]:
    """The entries of the PyPI package's schedule file, read by Celery's ``shelve``."""
    import shelve

    for part in FIXTURES.glob("pypi-5.0.0-schedule.*"):
        shutil.copy(part, tmp_path / part.name)
    with shelve.open(str(tmp_path / "pypi-5.0.0-schedule")) as store:
        return dict(store["entries"])


def without_beat_marker(headers: dict[str, Any]) -> dict[str, Any]:
    # Celery's apply_async adds celery_beat_task to the headers of the entry it sends
    # (a shallow copy of its options), so the file holds it for the entries that ran.
    return {key: value for key, value in headers.items() if key != "celery_beat_task"}


def test_entries_have_the_headers_of_the_pypi_package(tmp_path: Path) -> None:
    pypi = stored_pypi_entries(tmp_path)
    ours = {
        name: fields
        for config_name, config in BEAT_SCHEDULE.items()
        for name, fields in expand_entry(config_name, config).items()
    }
    assert sorted(ours) == sorted(pypi)
    for name, entry in pypi.items():
        assert ours[name]["options"]["headers"] == without_beat_marker(entry.options["headers"])
    assert ours["every-tenant@__all_tenants_only__"]["options"]["headers"] == {
        "_all_tenants_only": True
    }
    assert ours["listed@tenant1"]["options"]["headers"] == {"x": 1, "_schema_name": "tenant1"}


@pytest.mark.parametrize("cls", [TenantAwareScheduler, TenantAwarePersistentScheduler])
def test_scheduler_entries_carry_their_targets_in_headers(
    cls: type, beat_queue: str, tmp_path: Path, beat_db: None
) -> None:
    schedule = {
        "all": {"task": TASK, "schedule": 60, "options": {"queue": beat_queue}},
        "some": {"task": TASK, "schedule": 60, "tenant_schemas": ["tenant1"]},
    }
    with beat_schedule(schedule):
        scheduler = cls(app=app, schedule_filename=str(tmp_path / "s"))
    try:
        entries = scheduler.schedule
        assert entries["all@__all_tenants_only__"].options["headers"] == {"_all_tenants_only": True}
        assert entries["some@tenant1"].options["headers"] == {"_schema_name": "tenant1"}
    finally:
        scheduler.close()


def test_a_schedule_file_of_the_pypi_package_keeps_its_run_history(
    tmp_path: Path, beat_queue: str, beat_db: None
) -> None:
    # Given the schedule file the PyPI package's TenantAwarePersistentScheduler wrote
    pypi = stored_pypi_entries(tmp_path)
    assert {entry.total_run_count for entry in pypi.values()} == {RUNS}
    # When our TenantAwarePersistentScheduler starts on it, with the same schedule
    schedule = {
        name: {
            **fields,
            "task": TASK,
            "options": {**fields.get("options", {}), "queue": beat_queue},
        }
        for name, fields in BEAT_SCHEDULE.items()
    }
    with beat_schedule(schedule):
        scheduler = TenantAwarePersistentScheduler(
            app=app, schedule_filename=str(tmp_path / "pypi-5.0.0-schedule")
        )
    # Then every entry keeps its last run and run count
    entries = scheduler.schedule
    assert sorted(name for name in entries if not name.startswith("celery.")) == sorted(pypi)
    for name, old in pypi.items():
        assert entries[name].last_run_at == old.last_run_at
        assert entries[name].total_run_count == RUNS
        assert entries[name].task == TASK
    # And each goes where the PyPI package's entry went
    make_due(scheduler)
    run_due(scheduler)
    scheduler.close()
    sent = drain(beat_queue)
    assert schemas_of(sent) == sorted([*every_tenant(), "public", "tenant1"])
    assert all("_all_tenants_only" not in message for message in sent)
    # And the file still holds the PyPI package's headers (that package can read it back)
    import shelve

    with shelve.open(str(tmp_path / "pypi-5.0.0-schedule")) as store:
        saved = dict(store["entries"])
    for name, old in pypi.items():
        headers = without_beat_marker(saved[name].options["headers"])
        assert headers == without_beat_marker(old.options["headers"]), name
        assert saved[name].total_run_count == RUNS + 1


# get_queryset ---------------------------------------------------------------------------


@pytest.fixture
def public_tenant(database: None) -> Any:
    """A tenant row for the public schema, as django-tenants projects usually have."""
    (tenant,) = Client.objects.bulk_create([Client(schema_name="public", name="PUBLIC")])
    yield tenant
    # By SQL: deleting a tenant through the ORM may drop its schema.
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM public.{Client._meta.db_table} WHERE id = %s", [tenant.pk])


def test_get_queryset_is_every_tenant_public_included(public_tenant: Any) -> None:
    names = set(TenantAwareSchedulerMixin.get_queryset().values_list("schema_name", flat=True))
    assert names == set(Client.objects.values_list("schema_name", flat=True))
    assert "public" in names


def test_every_tenant_still_leaves_public_out(
    public_tenant: Any, beat_queue: str, beat_db: None
) -> None:
    # Given public has a tenant row: beat's "every tenant" and delay_for_tenants leave it out
    scheduler = TenantAwareScheduler(app=app, lazy=True)
    entry = scheduler.Entry(
        name="job@__all_tenants_only__",
        task=TASK,
        schedule=timedelta(hours=1),
        options={"queue": beat_queue, "headers": {"_all_tenants_only": True}},
        app=app,
    )
    scheduler.apply_entry(entry, producer=scheduler.producer)
    send_to_tenants(whereami, queue=beat_queue)
    scheduler.close()
    assert schemas_of(drain(beat_queue)) == sorted(every_tenant() * 2)
    assert "public" not in every_tenant()


def test_authentiks_scheduler_reaches_public_through_get_queryset(
    public_tenant: Any, beat_queue: str, beat_db: None
) -> None:
    # authentik's scheduler sends an entry without tenant_schemas to get_queryset()'s
    # schemas, and relies on public being one of them.
    class AuthentikLike(TenantAwareScheduler):
        def apply_entry(self, entry: Any, producer: Any = None) -> None:
            if entry.tenant_schemas is None:
                entry.tenant_schemas = self.get_queryset().values_list("schema_name", flat=True)
            return super().apply_entry(entry, producer)

    schedule = {"job": {"task": TASK, "schedule": 60, "options": {"queue": beat_queue}}}
    with beat_schedule(schedule):
        scheduler = AuthentikLike(app=app)
    make_due(scheduler)
    before = timezone.now()
    run_due(scheduler)
    scheduler.close()
    assert schemas_of(drain(beat_queue)) == sorted(["public", *every_tenant()])
    assert scheduler.schedule["job@__all_tenants_only__"].last_run_at >= before
