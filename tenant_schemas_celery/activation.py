"""Run side: switch a task's database connections to its tenant, and back.

``enter`` runs from a ``task_prerun`` receiver and ``leave`` from a
``task_postrun`` receiver, so user receivers, ``on_success``/``on_failure``,
callbacks and chain steps all see the task's tenant. Failures are never raised
from the receivers (Celery would log and swallow them): they are recorded on the
request and raised by ``ensure_activated`` in place of the task body.

Nothing a previous task left in a session is trusted (``session``): before the
lookup, a transaction left open is rolled back and ``search_path`` forgotten; after
the switch, one statement sets ``search_path`` and proves the tenant's schema (with
the default lookup and no cached tenant, the lookup is that statement).

``leave`` restores the previous tenant at once, eager or not, so that what a worker
does between tasks (revoking a task, storing its state, a user's receiver of
``task_revoked``) is never in the last task's schema; restoring sends no query.
"""

from __future__ import annotations

import threading
from typing import Any

from django.db import connections

from .conf import public_schema_name
from .exceptions import TenantActivationMissing, TenantConfigurationError
from .otel import tag_span
from .resolution import resolve_tenant, schema_name_from_request
from .sentry import NOT_TAGGED, tag_events
from .session import (
    forget_search_path,
    mark_proven,
    prove_schema,
    search_path,
    settle_transaction,
)
from .signals import tenant_activated

#: Attribute of the task request (``task.request``) holding its ``Activation``.
ACTIVATION_ATTR = "_tenant_schemas_celery_activation"

_State = tuple[Any, bool]  # (tenant, include_public_schema) of a connection


class _Previous(threading.local):
    """Per thread (like Django's connections): the thread's last worker task."""

    task: str | None = None  # name[id], for the warning about a transaction it left open


_previous = _Previous()


class Activation:
    """What ``enter`` did for one task execution, for ``leave`` and the body guard."""

    __slots__ = ("error", "in_worker", "saved", "schema_name", "sentry_tag", "tenant")

    def __init__(
        self,
        schema_name: str,
        tenant: Any,
        error: BaseException | None,
        saved: list[tuple[Any, _State]],
        in_worker: bool,
    ) -> None:
        self.schema_name = schema_name
        self.tenant = tenant
        self.error = error
        self.saved = saved
        self.in_worker = in_worker
        self.sentry_tag: str | None = None


def enter(task: Any) -> Activation:
    """Switch the task's connections to the tenant its request names; never raises."""
    request = task.request
    in_worker = not request.is_eager
    this_task = f"{task.name}[{request.id}]" if in_worker else ""
    public = public_schema_name()
    schema_name, tenant, error, proven = public, None, None, False
    targets: list[Any] = []
    try:
        schema_name = schema_name_from_request(request, public)
        targets = [_tenant_connection(alias) for alias in task.get_tenant_databases()]
        _distrust_sessions(targets, in_worker, this_task)
        if schema_name != public:
            tenant, proven = resolve_tenant(task, schema_name, targets[0], public, in_worker)
    except Exception as exc:
        schema_name, tenant, error, proven = public, None, exc, False
    saved = [(connection, _state(connection)) for connection in targets]
    try:
        _switch_and_prove(targets, tenant, public, proven, in_worker)
    except Exception as exc:
        for connection in targets:
            connection.set_schema_to_public()
        schema_name, tenant, error = public, None, error or exc
    if in_worker:
        _previous.task = this_task
    activation = Activation(schema_name, tenant, error, saved, in_worker)
    activation.sentry_tag = tag_events(task, schema_name)
    tag_span(task, schema_name, request)
    setattr(request, ACTIVATION_ATTR, activation)
    if error is None and tenant_activated.receivers:
        tenant_activated.send(sender=task, task=task, tenant=tenant, schema_name=schema_name)
    return activation


def _distrust_sessions(targets: list[Any], in_worker: bool, this_task: str) -> None:
    """Before the lookup: end what a previous task left open, and forget its search_path."""
    for connection in targets:
        if in_worker:
            settle_transaction(connection, _previous.task, this_task)
        _check_connection(connection, in_worker)
        forget_search_path(connection)


def _switch_and_prove(
    targets: list[Any], tenant: Any, public: str, proven: bool, in_worker: bool
) -> None:
    """Switch each target to ``tenant``; set and prove the session of each open one.

    The first target is always proven (opened if need be), unless the lookup already
    did it (``proven``); another one that is not open gets a new session, whose first
    query sets its path.
    """
    for index, connection in enumerate(targets):
        _switch(connection, tenant, public)
        if index == 0 and proven:
            mark_proven(connection, search_path(connection, public), in_worker)
        elif index == 0 or connection.connection is not None:
            prove_schema(connection, public, fresh_session=in_worker)
        else:
            forget_search_path(connection)


def leave(task: Any) -> None:
    """Restore what ``enter`` switched, at once (no query: the next one sets the path)."""
    activation = getattr(task.request, ACTIVATION_ATTR, None)
    if type(activation) is not Activation:
        return
    for connection, state in reversed(activation.saved):
        _put(connection, *state)
    if activation.sentry_tag is not NOT_TAGGED:
        tag_events(task, activation.sentry_tag)


def note_worker_task(task: Any) -> None:
    """Remember a task that is not tenant-aware, for the open-transaction warning."""
    _previous.task = _describe(task)


def _describe(task: Any) -> str:
    return f"{task.name}[{task.request.id}]"


def ensure_activated(task: Any) -> None:
    """Raise the error that kept the task's tenant from being activated, if any.

    Raises:
        TenantSchemasCeleryError: the recorded activation failure.
        TenantActivationMissing: the task is executed by Celery but ``enter`` never ran.
    """
    stack = task.request_stack
    request = stack.top if stack is not None else None
    if request is None:  # run() called outside Celery on an unbound task
        return
    activation = getattr(request, ACTIVATION_ATTR, None)
    if type(activation) is Activation:
        if activation.error is not None:
            raise activation.error
    elif not request.called_directly:
        raise TenantActivationMissing(task.name)


def _tenant_connection(alias: str) -> Any:
    connection = connections[alias]
    if not hasattr(connection, "set_tenant"):
        raise TenantConfigurationError(
            f"Database {alias!r} does not use django-tenants' backend "
            "(ENGINE 'django_tenants.postgresql_backend'), so it cannot follow a tenant."
        )
    return connection


def _check_connection(connection: Any, in_worker: bool) -> None:
    """Close a connection that no longer works (say, after a PostgreSQL restart).

    Django checks this around web requests; a worker reusing its connections
    (``CELERY_DB_REUSE_MAX``) would otherwise keep failing on a dead one. A connection
    that failed earlier is checked here; with Django's ``CONN_HEALTH_CHECKS`` on, every
    worker task also re-arms Django's own check (one ``SELECT 1`` at its first query, as
    at the start of a web request), so even the first task after a restart runs.
    """
    if connection.connection is None:
        return
    if connection.errors_occurred:
        if connection.is_usable():
            connection.errors_occurred = False
        else:
            connection.close()
            return
    if in_worker and connection.health_check_enabled:
        connection.health_check_done = False


def _state(connection: Any) -> _State:
    return connection.tenant, connection.include_public_schema


def _switch(connection: Any, tenant: Any, public: str) -> None:
    if tenant is not None:
        _put(connection, tenant, True)
    elif connection.schema_name != public:
        connection.set_schema_to_public()


def _put(connection: Any, tenant: Any, include_public: bool) -> None:
    """Make ``tenant`` the connection's tenant, without a new SET when the schema is the same."""
    if connection.include_public_schema == include_public:
        if connection.tenant is tenant:
            return
        if connection.schema_name == tenant.schema_name:
            connection.tenant = tenant
            return
    connection.set_tenant(tenant, include_public)
