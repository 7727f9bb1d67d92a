"""Remote-control inspect commands that show the schema of the tasks a worker holds.

``celery inspect active`` and ``reserved`` do not show message headers, so these
commands add the ``_schema_name`` of each request::

    celery -A proj inspect tenant_active
    celery -A proj inspect tenant_reserved
    celery -A proj inspect tenant_scheduled
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celery.worker import state as worker_state
from celery.worker.control import inspect_command
from celery.worker.request import Request

from .capture import SCHEMA_HEADER


def describe(requests: Iterable[Any]) -> list[dict[str, Any]]:
    """Return ``id``, ``name``, ``schema_name`` and ``worker_pid`` of each request."""
    return [
        {
            "id": request.id,
            "name": request.name,
            "schema_name": request.request_dict.get(SCHEMA_HEADER),
            "worker_pid": request.worker_pid,
        }
        for request in requests
    ]


@inspect_command()
def tenant_active(state: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """List the tasks being executed, with their schema."""
    return describe(worker_state.active_requests)


@inspect_command()
def tenant_reserved(state: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """List the tasks received but not yet executed, with their schema."""
    active = worker_state.active_requests
    return describe(r for r in worker_state.reserved_requests if r not in active)


@inspect_command()
def tenant_scheduled(state: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """List the tasks waiting for their ETA or countdown, with their schema and ETA."""
    requests = waiting_requests(state.consumer.timer)
    return [
        {**row, "eta": request.eta.isoformat() if request.eta else None}
        for row, request in zip(describe(requests), requests)
    ]


def waiting_requests(timer: Any) -> list[Request]:
    """Return the requests the worker's timer holds until their ETA, soonest first.

    Celery's consumer puts each message with an ETA or a countdown (a spread run's
    messages too) in its timer, as an entry whose first argument is the request; it
    is reserved only once due. The timer's ``schedule.queue`` is a sorted copy.
    """
    requests = []
    for waiting in timer.schedule.queue:
        first = next(iter(getattr(waiting.entry, "args", None) or ()), None)
        if isinstance(first, Request):
            requests.append(first)
    return requests
