"""The dispatcher-task pattern as one call: send a task once per tenant.

``TenantTask.delay_for_tenants`` and ``apply_async_for_tenants`` use the same target
rules as beat (``fanout.py``): tenants whose schema does not exist yet are skipped,
``spread_seconds`` gives each tenant a stable offset, all messages share one
producer, and no query is made per tenant.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .capture import SCHEMA_HEADER
from .exceptions import TenantConfigurationError, _short_repr
from .fanout import TenantTargets, _options_for, spread_offset, validate_spread
from .resolution import validate_schema_name


def send_to_tenants(
    task: Any,
    args: Any = None,
    kwargs: Any = None,
    tenants: Iterable[Any] | None = None,
    spread_seconds: float = 0,
    **options: Any,
) -> dict[str, Any]:
    """Send ``task`` once per tenant; return each schema's ``AsyncResult``.

    Parameters:
        tenants(Iterable | None): tenants or schema names (``"public"`` allowed; one tenant
            or name alone is a list of one); None means every tenant of
            ``TenantAwareSchedulerMixin.get_queryset()``.
        spread_seconds(float): spread the sends over this window, each tenant at a
            stable offset (added to any ``countdown``). 0 sends them all now.
        options: ``apply_async`` options for every message.

    Raises:
        InvalidSchemaName: a schema name is not usable.
        TenantConfigurationError: ``spread_seconds`` is not a number of seconds from 0 to
            ``MAX_SPREAD_SECONDS``, or ``tenants`` is neither None, a tenant, a name nor
            an iterable of them.
    """
    from .scheduler import TenantAwareSchedulerMixin

    window = validate_spread(spread_seconds, "spread_seconds")
    wanted = None if tenants is None else _schema_names(tenants)
    schemas = TenantTargets(TenantAwareSchedulerMixin.get_queryset).resolve(wanted)
    base = {**options, "headers": dict(options.get("headers") or {})}
    base["headers"].pop(SCHEMA_HEADER, None)
    producer = base.pop("producer", None)
    results: dict[str, Any] = {}
    with task._get_app().producer_or_acquire(producer) as shared_producer:
        for schema_name in schemas:
            message = _options_for(base, schema_name, spread_offset(schema_name, window))
            results[schema_name] = task.apply_async(
                args, kwargs, producer=shared_producer, **message
            )
    return results


def _schema_names(tenants: Any) -> tuple[str, ...]:
    """Return the valid schema names of ``tenants``, in order, without duplicates."""
    if isinstance(tenants, str) or hasattr(tenants, "schema_name"):
        tenants = (tenants,)
    elif isinstance(tenants, (bytes, bytearray)) or not isinstance(tenants, Iterable):
        raise TenantConfigurationError(
            "tenants must be a tenant, a schema name, or an iterable of them, "
            f"got {_short_repr(tenants)}."
        )
    names = (validate_schema_name(getattr(tenant, "schema_name", tenant)) for tenant in tenants)
    return tuple(dict.fromkeys(names))
