"""Test setup: a fresh PostgreSQL database with two tenants, and real Celery workers."""

from __future__ import annotations

import os
import uuid

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.project.settings")
_RUN = uuid.uuid4().hex[:8]  # concurrent runs get their own database, queue and Redis keys
os.environ.setdefault("TSC_QUEUE", f"tsc-tests-{_RUN}")
os.environ.setdefault("TSC_PG_DB", f"tsc_test_{_RUN}")

import django
import psycopg2
import pytest
from django.conf import settings

django.setup()

from django.core.management import call_command
from django.db import connection, connections
from django_tenants.utils import schema_context

from tenant_schemas_celery.cache import tenant_cache
from tests.project.settings import BEAT

if BEAT:
    from tests.beat_helpers import beat_db, beat_queue  # noqa: F401 -- fixtures of beat tests
from tests.celery_backports import defer_nested_result_unsubscribes
from tests.project.celery import app
from tests.project.customers.models import Client, Domain
from tests.project.notes.models import Note
from tests.project.notes.tasks import EVENTS_KEY, events
from tests.project.runtime_conf import set_setting
from tests.workers import worker

defer_nested_result_unsubscribes()

#: Test modules that need django-celery-beat (the "beat" extra), not collected without it.
BEAT_MODULES = [
    "beat_compose_schedulers.py",
    "beat_gated_scheduler.py",
    "beat_ha_schedulers.py",
    "test_background_read.py",
    "test_beat_background_read.py",
    "test_beat_compose.py",
    "test_beat_e2e.py",
    "test_beat_zones_e2e.py",
    "test_beat_fuzz.py",
    "test_beat_ha.py",
    "test_beat_sql.py",
    "test_compat_pypi.py",
    "test_db_scheduler.py",
    "test_scheduler_zones.py",
    "test_dispatch.py",
    "test_fanout.py",
    "test_model_entry.py",
    "test_internals_beat.py",
    "test_readme.py",
    "test_scheduler.py",
]
collect_ignore = [] if BEAT else BEAT_MODULES

TENANTS = ("tenant1", "tenant2")
BROKERS = {
    "redis": f"{settings.REDIS_URL}/13",
    "amqp": settings.AMQP_URL,
}


def _admin_sql(*statements: str) -> None:
    db = settings.DATABASES["default"]
    admin = psycopg2.connect(
        dbname="postgres", user=db["USER"], password=db["PASSWORD"], host=db["HOST"],
        port=db["PORT"],
    )  # fmt: skip
    admin.autocommit = True
    with admin.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement.format(name=db["NAME"]))
    admin.close()


def _recreate_database() -> None:
    _admin_sql('DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', 'CREATE DATABASE "{name}"')


def _drop_database() -> None:
    _admin_sql('DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
    _drop_database()


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
    set_setting(app, "broker_url", url)
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
