"""The dispatcher-task pattern as one call: send a task once per tenant.

``TenantTask.delay_for_tenants`` and ``apply_async_for_tenants`` use the same target
rules as beat (``targets.py``): tenants whose schema does not exist yet are skipped,
``spread_seconds`` gives each tenant a stable offset, all messages share one
producer, and no query is made per tenant. What is skipped is logged (one warning per
call, naming the schemas) and listed in the result's ``skipped``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from celery.utils.log import get_logger

from .capture import SCHEMA_HEADER
from .resolution import validate_schema_list
from .spread import options_for_schema, validate_spread
from .targets import read_readiness, tenant_queryset

__all__ = ["TenantResults", "send_to_tenants"]

logger = get_logger(__name__)

#: Skipped schemas named in the warning; the others are counted.
_LOGGED_NAMES = 20


class TenantResults(dict[str, Any]):
    """The ``AsyncResult`` of each schema a task was sent to, keyed by schema name.

    A plain ``dict`` in every other respect. ``skipped`` maps each schema that was
    asked for (or, with ``tenants=None``, each tenant) but not sent to, to the reason,
    in the order asked.

    Example::

        results = task.delay_for_tenants(tenants=["tenant1", "nope"])
        list(results)  # ['tenant1']
        results.skipped  # {'nope': 'neither the public schema nor a tenant of ...'}
    """

    skipped: dict[str, str]

    def __init__(
        self, results: Mapping[str, Any] | None = None, skipped: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(results or {})
        self.skipped = dict(skipped or {})


def send_to_tenants(
    task: Any,
    args: Any = None,
    kwargs: Any = None,
    tenants: Iterable[Any] | None = None,
    spread_seconds: float = 0,
    **options: Any,
) -> TenantResults:
    """Send ``task`` once per tenant; return each schema's ``AsyncResult`` (``TenantResults``).

    Parameters:
        tenants(Iterable | None): tenants or schema names (``"public"`` allowed; one tenant
            or name alone is a list of one); None means every tenant of
            ``TenantAwareSchedulerMixin.get_queryset()``.
        spread_seconds(float): spread the sends over this window, each tenant at a
            stable offset (added to any ``countdown``). 0 sends them all now.
        options: ``apply_async`` options for every message.

    Schemas not sent to (not a tenant, schema not created yet) are logged as one
    warning and listed, with the reason, in the result's ``skipped``.

    Raises:
        TenantConfigurationError: ``tenants`` is neither None, a tenant, a name nor an
            iterable of them, or holds a name that is not a usable schema name; or
            ``spread_seconds`` is not a number of seconds from 0 to ``MAX_SPREAD_SECONDS``.
    """
    window = validate_spread(spread_seconds, "spread_seconds")
    wanted = None if tenants is None else validate_schema_list(tenants, "tenants", tenants=True)
    schemas, skipped = read_readiness(tenant_queryset()).split(wanted)
    if skipped:
        _log_skipped(task, skipped)
    base = {**options, "headers": dict(options.get("headers") or {})}
    base["headers"].pop(SCHEMA_HEADER, None)
    producer = base.pop("producer", None)
    results = TenantResults(skipped=skipped)
    with task.app.producer_or_acquire(producer) as shared_producer:
        for schema_name in schemas:
            message = options_for_schema(base, schema_name, window)
            results[schema_name] = task.apply_async(
                args, kwargs, producer=shared_producer, **message
            )
    return results


def _log_skipped(task: Any, skipped: Mapping[str, str]) -> None:
    names = list(skipped)
    listed = "; ".join(f"{name!r}: {skipped[name]}" for name in names[:_LOGGED_NAMES])
    more = len(names) - _LOGGED_NAMES
    logger.warning(
        "%s: %d schema%s skipped, the task was not sent there: %s%s.",
        getattr(task, "name", task),
        len(names),
        "" if len(names) == 1 else "s",
        listed,
        f"; and {more} more (see the result's skipped)" if more > 0 else "",
    )
