"""Celery tasks that run in the django-tenants schema they were sent from."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    # Application and task
    "CeleryApp": "app",
    "TenantTask": "task",
    "headers_with_schema": "capture",
    # Beat schedulers (TenantAwareDatabaseScheduler needs the "beat" extra)
    "TenantAwareScheduler": "scheduler",
    "TenantAwarePersistentScheduler": "scheduler",
    "TenantAwareDatabaseScheduler": "db_scheduler",
    # Options and cache
    "SimpleCache": "cache",
    "tenant_cache": "cache",
    # Signals and logging
    "tenant_activated": "signals",
    "SchemaNameFilter": "log",
    # Errors
    "TenantSchemasCeleryError": "exceptions",
    "InvalidSchemaName": "exceptions",
    "TenantNotFound": "exceptions",
    "TenantSchemaMissing": "exceptions",
    "TenantLookupFailed": "exceptions",
    "TenantActivationMissing": "exceptions",
    "TenantConfigurationError": "exceptions",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
