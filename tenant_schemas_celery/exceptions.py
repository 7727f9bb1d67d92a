"""Exceptions raised by tenant_schemas_celery.

Every exception takes its constructor arguments as ``args``, so it survives
pickling and Celery's JSON result serialization unchanged.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

_MAX_REPR = 80


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_REPR else f"{text[:_MAX_REPR]}...(truncated)"


class TenantSchemasCeleryError(Exception):
    """Base class of every error raised by tenant_schemas_celery."""


class InvalidSchemaName(TenantSchemasCeleryError, ValueError):
    """Raised when a ``_schema_name`` header is not a usable schema name."""

    def __init__(self, value: object, reason: str) -> None:
        super().__init__(value, reason)
        self.value = value
        self.reason = reason

    def __str__(self) -> str:
        return f"Invalid _schema_name header {_short_repr(self.value)}: {self.reason}."


class TenantNotFound(TenantSchemasCeleryError, LookupError):
    """Raised when no tenant exists for the schema a task was sent for."""

    def __init__(self, schema_name: str) -> None:
        super().__init__(schema_name)
        self.schema_name = schema_name

    def __str__(self) -> str:
        return (
            f"No tenant with schema_name {self.schema_name!r} exists (deleted after the "
            "task was sent?); the task did not run."
        )


class TenantSchemaMissing(TenantNotFound):
    """Raised when a tenant row exists but its schema does not, or is not migrated yet."""

    def __str__(self) -> str:
        return (
            f"Tenant {self.schema_name!r} exists, but its schema has no django_migrations "
            "table (not created yet, dropped, or not migrated); the task did not run."
        )


class TenantLookupFailed(TenantSchemasCeleryError):
    """Raised when looking the tenant up raised an unexpected error."""

    def __init__(self, schema_name: str, detail: str) -> None:
        super().__init__(schema_name, detail)
        self.schema_name = schema_name
        self.detail = detail

    def __str__(self) -> str:
        return (
            f"Looking up the tenant for schema {self.schema_name!r} failed: {self.detail}; "
            "the task did not run."
        )


class TenantActivationMissing(TenantSchemasCeleryError):
    """Raised when a tenant-aware task is traced without its tenant being activated."""

    def __init__(self, task_name: str) -> None:
        super().__init__(task_name)
        self.task_name = task_name

    def __str__(self) -> str:
        return (
            f"Task {self.task_name!r} was executed without tenant activation: the "
            "task_prerun receiver of tenant_schemas_celery did not run (was it disconnected?)."
        )


class TenantConfigurationError(TenantSchemasCeleryError, ImproperlyConfigured):
    """Raised when a tenant_schemas_celery option or setting has an invalid value."""
