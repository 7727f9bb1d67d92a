"""Send side: put the active schema in the ``_schema_name`` message header."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from .conf import tenant_db_alias

#: The message header that carries the schema a task runs in (same as the PyPI package).
SCHEMA_HEADER = "_schema_name"


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
