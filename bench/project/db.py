"""Create and drop the benchmark database: public migrated, K tenants, one note per schema."""

from __future__ import annotations

from typing import Any

import psycopg2
from django.conf import settings
from django.core.management import call_command
from django.db import connection, connections


def schema_names(count: int) -> list[str]:
    """Return the schema names of the benchmark's ``count`` tenants."""
    return [f"bench{index:03d}" for index in range(count)]


def admin_execute(statement: str, params: tuple[Any, ...] = ()) -> Any:
    """Run one statement in the ``postgres`` database; return its first row, if any."""
    db: dict[str, Any] = settings.DATABASES["default"]
    admin = psycopg2.connect(
        dbname="postgres",
        user=db["USER"],
        password=db["PASSWORD"],
        host=db["HOST"],
        port=db["PORT"],
    )
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchone() if cursor.description else None
    finally:
        admin.close()


def sessions_opened() -> int:
    """Return how many sessions PostgreSQL has counted for the benchmark database.

    ``pg_stat_database.sessions`` (PostgreSQL 14+) is flushed when a session
    ends, so read it after the sessions of interest are closed.
    """
    name = settings.DATABASES["default"]["NAME"]
    row = admin_execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (name,))
    return int(row[0]) if row and row[0] is not None else 0


def create_database(tenants: int) -> list[str]:
    """(Re)create the database with ``tenants`` tenants; return their schema names."""
    from django_tenants.utils import schema_context

    from tests.project.customers.models import Client
    from tests.project.notes.models import Note

    name = settings.DATABASES["default"]["NAME"]
    connections.close_all()
    admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin_execute(f'CREATE DATABASE "{name}"')
    call_command("migrate_schemas", shared=True, verbosity=0)
    Note.objects.create(pk=1, text="public")
    names = schema_names(tenants)
    for schema_name in names:
        Client(schema_name=schema_name, name=schema_name.upper()).save(verbosity=0)
        with schema_context(schema_name):
            Note.objects.create(pk=1, text=schema_name)
    connection.set_schema_to_public()
    connections.close_all()
    return names


def drop_database() -> None:
    """Drop the benchmark database (closing this process's connections first)."""
    connections.close_all()
    name = settings.DATABASES["default"]["NAME"]
    admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
