"""One schedule entry, sent once per target schema: targets, readiness, spread, one producer.

Shared by every scheduler of the package. Beat only has to *send* a message whose
``_schema_name`` header names the schema; the worker side runs it there.

* Targets: an entry lists its schemas (``tenant_schemas``, ``"public"`` allowed
  without a tenant row), or goes to every tenant of the scheduler's
  ``get_queryset()``, the public schema excluded.
* Readiness: tenants whose schema does not exist in PostgreSQL yet are skipped
  (and logged once), found with one query for all of them.
* Spread: ``tenant_spread_seconds`` gives each schema a stable countdown offset.
* Sending: every message goes through the scheduler's ``apply_async(entry,
  producer=..., advance=False)`` (Celery's extension point), once per schema, with
  that schema active on django-tenants' connection; all of them through one
  producer (one broker connection), in pipelines where kombu supports it (Redis).
  No database query is made per tenant, and the result backend is not asked to
  watch for results beat never reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Protocol

from celery import _state as celery_state
from celery.beat import BeatLazyFunc
from celery.utils.log import get_logger
from django.db import connections

from ._sql import closing_on_error, tenant_schemas_existing
from .capture import SCHEMA_HEADER
from .conf import public_schema_name, tenant_db_alias
from .exceptions import InvalidSchemaName, TenantConfigurationError, _short_repr
from .resolution import validate_schema_name

#: Celery's beat logger: our lines read in line with Celery's own.
logger = get_logger("celery.beat")

#: Suffix (after ``@``) of the name of an entry that is sent to every tenant.
ALL_TENANTS = "__all_tenants_only__"
#: Header of a stored entry (a django-celery-beat row) that sends it to every tenant.
ALL_TENANTS_HEADER = "_all_tenants_only"
#: Header of a stored entry holding its ``tenant_spread_seconds``.
SPREAD_HEADER = "_tenant_spread_seconds"
#: Headers that instruct beat and are never sent to a worker.
BEAT_ONLY_HEADERS = frozenset({ALL_TENANTS_HEADER, SPREAD_HEADER})
#: Header Celery's scheduler adds to every message it sends.
BEAT_TASK_HEADER = "celery_beat_task"
#: Broker operations buffered before a write, where kombu batches publishes (Redis).
PUBLISH_BATCH_SIZE = 1000
#: Longest spread window (one year): a countdown beyond it is a mistake, and Celery could
#: not even compute the ETA of an infinite or huge one (``OverflowError`` at every send).
MAX_SPREAD_SECONDS = 365 * 24 * 3600

_HASH_BITS = 53  # a float's precision: offsets stay strictly below the window
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


def spread_offset(schema_name: str, window: float) -> float:
    """Return the stable offset of ``schema_name`` within ``window`` seconds, in ``[0, window)``.

    The offset comes from a BLAKE2 hash of the name, so it is the same in every
    process and at every run (unlike ``hash()``, which is salted per process).

    Example:
        >>> spread_offset("tenant1", 300) == spread_offset("tenant1", 300)
        True
        >>> spread_offset("tenant1", 0)
        0.0
    """
    if window <= 0:
        return 0.0
    digest = hashlib.blake2b(schema_name.encode("utf-8"), digest_size=8).digest()
    fraction = (int.from_bytes(digest, "big") >> (64 - _HASH_BITS)) / 2**_HASH_BITS
    return window * fraction


def validate_spread(value: object, option: str = "tenant_spread_seconds") -> float:
    """Return ``value`` as a number of seconds from 0 to ``MAX_SPREAD_SECONDS`` (None means 0).

    Raises:
        TenantConfigurationError: ``value`` is not such a number (``option`` names it).
    """
    if value is None:
        return 0.0
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value <= MAX_SPREAD_SECONDS
    ):
        raise TenantConfigurationError(
            f"{option} must be a number of seconds from 0 to {MAX_SPREAD_SECONDS} (one year), "
            f"got {_short_repr(value)}."
        )
    return float(value)


def validate_schema_list(value: object) -> tuple[str, ...]:
    """Return ``tenant_schemas`` as a tuple of valid schema names (a string is one name).

    Raises:
        TenantConfigurationError: ``value`` is not a list of names, or an item is not a
            usable schema name.
    """
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise TenantConfigurationError(
            f"tenant_schemas must be a list of schema names, got {_short_repr(value)}."
        )
    names = []
    for item in value:
        try:
            names.append(validate_schema_name(item))
        except InvalidSchemaName as exc:
            raise TenantConfigurationError(
                f"tenant_schemas holds {_short_repr(item)}, not a usable schema name: {exc.reason}."
            ) from exc
    return tuple(dict.fromkeys(names))


def header_flag(value: object, header: str) -> bool:
    """Return the boolean a header holds: true, false or None, or "true" / "false".

    Anything else is refused: a truthy string such as ``"no"`` must not send an entry
    to every tenant.

    Raises:
        TenantConfigurationError: ``value`` is none of these.

    Example:
        >>> header_flag("True", "_all_tenants_only"), header_flag(None, "_all_tenants_only")
        (True, False)
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise TenantConfigurationError(
        f"the {header} header must be true or false, got {_short_repr(value)}."
    )


def entry_spread(entry: Any) -> float:
    """Return the spread window of ``entry``: its ``tenant_spread_seconds``, else the
    ``_tenant_spread_seconds`` header of its options (0 without either)."""
    spread = getattr(entry, "tenant_spread_seconds", 0.0)
    if spread:
        return float(spread)
    return validate_spread((entry.options.get("headers") or {}).get(SPREAD_HEADER), SPREAD_HEADER)


def is_fanout_copy(entry: Any) -> bool:
    """Return whether ``entry`` is the one-schema copy ``send_to_schemas`` sends."""
    return FANOUT_SCHEMA_ATTR in getattr(entry, "__dict__", ())


def valid_schema_names(names: Iterable[str], rejected: OnceLog | None = None) -> list[str]:
    """Return the ``names`` that are usable schema names; report the others to ``rejected``."""
    valid, invalid = [], []
    for name in names:
        try:
            valid.append(validate_schema_name(name))
        except InvalidSchemaName:
            invalid.append(name)
    if rejected is not None:
        rejected.update(invalid)
    return valid


def invalid_names_log() -> OnceLog:
    """Return a ``OnceLog`` for tenants whose schema name is unusable."""
    return OnceLog("beat: Ignoring tenant schema %r: it is not a usable schema name.")


class OnceLog:
    """Log a warning the first time a schema is skipped, and again only after it recovered."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.reported: set[str] = set()

    def update(self, skipped: Iterable[str], checked: Iterable[str] = ()) -> None:
        """Report the ``skipped`` schemas not reported yet; forget the ``checked`` that were not."""
        skipped = set(skipped)
        self.reported -= set(checked) - skipped
        for schema_name in sorted(skipped - self.reported):
            logger.warning(self.message, schema_name)
        self.reported |= skipped


class TenantTargets:
    """The schemas entries are sent to, read at most once per burst of due entries.

    Parameters:
        get_queryset(Callable): returns the queryset of tenants beat may send to
            (the scheduler's ``get_queryset``).

    Call ``forget()`` when the beat loop goes to sleep: the next ``resolve()``
    reads the tenants again, so tenants created or deleted since are picked up.
    """

    def __init__(self, get_queryset: Callable[[], Any]) -> None:
        self.get_queryset = get_queryset
        self._ready: list[str] | None = None
        self._tenants: frozenset[str] = frozenset()
        self._invalid = invalid_names_log()
        self._not_ready = OnceLog(
            "beat: Skipping tenant schema %r: it does not exist in the database yet "
            "(tenant still being created?)."
        )
        self._not_tenant = OnceLog(
            "beat: Skipping schema %r: it is neither the public schema nor a tenant "
            "of the scheduler's get_queryset()."
        )

    def ready_tenants(self) -> list[str]:
        """Return the schema names of the tenants whose schema exists (public excluded)."""
        if self._ready is None:
            queryset = self.get_queryset()
            with closing_on_error(connections[queryset.db]):
                rows = tenant_schemas_existing(queryset)
            public = public_schema_name()
            names = valid_schema_names((name for name, _ in rows if name != public), self._invalid)
            existing = {name for name, exists in rows if exists}
            self._not_ready.update([name for name in names if name not in existing], names)
            self._tenants = frozenset(names)
            self._ready = [name for name in names if name in existing]
        return self._ready

    def resolve(self, tenant_schemas: Sequence[str] | None) -> list[str]:
        """Return the schemas an entry goes to: its ready ``tenant_schemas``, or all tenants."""
        ready = self.ready_tenants()
        if tenant_schemas is None:
            return list(ready)
        known = set(ready) | {public_schema_name()}
        self._not_tenant.update(set(tenant_schemas) - known - self._tenants, tenant_schemas)
        return [name for name in tenant_schemas if name in known]

    def forget(self) -> None:
        """Drop the tenants read so far; the next ``resolve()`` reads them again."""
        self._ready = None


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
                one.options = _options_for(base, schema_name, spread_offset(schema_name, window))
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
    flag (``celery._state``), and restores it at the end. The messages do not
    change, so the worker stores each result as usual.

    The flag is process-wide: while it is set, ``AsyncResult.get()`` in another thread
    of the process raises ``RuntimeError``, as in a worker. A beat process has no such
    thread; do not send fan-outs from a process whose threads wait for results.
    """
    set_flag = getattr(celery_state, "_set_task_join_will_block", None)
    if set_flag is None or celery_state.task_join_will_block():
        yield
        return
    set_flag(True)
    try:
        yield
    finally:
        set_flag(False)


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


def _options_for(base: Mapping[str, Any], schema_name: str, offset: float) -> dict[str, Any]:
    options = dict(base)
    options["headers"] = {**base["headers"], SCHEMA_HEADER: schema_name}
    if offset:
        _shift(options, offset)
    return options


def _shift(options: dict[str, Any], offset: float) -> None:
    """Delay the message by ``offset`` seconds, keeping a relative ``expires`` relative."""
    eta = options.get("eta")
    if isinstance(eta, datetime) and not options.get("countdown"):
        options["eta"] = eta + timedelta(seconds=offset)
    else:
        options["countdown"] = (options.get("countdown") or 0) + offset
    expires = options.get("expires")
    if isinstance(expires, (int, float)) and not isinstance(expires, bool):
        options["expires"] = expires + offset
