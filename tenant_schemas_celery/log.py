"""Logging: every record gets a ``schema_name`` field, and worker task lines show it."""

from __future__ import annotations

import logging
from typing import Any

from celery import current_task
from celery.app.defaults import DEFAULTS
from celery.app.log import Logging
from celery.signals import after_setup_logger, after_setup_task_logger

from .capture import current_schema_name

#: ``worker_task_log_format`` default of ``CeleryApp``: Celery's, with the schema.
DEFAULT_TASK_LOG_FORMAT = (
    "[%(asctime)s: %(levelname)s/%(processName)s] "
    "%(task_name)s[%(task_id)s] schema=%(schema_name)s: %(message)s"
)


class TenantLogging(Logging):
    """``CeleryApp``'s logging setup: Celery's, with the schema in the default task format.

    A ``worker_task_log_format`` you configure is used as it is.
    """

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        if getattr(self, "task_format", None) == DEFAULTS["worker_task_log_format"]:
            self.task_format = DEFAULT_TASK_LOG_FORMAT


class SchemaNameFilter(logging.Filter):
    """Set ``record.schema_name`` to the running task's schema (``-`` outside a task).

    It never drops a record, so it can be added to any handler; use the field as
    ``%(schema_name)s`` in ``worker_log_format`` or ``worker_task_log_format``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "schema_name"):
            record.schema_name = _schema_of_current_task()
        return True


def _schema_of_current_task() -> str:
    if not current_task:
        return "-"
    try:
        return current_schema_name() or "-"
    except Exception:
        return "-"


def install_filter(logger: logging.Logger, **kwargs: Any) -> None:
    """Add a ``SchemaNameFilter`` to each handler of ``logger`` that has none."""
    for handler in logger.handlers:
        if not any(isinstance(f, SchemaNameFilter) for f in handler.filters):
            handler.addFilter(SchemaNameFilter())


after_setup_logger.connect(install_filter, weak=False, dispatch_uid="tenant_schemas_celery.log")
after_setup_task_logger.connect(
    install_filter, weak=False, dispatch_uid="tenant_schemas_celery.task_log"
)
