"""Send side: the message headers naming where a task runs, and the one that carries the
active schema (``_schema_name``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from .conf import tenant_db_alias

#: The message header that carries the schema a task runs in (same as the PyPI package).
SCHEMA_HEADER = "_schema_name"
#: Header of a schedule entry (a django-celery-beat row) that sends it to every tenant.
ALL_TENANTS_HEADER = "_all_tenants_only"
#: Header of a schedule entry holding its ``tenant_spread_seconds``.
SPREAD_HEADER = "_tenant_spread_seconds"
#: Header of a schedule entry holding its ``tenant_timezone`` (see ``zones``).
TIMEZONE_HEADER = "_tenant_timezone"
#: Headers that instruct beat and are never sent to a worker.
BEAT_ONLY_HEADERS = frozenset({ALL_TENANTS_HEADER, SPREAD_HEADER, TIMEZONE_HEADER})
#: Headers naming where a schedule entry goes (see ``entry_headers``).
TARGET_HEADERS = frozenset({SCHEMA_HEADER, *BEAT_ONLY_HEADERS})


def current_schema_name() -> str | None:
    """Return the schema active on django-tenants' connection, or None without one."""
    try:
        connection = connections[tenant_db_alias()]
    except ImproperlyConfigured:  # Django settings are not configured in this process
        return None
    return getattr(connection, "schema_name", None)


def headers_with_schema(headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return a new headers dict carrying the active schema in ``_schema_name``.

    The caller's mapping is never modified, and a ``_schema_name`` it already
    holds wins over the active schema.

    Example:
        >>> from django_tenants.utils import schema_context
        >>> with schema_context("tenant1"):
        ...     headers_with_schema({"x": 1})
        {'x': 1, '_schema_name': 'tenant1'}
    """
    new_headers = dict(headers) if headers else {}
    if SCHEMA_HEADER not in new_headers:
        schema_name = current_schema_name()
        if schema_name is not None:
            new_headers[SCHEMA_HEADER] = schema_name
    return new_headers


def headers_carrying(headers: Mapping[str, Any] | None, schema_name: str | None) -> dict[str, Any]:
    """Return ``headers_with_schema(headers)`` for ``schema_name``, already looked up.

    For a caller that needs the active schema anyway (to stamp a canvas): one lookup.
    """
    new_headers = dict(headers) if headers else {}
    if schema_name is not None and SCHEMA_HEADER not in new_headers:
        new_headers[SCHEMA_HEADER] = schema_name
    return new_headers


def entry_headers(
    headers: Mapping[str, Any],
    schema_name: str | None,
    spread: float = 0.0,
    timezone: str | None = None,
) -> dict[str, Any]:
    """Return a schedule entry's ``headers`` with its targets replaced, as the PyPI package
    stores them: ``_schema_name`` naming the one schema, or (``schema_name`` None)
    ``"_all_tenants_only": True``; a spread window in ``_tenant_spread_seconds``; and a
    ``tenant_timezone`` in ``_tenant_timezone``.

    Example:
        >>> entry_headers({"x": 1, "_schema_name": "a"}, None, 60)
        {'x': 1, '_all_tenants_only': True, '_tenant_spread_seconds': 60}
    """
    new_headers = {key: value for key, value in headers.items() if key not in TARGET_HEADERS}
    if schema_name is None:
        new_headers[ALL_TENANTS_HEADER] = True
    else:
        new_headers[SCHEMA_HEADER] = schema_name
    if spread:
        new_headers[SPREAD_HEADER] = spread
    if timezone is not None:
        new_headers[TIMEZONE_HEADER] = timezone
    return new_headers
