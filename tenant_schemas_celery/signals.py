"""Signals sent by tenant_schemas_celery, and its receivers of Django model signals.

The receivers keep the tenant cache fresh, and publish changes to django-celery-beat's
periodic tasks to PostgreSQL's statistics at once, for ``TenantAwareDatabaseScheduler``.
"""

from __future__ import annotations

from typing import Any

from celery.utils.dispatch import Signal
from django.db import connections, transaction
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


#: django-celery-beat's change marker model, bumped on every change of a periodic task.
BEAT_CHANGES_MODEL = "django_celery_beat.PeriodicTasks"


def _publish_beat_change(sender: Any, using: str, **kwargs: Any) -> None:
    """Have PostgreSQL publish this connection's table statistics at its next idle moment.

    ``TenantAwareDatabaseScheduler`` finds changed schemas by the activity counters of
    their change marker table. PostgreSQL 15+ publishes a connection's counters at most
    once a second, and otherwise only after 10 s of idleness: forcing the next flush
    makes a change visible to beat as soon as its transaction ends.
    """
    if sender._meta.label != BEAT_CHANGES_MODEL:
        return
    connection = connections[using]
    if connection.vendor == "postgresql" and connection.pg_version >= 150000:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_force_next_flush()")


post_save.connect(_publish_beat_change, dispatch_uid="tenant_schemas_celery.publish_beat_change")
post_save.connect(_on_model_change, dispatch_uid="tenant_schemas_celery.forget_saved_tenant")
post_delete.connect(_on_model_change, dispatch_uid="tenant_schemas_celery.forget_deleted_tenant")
