"""Schema names validated (a header, a list of them, a header flag), and, on the run side,
from a task request to its schema name and its tenant."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django_tenants.utils import get_tenant_model

from .capture import SCHEMA_HEADER
from .conf import tenant_cache_seconds
from .exceptions import (
    InvalidSchemaName,
    TenantConfigurationError,
    TenantLookupFailed,
    TenantNotFound,
    TenantSchemasCeleryError,
    _short_repr,
)
from .invalidation import catch_up
from .proven_lookup import can_fuse, fetch_proven_tenant

#: PostgreSQL's limit on identifier length, in bytes.
MAX_SCHEMA_NAME_BYTES = 63

_FORBIDDEN_CHARACTERS = re.compile(r"[\"'\\;\x00\r\n]")
_MISSING = object()


def schema_name_from_request(request: Any, default: str) -> str:
    """Return the validated ``_schema_name`` header of a task request, or ``default``.

    A missing header, or one that is None (JSON null), means no tenant: ``default``.

    Raises:
        InvalidSchemaName: the header is present but not a valid schema name.
    """
    value = getattr(request, SCHEMA_HEADER, _MISSING)
    if value is _MISSING:
        headers = getattr(request, "headers", None)
        value = headers.get(SCHEMA_HEADER, _MISSING) if isinstance(headers, dict) else _MISSING
    if value is _MISSING or value is None:
        return default
    return validate_schema_name(value)


def validate_schema_name(value: object) -> str:
    """Return ``value`` if it can name a django-tenants schema, else raise InvalidSchemaName.

    A valid name is a non-empty string of at most 63 bytes (UTF-8) that does not
    start with ``pg_`` and holds no quote, backslash, semicolon, NUL or line break.
    """
    if type(value) is str:
        return _validate_text(value)
    if not isinstance(value, str):
        raise InvalidSchemaName(value, f"expected a string, got {type(value).__name__}")
    return _validate_text(str(value))


@lru_cache(maxsize=4096)
def _validate_text(value: str) -> str:
    """Validate a ``str`` (valid names are remembered: the same few recur on every task)."""
    if not value:
        raise InvalidSchemaName(value, "it is empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidSchemaName(value, "it is not valid UTF-8 text") from None
    if size > MAX_SCHEMA_NAME_BYTES:
        raise InvalidSchemaName(
            value, f"it is {size} bytes long, over PostgreSQL's 63-byte identifier limit"
        )
    if value[:3].lower() == "pg_":
        raise InvalidSchemaName(value, "names starting with 'pg_' are reserved by PostgreSQL")
    if _FORBIDDEN_CHARACTERS.search(value):
        raise InvalidSchemaName(value, "it holds a quote, backslash, semicolon, NUL or line break")
    return value


def validate_schema_list(
    value: object, option: str = "tenant_schemas", tenants: bool = False
) -> tuple[str, ...]:
    """Return the schema names ``value`` lists, validated, in order, without duplicates.

    A string is one name; a list, tuple or set, a list of names. With ``tenants`` (an
    argument that takes tenants too), a tenant (an object with a ``schema_name``)
    counts as its name, and any iterable but bytes (a queryset, say) is a list.

    Raises:
        TenantConfigurationError: ``value`` is no such list, or holds something that is
            not a usable schema name (``option`` names the argument or option).

    Example:
        >>> validate_schema_list(["a", "b", "a"])
        ('a', 'b')
    """
    if isinstance(value, str) or (tenants and hasattr(value, "schema_name")):
        value = (value,)
    elif not isinstance(value, (list, tuple, set, frozenset)) and not (
        tenants and isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray))
    ):
        kinds = "a list of schema names"
        if tenants:
            kinds = "a tenant, a schema name, or an iterable of them"
        raise TenantConfigurationError(f"{option} must be {kinds}, got {_short_repr(value)}.")
    names = []
    for item in value:
        name = getattr(item, "schema_name", item) if tenants else item
        try:
            names.append(validate_schema_name(name))
        except InvalidSchemaName as exc:
            raise TenantConfigurationError(
                f"{option} holds {_short_repr(name)}, not a usable schema name: {exc.reason}."
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


def lookup_tenant(task: Any, schema_name: str) -> Any:
    """Return the tenant of ``schema_name`` from the task's ``get_tenant_for_schema`` hook.

    The hook is called for every task, so an override always decides; the default
    hook uses the tenant cache (``tenant_cache_seconds``).

    Raises:
        TenantNotFound: no tenant has that schema name.
        TenantLookupFailed: the lookup raised anything else (a database error, say).
    """
    try:
        tenant = task.get_tenant_for_schema(schema_name)
    except ObjectDoesNotExist:
        raise TenantNotFound(schema_name) from None
    except TenantSchemasCeleryError:
        raise
    except Exception as exc:
        raise TenantLookupFailed(schema_name, f"{type(exc).__name__}: {exc}") from exc
    if tenant is None:
        raise TenantNotFound(schema_name)
    return tenant


#: Marks ``TenantTask.get_tenant_for_schema``'s own function (not an override).
DEFAULT_LOOKUP_ATTR = "_tenant_schemas_celery_default_lookup"


def uses_default_lookup(task: Any) -> bool:
    """Return True if the task's class keeps ``TenantTask``'s own ``get_tenant_for_schema``."""
    hook = getattr(type(task).get_tenant_for_schema, "__func__", None)
    return getattr(hook, DEFAULT_LOOKUP_ATTR, False) is True


def resolve_tenant(
    task: Any, schema_name: str, connection: Any, public: str, fresh_session: bool = False
) -> tuple[Any, bool]:
    """Return the tenant of ``schema_name``, and whether ``connection`` is already proven.

    With the default lookup and no cached tenant, the row is read by the statement that
    also sets ``connection``'s ``search_path`` and proves the schema (``proven_lookup``);
    otherwise the task's ``get_tenant_for_schema`` is called and the caller proves.
    ``fresh_session`` (a worker task) is passed on to the proof (``session.run_proof``).

    Raises:
        TenantNotFound, TenantSchemaMissing, TenantLookupFailed: as ``lookup_tenant``.
    """
    if not uses_default_lookup(task):
        return lookup_tenant(task, schema_name), False
    cache = task.tenant_cache()
    cache_seconds = tenant_cache_seconds(task)
    tenant = cache_hit(cache, schema_name, cache_seconds)  # before building a lookup
    if tenant is not None:
        return tenant, False
    model = get_tenant_model()
    if not can_fuse(model, connection):
        return lookup_tenant(task, schema_name), False
    tenant = fetch_proven_tenant(model, connection, schema_name, public, fresh_session)
    if cache_seconds:
        cache.set(schema_name, tenant, cache_seconds)
    return tenant, True


def cached_tenant(
    cache: Any, schema_name: str, cache_seconds: float, lookup: Callable[[str], Any]
) -> Any:
    """Return the tenant of ``schema_name`` from ``cache``, or from ``lookup`` (then cached).

    Parameters:
        cache_seconds(float): how old a cached tenant may be; 0 always calls ``lookup``.
    """
    tenant = cache_hit(cache, schema_name, cache_seconds)
    if tenant is None:
        tenant = lookup(schema_name)
        if cache_seconds:
            cache.set(schema_name, tenant, cache_seconds)
    return tenant


def cache_hit(cache: Any, schema_name: str, cache_seconds: float) -> Any:
    """Return the tenant of ``schema_name`` cached at most ``cache_seconds`` ago, or None
    (always None with 0). Invalidations broadcast meanwhile are taken first."""
    if not cache_seconds:
        return None
    catch_up()
    return cache.get(schema_name, None, max_age=cache_seconds)
