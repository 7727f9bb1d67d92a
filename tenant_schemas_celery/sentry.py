"""Sentry: tag the events of a task with its tenant's schema, when sentry_sdk is set up.

On by default when ``sentry_sdk`` (2.0 or later) is installed and initialised; set the
Celery setting ``task_tenant_sentry_tag = False`` (``CELERY_TASK_TENANT_SENTRY_TAG``) to
turn it off.
"""

from __future__ import annotations

from typing import Any

from .conf import app_setting
from .internals import scope_tag

try:
    import sentry_sdk
except ImportError:  # pragma: no cover - sentry_sdk is optional
    sentry_sdk = None  # type: ignore[assignment]

#: The tag set on Sentry events of a task.
SENTRY_TAG = "tenant.schema_name"
#: Returned by ``tag_events`` when it did not tag (Sentry off): nothing to restore.
NOT_TAGGED = "<not tagged>"


def tag_events(task: Any, schema_name: str | None) -> str | None:
    """Tag the Sentry scope with ``schema_name`` (None removes the tag); return the old value.

    Does nothing, and returns ``NOT_TAGGED``, unless sentry_sdk is initialised and
    the ``task_tenant_sentry_tag`` setting is not False.
    """
    if sentry_sdk is None or not _initialized():
        return NOT_TAGGED
    if app_setting(task.app, "task_tenant_sentry_tag") is False:
        return NOT_TAGGED
    # Scope.get_isolation_scope, not sentry_sdk.get_isolation_scope: 2.0-2.11 lack the latter.
    scope = sentry_sdk.Scope.get_isolation_scope()
    previous: str | None = scope_tag(scope, SENTRY_TAG)
    if schema_name is None:
        scope.remove_tag(SENTRY_TAG)
    else:
        scope.set_tag(SENTRY_TAG, schema_name)
    return previous


def _initialized() -> bool:
    """Whether sentry_sdk is set up; always False before 2.0 (no isolation scopes)."""
    is_initialized = getattr(sentry_sdk, "is_initialized", None)
    return is_initialized is not None and bool(is_initialized())
