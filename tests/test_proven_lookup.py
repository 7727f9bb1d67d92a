"""The default lookup fused with the schema proof: one statement, the same tenant as the ORM."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import schema_context

from tenant_schemas_celery.exceptions import TenantNotFound, TenantSchemaMissing
from tenant_schemas_celery.proven_lookup import fetch_proven_tenant
from tests.project.customers.models import Client
from tests.project.notes import tasks


def test_fused_tenant_is_the_orms(tenants):
    fused = fetch_proven_tenant(Client, connection, "tenant1", "public")
    with connection.connection.cursor() as cursor:  # the statement set the session's path
        cursor.execute("SHOW search_path")
        assert cursor.fetchone()[0] in ('"tenant1", public', '"tenant1","public"')
    orm = Client.objects.get(schema_name="tenant1")
    assert type(fused) is Client
    assert {f.attname: getattr(fused, f.attname) for f in Client._meta.concrete_fields} == {
        f.attname: getattr(orm, f.attname) for f in Client._meta.concrete_fields
    }
    assert (fused._state.db, fused._state.adding) == ("default", False)


def test_unknown_schema_is_not_found(tenants):
    with pytest.raises(TenantNotFound) as raised:
        fetch_proven_tenant(Client, connection, "nobody", "public")
    assert type(raised.value) is TenantNotFound


def test_row_without_schema_is_missing(tenants):
    Client.objects.bulk_create([Client(schema_name="rowonly", name="rowonly")])
    try:
        with pytest.raises(TenantSchemaMissing):
            fetch_proven_tenant(Client, connection, "rowonly", "public")
    finally:
        Client.objects.filter(schema_name="rowonly").delete()
        connection.set_schema_to_public()


@pytest.mark.parametrize("limit_set_calls", [True, False])
def test_uncached_task_reads_its_tenant_in_the_proving_statement(tenants, limit_set_calls):
    # One statement looks the tenant up, sets search_path and proves the schema
    limit = override_settings(TENANT_LIMIT_SET_CALLS=limit_set_calls)
    with limit, schema_context("tenant2"), CaptureQueriesContext(connection) as queries:
        assert tasks.uncached_whereami.apply().get()["schema"] == "tenant2"
    before_body = []
    for query in queries.captured_queries:
        if "notes_note" in query["sql"]:
            break
        before_body.append(query["sql"])
    lookups = [sql for sql in before_body if "customers_client" in sql]
    assert len(lookups) == 1
    assert lookups[0].startswith("SELECT set_config('search_path',")
    sets = [sql for sql in before_body if sql.startswith("SET search_path")]
    assert len(sets) == (0 if limit_set_calls else 1)  # django-tenants' own, for the body
    assert all(sql.replace("'", '"') == 'SET search_path = "tenant2","public"' for sql in sets)
