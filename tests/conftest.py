"""Test setup: a fresh PostgreSQL database with two tenants, and real Celery workers."""

from __future__ import annotations

import os
import uuid

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.project.settings")
os.environ.setdefault("TSC_QUEUE", f"tsc-tests-{uuid.uuid4().hex[:8]}")

import django
import psycopg2
import pytest
from django.conf import settings

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, connections  # noqa: E402
from django_tenants.utils import schema_context  # noqa: E402

from tenant_schemas_celery.cache import tenant_cache  # noqa: E402
from tests.project.celery import app  # noqa: E402
from tests.project.customers.models import Client, Domain  # noqa: E402
from tests.project.notes.models import Note  # noqa: E402
from tests.project.notes.tasks import EVENTS_KEY, events  # noqa: E402
from tests.workers import worker  # noqa: E402

TENANTS = ("tenant1", "tenant2")
BROKERS = {
    "redis": f"{settings.REDIS_URL}/13",
    "amqp": settings.AMQP_URL,
}


def _recreate_database() -> None:
    db = settings.DATABASES["default"]
    admin = psycopg2.connect(
        dbname="postgres", user=db["USER"], password=db["PASSWORD"], host=db["HOST"],
        port=db["PORT"],
    )  # fmt: skip
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{db["NAME"]}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{db["NAME"]}"')
    admin.close()


def create_tenant(schema_name: str) -> Client:
    tenant = Client(schema_name=schema_name, name=schema_name.upper())
    tenant.save(verbosity=0)
    Domain.objects.create(domain=f"{schema_name}.example.com", tenant=tenant, is_primary=True)
    return tenant


@pytest.fixture(scope="session")
def database():
    """A fresh database: public migrated, tenants ``tenant1`` and ``tenant2`` created."""
    connections.close_all()
    _recreate_database()
    call_command("migrate_schemas", shared=True, verbosity=0)
    for schema_name in TENANTS:
        create_tenant(schema_name)
    yield
    connections.close_all()


@pytest.fixture
def tenants(database):
    """The two tenants, with no notes anywhere, the tenant cache empty, in public."""
    connection.set_schema_to_public()
    for schema_name in ("public", *TENANTS):
        with schema_context(schema_name):
            Note.objects.all().delete()
    tenant_cache.clear()
    events().delete(EVENTS_KEY)
    yield {t.schema_name: t for t in Client.objects.filter(schema_name__in=TENANTS)}
    connection.set_schema_to_public()


def recorded_events() -> list[str]:
    return [e.decode() for e in events().lrange(EVENTS_KEY, 0, -1)]


def use_broker(url: str) -> None:
    """Point the test process's app (the sender) at another broker."""
    app.conf.broker_url = url
    app._pool = None  # kombu keeps the pools of each broker; the app must pick the new one
    app.amqp._producer_pool = None


@pytest.fixture(scope="module", params=sorted(BROKERS))
def broker(request):
    """Each broker in turn; the sending app is pointed at it."""
    use_broker(BROKERS[request.param])
    yield request.param
    use_broker(BROKERS["redis"])


@pytest.fixture(scope="module")
def solo_worker(broker, database):
    """A solo-pool worker on the current broker."""
    process = worker(BROKERS[broker], pool="solo").start()
    yield process
    process.stop()
