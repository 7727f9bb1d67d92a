"""django-tenants names that projects import from here (kept for the PyPI package's users).

The names are loaded on first access, so importing this module needs neither
configured settings nor a ready app registry.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_SOURCES = {
    "get_tenant_model": "django_tenants.utils",
    "get_public_schema_name": "django_tenants.utils",
    "schema_context": "django_tenants.utils",
    "tenant_context": "django_tenants.utils",
    "TenantMixin": "django_tenants.models",
    "TenantTestCase": "django_tenants.test.cases",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
