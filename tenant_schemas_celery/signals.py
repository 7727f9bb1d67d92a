"""Signals sent by tenant_schemas_celery, and the receivers that keep the tenant cache fresh."""

from __future__ import annotations

from typing import Any

from celery.utils.dispatch import Signal
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from .cache import tenant_cache

tenant_activated = Signal(name="tenant_activated", providing_args={"task", "tenant", "schema_name"})
tenant_activated.__doc__ = """Sent after a task's tenant is activated, before its body runs.

Arguments: ``sender`` and ``task`` (the task), ``tenant`` (the tenant object, or
None for the public schema) and ``schema_name``.
"""


def forget_tenant(tenant: Any) -> None:
    """Drop ``tenant`` from this process's tenant cache, under its current and former names."""
    tenant_cache.delete(tenant.schema_name)
    if tenant.pk is not None:
        tenant_type = type(tenant)
        tenant_cache.discard_where(
            lambda cached: type(cached) is tenant_type and cached.pk == tenant.pk
        )


def _on_model_change(sender: type, instance: Any, **kwargs: Any) -> None:
    if not _is_tenant_model(sender):
        return
    forget_tenant(instance)
    from .invalidation import forget_everywhere

    schema_name = instance.schema_name
    transaction.on_commit(lambda: forget_everywhere(schema_name), using=instance._state.db)


def _is_tenant_model(model: type) -> bool:
    from django_tenants.utils import get_tenant_model

    return issubclass(model, get_tenant_model())


post_save.connect(_on_model_change, dispatch_uid="tenant_schemas_celery.forget_saved_tenant")
post_delete.connect(_on_model_change, dispatch_uid="tenant_schemas_celery.forget_deleted_tenant")
