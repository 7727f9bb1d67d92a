"""A real worker, on Redis and on RabbitMQ: every task runs in the schema it was sent from."""

from __future__ import annotations

import pytest
from celery import chain, chord, group
from django.db import connection
from django_tenants.utils import schema_context

from tenant_schemas_celery.exceptions import (
    InvalidSchemaName,
    TenantConfigurationError,
    TenantNotFound,
)
from tests.conftest import create_tenant, recorded_events
from tests.project.celery import app
from tests.project.customers.models import Client
from tests.project.notes import tasks
from tests.project.notes.models import Note

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("solo_worker")]
TIMEOUT = 30


def notes_in(schema_name: str) -> list[str]:
    with schema_context(schema_name):
        return sorted(Note.objects.values_list("text", flat=True))


def test_task_sees_its_tenants_rows_only(tenants):
    # Given a note in each tenant
    for schema_name in tenants:
        with schema_context(schema_name):
            Note.objects.create(text=f"note of {schema_name}")
    # When whereami is sent from each tenant
    results = {}
    for schema_name in tenants:
        with schema_context(schema_name):
            results[schema_name] = tasks.whereami.delay()
    # Then each ran in its tenant and saw only its own note
    for schema_name, result in results.items():
        seen = result.get(timeout=TIMEOUT)
        assert seen["schema"] == schema_name
        assert seen["tenant"] == schema_name.upper()
        assert seen["notes"] == [f"note of {schema_name}"]


def test_sender_schema_is_unchanged_after_get(tenants):
    with schema_context("tenant1"):
        assert tasks.whereami.delay().get(timeout=TIMEOUT)["schema"] == "tenant1"
        assert connection.schema_name == "tenant1"
    assert connection.schema_name == "public"


def test_task_sent_from_public_runs_in_public(tenants):
    assert tasks.whereami.delay().get(timeout=TIMEOUT)["schema"] == "public"


def test_writes_land_in_the_tenant(tenants):
    with schema_context("tenant2"):
        assert tasks.write_note.delay("hello").get(timeout=TIMEOUT) == "tenant2"
    assert notes_in("tenant2") == ["hello"]
    assert notes_in("tenant1") == notes_in("public") == []


def test_apply_async_send_task_and_signatures(tenants):
    with schema_context("tenant1"):
        sent = [
            tasks.whereami.apply_async(countdown=0.2),
            app.send_task("tests.project.notes.tasks.whereami"),
            tasks.whereami.s().delay(),
            tasks.whereami.signature().apply_async(),
        ]
    assert [r.get(timeout=TIMEOUT)["schema"] for r in sent] == ["tenant1"] * 4


def test_callers_schema_header_wins_and_is_not_mutated(tenants):
    headers = {"_schema_name": "tenant2", "x-custom": "1"}
    with schema_context("tenant1"):
        result = tasks.whereami.apply_async(headers=headers)
    assert result.get(timeout=TIMEOUT)["schema"] == "tenant2"
    assert headers == {"_schema_name": "tenant2", "x-custom": "1"}


def test_reused_headers_dict_does_not_leak_between_tenants(tenants):
    headers = {"x-custom": "1"}
    with schema_context("tenant1"):
        first = tasks.whereami.apply_async(headers=headers)
    with schema_context("tenant2"):
        second = tasks.whereami.apply_async(headers=headers)
    assert first.get(timeout=TIMEOUT)["schema"] == "tenant1"
    assert second.get(timeout=TIMEOUT)["schema"] == "tenant2"
    assert headers == {"x-custom": "1"}


def test_retry_keeps_the_tenant(tenants):
    with schema_context("tenant2"):
        result = tasks.retry_once.delay()
    seen = result.get(timeout=TIMEOUT)
    assert (seen["retries"], seen["schema"]) == (1, "tenant2")


def test_task_sent_from_inside_a_task_keeps_the_tenant(tenants):
    with schema_context("tenant1"):
        child_id = tasks.send_from_task.delay().get(timeout=TIMEOUT)
    assert app.AsyncResult(child_id).get(timeout=TIMEOUT)["schema"] == "tenant1"


def test_chain_group_and_chord_stay_in_the_tenant(tenants):
    with schema_context("tenant2"):
        chained = chain(tasks.whereami.si(), tasks.whereami.si(), tasks.whereami.si()).delay()
        grouped = group(tasks.whereami.si() for _ in range(3)).delay()
        chorded = chord(tasks.whereami.si() for _ in range(3))(tasks.collect.s())
    assert chained.get(timeout=TIMEOUT)["schema"] == "tenant2"
    assert chained.parent.get(timeout=TIMEOUT)["schema"] == "tenant2"
    assert chained.parent.parent.get(timeout=TIMEOUT)["schema"] == "tenant2"
    assert [r["schema"] for r in grouped.get(timeout=TIMEOUT)] == ["tenant2"] * 3
    assert chorded.get(timeout=TIMEOUT) == {"results": ["tenant2"] * 3, "self": "tenant2"}


def test_link_and_link_error_run_in_the_tenant(tenants):
    with schema_context("tenant1"):
        linked = tasks.whereami.apply_async(link=tasks.write_note.si("linked"))
        failed = tasks.fail.apply_async(link_error=tasks.on_error.s())
    linked.get(timeout=TIMEOUT)
    with pytest.raises(ValueError):
        failed.get(timeout=TIMEOUT)
    _wait_for(lambda: notes_in("tenant1") == ["linked"])
    _wait_for(lambda: recorded_events() == [f"errback:{failed.id}:ValueError:tenant1"])


def test_next_task_after_failure_reject_and_ignore_is_in_its_tenant(tenants):
    # (soft time limits need the prefork pool: see test_pools.py)
    with schema_context("tenant1"):
        outcomes = [tasks.fail.delay(), tasks.reject.delay(), tasks.ignore.delay()]
    with schema_context("tenant2"):
        after = tasks.whereami.delay()
    public_after = tasks.whereami.delay()
    assert after.get(timeout=TIMEOUT)["schema"] == "tenant2"
    assert public_after.get(timeout=TIMEOUT)["schema"] == "public"
    with pytest.raises(ValueError):
        outcomes[0].get(timeout=TIMEOUT)
    assert outcomes[1].state != "SUCCESS"
    assert outcomes[2].state == "PENDING"  # Ignore stores no result


def test_eager_apply_inside_a_task_restores_the_outer_schema(tenants):
    with schema_context("tenant1"):
        result = tasks.eager_inside.delay("tenant2").get(timeout=TIMEOUT)
    assert result == {"before": "tenant1", "inner": "tenant2", "after": "tenant1"}


def test_deleted_tenant_fails_cleanly_and_writes_nothing(tenants):
    # Given a tenant whose tasks are sent, then the tenant is deleted
    doomed = create_tenant("doomed")
    with schema_context("doomed"):
        result = tasks.recording_write_note.apply_async(
            ("ghost",), link_error=tasks.on_error.s(), countdown=1
        )
    doomed.delete(force_drop=True)
    # Then the task fails with TenantNotFound naming the schema
    with pytest.raises(TenantNotFound, match="doomed"):
        result.get(timeout=TIMEOUT)
    assert result.state == "FAILURE"
    # And on_failure and the errback fired, and nothing was written anywhere
    _wait_for(lambda: len(recorded_events()) == 2)
    assert sorted(recorded_events()) == [
        f"errback:{result.id}:TenantNotFound:public",
        f"on_failure:{result.id}:TenantNotFound:public",
    ]
    assert notes_in("public") == notes_in("tenant1") == notes_in("tenant2") == []


@pytest.mark.parametrize(
    "header",
    [123, "", "x" * 64, "é" * 32, 'x"; DROP SCHEMA public; --', "pg_catalog", False, ["t"]],
)
def test_malformed_header_fails_and_never_runs(tenants, header):
    result = tasks.write_note.apply_async(("bad",), headers={"_schema_name": header})
    with pytest.raises(InvalidSchemaName):
        result.get(timeout=TIMEOUT)
    assert notes_in("public") == notes_in("tenant1") == []


def test_none_header_means_no_tenant_as_in_the_pypi_package(tenants):
    # The PyPI package's workers run a task whose _schema_name is None in public
    with schema_context("tenant1"):
        result = tasks.write_note.apply_async(("none",), headers={"_schema_name": None})
    assert result.get(timeout=TIMEOUT) == "public"
    assert notes_in("public") == ["none"]


def test_autoretry_for_applies_to_tenant_errors(tenants):
    result = tasks.autoretried_whereami.apply_async(headers={"_schema_name": "nobody"})
    with pytest.raises(TenantNotFound):
        result.get(timeout=TIMEOUT)
    assert result.retries == 2


def test_shared_custom_base_and_class_based_tasks_are_tenant_aware(tenants):
    with schema_context("tenant2"):
        results = [
            tasks.shared_whereami.delay(),
            tasks.custom_base_whereami.delay(),
            app.tasks["notes.class_based_whereami"].delay(),
        ]
    assert [r.get(timeout=TIMEOUT)["schema"] for r in results] == ["tenant2"] * 3


def test_multiple_databases_switch_listed_aliases_only(tenants):
    with schema_context("tenant1"):
        seen = tasks.multi_db_whereami.delay().get(timeout=TIMEOUT)
        default_only = tasks.whereami.delay().get(timeout=TIMEOUT)
    assert (seen["schema"], seen["other"], seen["untouched"]) == ("tenant1", "tenant1", "public")
    assert (default_only["schema"], default_only["other"]) == ("tenant1", "public")


def test_unknown_database_alias_is_a_configuration_error(tenants):
    with schema_context("tenant1"):
        result = tasks.bad_alias.delay()
    with pytest.raises(TenantConfigurationError, match="'missing'") as failure:
        result.get(timeout=TIMEOUT)
    assert "settings.DATABASES" in str(failure.value)


def test_cached_task_reuses_the_tenant_and_uncached_task_reads_it_again(tenants):
    # Given tenant1 looked up by a task that caches it (30 s), then renamed without a save
    # (no signal, so the worker is not told to forget it)
    with schema_context("tenant1"):
        assert tasks.cached_whereami.delay().get(timeout=TIMEOUT)["tenant"] == "TENANT1"
    Client.objects.filter(schema_name="tenant1").update(name="RENAMED")
    try:
        # When both tasks run again
        with schema_context("tenant1"):
            cached = tasks.cached_whereami.delay().get(timeout=TIMEOUT)
            uncached = tasks.uncached_whereami.delay().get(timeout=TIMEOUT)
    finally:
        Client.objects.filter(schema_name="tenant1").update(name="TENANT1")
    # Then the cached task ran with the tenant object it cached, the other read the row
    assert (cached["schema"], cached["tenant"]) == ("tenant1", "TENANT1")
    assert (uncached["schema"], uncached["tenant"]) == ("tenant1", "RENAMED")


def _wait_for(condition, timeout: float = TIMEOUT) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)
