"""``TenantTaskRegistry``: the task registry of ``CeleryApp``."""

from __future__ import annotations

from typing import Any

from celery.app.registry import TaskRegistry

from .task import make_tenant_aware


class TenantTaskRegistry(TaskRegistry):
    """A task registry that makes every task registered through ``register`` tenant-aware."""

    def register(self, task: Any) -> None:
        """Register ``task`` (a class or an instance), made a ``TenantTask`` if it is not one."""
        super().register(make_tenant_aware(task))
