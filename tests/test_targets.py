"""targets: which tenants an entry or a ``delay_for_tenants`` call goes to."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection

from tenant_schemas_celery._sql import quote_ident
from tenant_schemas_celery.targets import (
    NOT_A_TENANT,
    NOT_READY,
    UNUSABLE_NAME,
    OnceLog,
    Readiness,
    TenantTargets,
    read_readiness,
    tenant_queryset,
)
from tests.project.customers.models import Client

pytestmark = pytest.mark.usefixtures("tenants")

READINESS = Readiness(ready=("b", "a"), not_ready=("c",), unusable=("bad'name",))


@contextmanager
def made_tenants(*names: str, schema: bool = True) -> Iterator[None]:
    """Tenant rows made for the test, with their schemas if asked; gone at the end."""
    connection.set_schema_to_public()
    Client.objects.bulk_create([Client(schema_name=name, name=name.upper()) for name in names])
    try:
        with connection.cursor() as cursor:
            for name in names if schema else ():
                cursor.execute(f"CREATE SCHEMA {quote_ident(name)}")
        yield
    finally:
        connection.set_schema_to_public()
        Client.objects.filter(schema_name__in=names).delete()
        with connection.cursor() as cursor:
            for name in names:
                cursor.execute(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")


@contextmanager
def recorded() -> Iterator[list[str]]:
    """The statements sent through Django in the block (django-tenants' own SET aside)."""
    sent: list[str] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if not sql.startswith("SET search_path"):
            sent.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        yield sent


def ready_now() -> list[str]:
    """The tenants with a schema, public excluded (other tests may have left some)."""
    return list(read_readiness(tenant_queryset()).ready)


# Readiness.split, in memory -------------------------------------------------------------


def test_every_tenant_means_the_ready_ones_in_order_and_the_others_skipped() -> None:
    schemas, skipped = READINESS.split(None)
    assert schemas == ["b", "a"]
    assert skipped == {"c": NOT_READY, "bad'name": UNUSABLE_NAME}


def test_listed_schemas_keep_public_and_ready_tenants_in_their_order() -> None:
    schemas, skipped = READINESS.split(["a", "public", "c", "nobody", "b"])
    assert schemas == ["a", "public", "b"]
    assert skipped == {"c": NOT_READY, "nobody": NOT_A_TENANT}


def test_every_tenant_never_includes_public() -> None:
    assert "public" not in READINESS.split(None)[0]


# Reading, with PostgreSQL -----------------------------------------------------------------


def test_readiness_is_read_with_one_statement_and_sorts_the_tenants() -> None:
    waiting = made_tenants("tgt_waiting", schema=False)
    with made_tenants("tgt_ready"), waiting, made_tenants("Bad;Name"):
        with recorded() as queries:
            readiness = read_readiness(tenant_queryset())
        assert len(queries) == 1
        assert "tgt_ready" in readiness.ready and "public" not in readiness.ready
        assert "tgt_waiting" in readiness.not_ready
        assert readiness.unusable == ("Bad;Name",)


def test_targets_are_every_ready_tenant_or_the_listed_schemas(caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="celery.beat")
    targets = TenantTargets(tenant_queryset)
    with made_tenants("tgt_no_schema", schema=False):
        expected = ready_now()
        assert targets.resolve(None) == expected
        listed = ["public", "tenant2", "tgt_no_schema", "unknown"]
        assert targets.resolve(listed) == ["public", "tenant2"]
        assert targets.resolve(listed) == ["public", "tenant2"]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("beat: Skipping tenant schema 'tgt_no_schema': it does not")
    assert messages[1].startswith("beat: Skipping schema 'unknown': it is neither the public")


def test_targets_are_read_once_per_burst_with_one_statement() -> None:
    targets = TenantTargets(tenant_queryset)
    before = ready_now()
    names = [f"tgt_many{index:02d}" for index in range(30)]
    with made_tenants(*names):
        with recorded() as queries:
            resolved = [targets.resolve(None) for _ in range(3)]
        assert len(queries) == 1 and "pg_namespace" in queries[0]
        assert len(resolved[0]) == len(before) + 30
        # After forget() (the beat loop went to sleep), tenants are read again
        targets.forget()
    assert targets.resolve(None) == before


def test_an_unusable_tenant_name_is_logged_once(caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="celery.beat")
    targets = TenantTargets(tenant_queryset)
    with made_tenants("Bad;Name"):
        for _ in range(2):
            assert "Bad;Name" not in targets.resolve(None)
            targets.forget()
    assert [record.getMessage() for record in caplog.records] == [
        "beat: Ignoring tenant schema 'Bad;Name': it is not a usable schema name."
    ]


def test_once_log_reports_again_after_recovery(caplog: Any) -> None:
    log = OnceLog("beat: %r")
    log.update(["a"], ["a"])
    log.update(["a"], ["a"])
    log.update([], ["a"])
    log.update(["a"], ["a"])
    assert [record.getMessage() for record in caplog.records] == ["beat: 'a'", "beat: 'a'"]


def test_an_empty_queryset_means_no_tenant_and_public_still_goes() -> None:
    targets = TenantTargets(lambda: tenant_queryset().filter(schema_name__in=[]))
    assert targets.resolve(None) == []
    assert targets.resolve(["public", "tenant1"]) == ["public"]
