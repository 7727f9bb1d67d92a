"""OpenTelemetry: the span of a task carries its tenant's schema as an attribute.

The span is the one opentelemetry-instrumentation-celery opens for the task
(``run/<task name>``); it gets the attribute ``tenant.schema_name``. On by default
when that instrumentation is installed; set the Celery setting
``task_tenant_otel_attribute = False`` (``CELERY_TASK_TENANT_OTEL_ATTRIBUTE``) to turn
it off.

The instrumentation opens the span in its own ``task_prerun`` receiver, which may run
before or after this library's: ``tag_span`` (called when the tenant is activated)
sets the attribute at once if the span is open, and a ``task_postrun`` receiver sets it
before the instrumentation ends the span otherwise.
"""

from __future__ import annotations

from typing import Any

from celery.signals import task_postrun

from .conf import app_setting

try:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.celery.utils import retrieve_context
except ImportError:  # pragma: no cover - opentelemetry is optional
    CeleryInstrumentor = None  # type: ignore[assignment,misc]
    retrieve_context = None  # type: ignore[assignment]

#: The attribute set on the span of a task.
OTEL_ATTRIBUTE = "tenant.schema_name"
#: Attribute of the task request holding the schema to set on the span.
_PENDING_ATTR = "_tenant_schemas_celery_otel_schema"


def _instrumented() -> bool:
    """Whether the Celery instrumentation is on (installed, and ``instrument()`` called)."""
    return _INSTRUMENTOR is not None and bool(_INSTRUMENTOR.is_instrumented_by_opentelemetry)


#: The instrumentor is a singleton: this is the instance ``instrument()`` switches on.
_INSTRUMENTOR = CeleryInstrumentor() if CeleryInstrumentor is not None else None


def _task_span(task: Any) -> Any:
    """Return the instrumentation's open span of the running task, or None."""
    task_id = getattr(task.request, "id", None)
    if retrieve_context is None or task_id is None:
        return None
    context = retrieve_context(task, task_id)
    return None if context is None else context[0]


def tag_span(task: Any, schema_name: str, request: Any = None) -> None:
    """Set ``tenant.schema_name`` on the task's span (now, or when it is ended).

    Does nothing unless opentelemetry-instrumentation-celery is installed and on, and the
    ``task_tenant_otel_attribute`` setting is not False. ``request`` is the task's
    request, when the caller has it at hand.
    """
    if not _instrumented():
        return
    if app_setting(task.app, "task_tenant_otel_attribute") is False:
        return
    setattr(task.request if request is None else request, _PENDING_ATTR, schema_name)
    span = _task_span(task)
    if span is not None and span.is_recording():
        span.set_attribute(OTEL_ATTRIBUTE, schema_name)


@task_postrun.connect(weak=False, dispatch_uid="tenant_schemas_celery.otel")
def _tag_span_at_end(sender: Any = None, **kwargs: Any) -> None:
    """Set the attribute on a span the instrumentation opened after the tenant's activation."""
    if sender is None or not _instrumented():
        return
    schema_name = getattr(sender.request, _PENDING_ATTR, None)
    if schema_name is None:
        return
    span = _task_span(sender)
    if span is not None and span.is_recording():
        span.set_attribute(OTEL_ATTRIBUTE, schema_name)
