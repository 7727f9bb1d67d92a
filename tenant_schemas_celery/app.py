"""``CeleryApp``: a Celery app whose every task is tenant-aware."""

from __future__ import annotations

from typing import Any

from .canvas import carries_signatures, stamp_carried
from .capture import SCHEMA_HEADER, current_schema_name, headers_with_schema
from .internals import TaskBaseHook
from .task import TenantTask, make_tenant_aware, tenant_aware_class


class CeleryApp(TaskBaseHook):
    """A ``celery.Celery`` app whose tasks run in the schema they were sent from.

    ``task_cls`` is ``TenantTask``; tasks made from another base class (a custom
    ``celery.Task`` subclass, a class-based task) are given ``TenantTask``'s
    behaviour too. ``send_task`` by name carries the active schema as well.

    Example:
        >>> app = CeleryApp()
        >>> app.config_from_object("django.conf:settings", namespace="CELERY")
        >>> app.autodiscover_tasks()
    """

    task_cls = "tenant_schemas_celery.task:TenantTask"
    registry_cls = "tenant_schemas_celery.registry:TenantTaskRegistry"
    log_cls = "tenant_schemas_celery.log:TenantLogging"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Passed explicitly so that Celery's Django fix-up (before Celery 5.5) keeps it.
        kwargs.setdefault("task_cls", type(self).task_cls)
        super().__init__(*args, **kwargs)

    def task_base(self, base: Any) -> Any:
        """The base of a task made from a function, made tenant-aware."""
        return tenant_aware_class(base)

    def register_task(self, task: Any, **options: Any) -> Any:
        """Register a class-based task, made tenant-aware."""
        return super().register_task(make_tenant_aware(task), **options)

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Send a task by name, with the active schema in its ``_schema_name`` header.

        A ``TenantTask``'s ``apply_async`` (Celery's passes itself as ``task_type``) has
        put the header and stamped the signatures its message carries already: they are
        passed on as they are.
        """
        if isinstance(options.get("task_type"), TenantTask):
            return super().send_task(name, args, kwargs, **options)
        headers = options.get("headers")
        if not headers or SCHEMA_HEADER not in headers:
            options["headers"] = headers_with_schema(headers)
        if carries_signatures(options):
            stamp_carried(options, current_schema_name())
        return super().send_task(name, args, kwargs, **options)
