"""One schedule entry, sent once per target schema, all over one producer.

Beat only has to *send* a message whose ``_schema_name`` header names the schema;
the worker side runs it there. Which schemas (``targets``) and their spread
(``spread``) are decided before: this module sends.

Every message goes through the scheduler's ``apply_async(entry, producer=...,
advance=False)`` (Celery's extension point), once per schema, with that schema active
on django-tenants' connection; all of them through one producer (one broker
connection), in pipelines where kombu supports it (Redis). No database query is made
per tenant, and the result backend is not asked to watch for results beat never reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from celery.beat import BeatLazyFunc
from celery.utils.log import get_logger
from django.db import connections

from .capture import BEAT_ONLY_HEADERS
from .conf import tenant_db_alias
from .internals import joins_will_block
from .spread import entry_spread, options_for_schema

__all__ = [
    "PUBLISH_BATCH_SIZE",
    "FanoutEntry",
    "is_fanout_copy",
    "results_not_awaited",
    "send_to_schemas",
]

#: Celery's beat logger: our lines read in line with Celery's own.
logger = get_logger("celery.beat")

#: Header Celery's scheduler adds to every message it sends.
BEAT_TASK_HEADER = "celery_beat_task"
#: Broker operations buffered before a write, where kombu batches publishes (Redis).
PUBLISH_BATCH_SIZE = 1000
#: Attribute of the one-schema copy of an entry that ``send_to_schemas`` hands to
#: ``apply_async``: the schema it is sent to.
FANOUT_SCHEMA_ATTR = "_tenant_fanout_schema"

#: ``apply_async(entry, producer)``: sends one schema's copy of an entry, returns its result.
ApplyAsync = Callable[[Any, Any], Any]


class FanoutEntry(Protocol):
    """What ``send_to_schemas`` needs of a schedule entry."""

    name: str
    task: str
    args: Any
    kwargs: Any
    options: dict[str, Any]
    tenant_spread_seconds: float


def is_fanout_copy(entry: Any) -> bool:
    """Return whether ``entry`` is the one-schema copy ``send_to_schemas`` sends."""
    return FANOUT_SCHEMA_ATTR in getattr(entry, "__dict__", ())


def send_to_schemas(
    app: Any,
    entry: FanoutEntry,
    schemas: Sequence[str],
    producer: Any = None,
    apply_async: ApplyAsync | None = None,
) -> list[str]:
    """Send ``entry``'s task once per schema, all over one producer; return the schemas sent.

    Each schema's message is sent by ``apply_async(copy, producer)`` (a scheduler's
    ``apply_async(copy, producer=producer, advance=False)``; by default, what
    Celery's ``Scheduler.apply_async`` does), with that schema active on
    django-tenants' connection (``connection.schema_name``). ``copy`` is a shallow
    copy of ``entry``, of its class, whose options carry the schema in the
    ``_schema_name`` header and, with a ``tenant_spread_seconds`` window, that
    schema's ``spread_offset`` as extra countdown (numeric ``expires`` move with
    it); beat's own headers (``_all_tenants_only``, ``_tenant_spread_seconds``)
    are left out. Arguments made with ``BeatLazyFunc`` are evaluated once for the
    whole run. Where kombu can (``Producer.batch``: Redis), the messages are
    written in pipelines of ``PUBLISH_BATCH_SIZE``, not one round trip each. The
    result backend does not subscribe to their results (see ``results_not_awaited``).
    The schema active before comes back at the end.

    The first failed send is logged and ends the run: the failure (broker down,
    arguments that cannot be serialized) would be the same for the other schemas.
    """
    if not schemas:
        return []
    send = apply_async or _celery_apply_async(app)
    template = _copy(entry)
    template.args = [_evaluate(value) for value in entry.args or ()]
    template.kwargs = {key: _evaluate(value) for key, value in (entry.kwargs or {}).items()}
    base = _base_options(entry.options)
    window = entry_spread(entry)
    fields = template.__dict__
    cls: Any = type(entry)
    new = cls.__new__
    sent: list[str] = []
    try:
        with (
            results_not_awaited(),
            app.producer_or_acquire(producer) as shared,
            _batched(shared),
            _active_schema() as activate,
        ):
            for schema_name in schemas:
                one = new(cls)
                one.__dict__.update(fields)
                one.options = options_for_schema(base, schema_name, window)
                one.__dict__[FANOUT_SCHEMA_ATTR] = schema_name
                activate(schema_name)
                try:
                    send(one, shared)
                except Exception:
                    logger.exception(
                        "beat: Sending %r (%s) to schema %r failed; its %d remaining "
                        "schema(s) are not sent in this run.",
                        entry.name,
                        entry.task,
                        schema_name,
                        len(schemas) - len(sent) - 1,
                    )
                    break
                sent.append(schema_name)
    except Exception:
        logger.exception(
            "beat: Sending %r (%s) failed after %d message(s); the last %d of them may not "
            "have reached the broker.",
            entry.name,
            entry.task,
            len(sent),
            min(len(sent), PUBLISH_BATCH_SIZE),
        )
    return sent


def _copy(entry: Any) -> Any:
    """Return a shallow copy of ``entry`` made without calling its ``__init__``."""
    cls: Any = type(entry)
    copied = cls.__new__(cls)
    copied.__dict__.update(entry.__dict__)
    return copied


def _celery_apply_async(app: Any) -> ApplyAsync:
    """Return a sender doing what Celery's ``Scheduler.apply_async`` does with an entry."""

    def send(entry: Any, producer: Any) -> Any:
        task = app.tasks.get(entry.task)
        if task is not None:
            return task.apply_async(entry.args, entry.kwargs, producer=producer, **entry.options)
        return app.send_task(
            entry.task, entry.args, entry.kwargs, producer=producer, **entry.options
        )

    return send


@contextmanager
def _active_schema() -> Iterator[Callable[[str], None]]:
    """Yield a function making a schema active on django-tenants' connection; the tenant
    active before comes back at the end."""
    connection = connections[tenant_db_alias()]
    previous = getattr(connection, "tenant", None)

    def activate(schema_name: str) -> None:
        if connection.schema_name != schema_name:
            connection.set_schema(schema_name)

    try:
        yield activate
    finally:
        if previous is None:
            connection.set_schema_to_public()
        elif connection.tenant is not previous:
            connection.set_tenant(previous)


@contextmanager
def results_not_awaited() -> Iterator[None]:
    """Within the block, tell Celery's result backend that no one here waits for a result.

    Celery's Redis result backend subscribes to the result of every message it
    sends, and unsubscribes when the ``AsyncResult`` is freed: two round trips per
    message, not pipelined; the RPC backend declares a reply queue, where results
    then pile up. Beat never reads a result. Celery skips that work in processes
    where joining a result would block (its worker processes): the block sets that
    flag (``internals.joins_will_block``), and restores it at the end. The messages
    do not change, so the worker stores each result as usual.

    The flag is process-wide: while it is set, ``AsyncResult.get()`` in another thread
    of the process raises ``RuntimeError``, as in a worker. A beat process has no such
    thread; do not send fan-outs from a process whose threads wait for results.
    """
    with joins_will_block():
        yield


@contextmanager
def _batched(producer: Any) -> Iterator[None]:
    """Group the producer's publishes in transport batches, where kombu supports them."""
    batch = getattr(producer, "batch", None)
    if batch is None:
        yield
        return
    with batch(PUBLISH_BATCH_SIZE):
        yield


def _evaluate(value: Any) -> Any:
    return value() if isinstance(value, BeatLazyFunc) else value


def _base_options(options: Mapping[str, Any]) -> dict[str, Any]:
    base = dict(options)
    headers = {
        key: value
        for key, value in (options.get("headers") or {}).items()
        if key not in BEAT_ONLY_HEADERS
    }
    headers[BEAT_TASK_HEADER] = True
    base["headers"] = headers
    return base
