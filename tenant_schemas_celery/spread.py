"""Spreading one run over a window: each schema's stable offset, and its message options.

Used by the schedulers (``tenant_spread_seconds``) and by ``delay_for_tenants``
(``spread_seconds``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from .capture import SCHEMA_HEADER, SPREAD_HEADER
from .exceptions import TenantConfigurationError, _short_repr

__all__ = [
    "MAX_SPREAD_SECONDS",
    "entry_spread",
    "options_for_schema",
    "spread_offset",
    "validate_spread",
]

#: Longest spread window (one year): a countdown beyond it is a mistake, and Celery could
#: not even compute the ETA of an infinite or huge one (``OverflowError`` at every send).
MAX_SPREAD_SECONDS = 365 * 24 * 3600

_HASH_BITS = 53  # a float's precision: offsets stay strictly below the window


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


def entry_spread(entry: Any) -> float:
    """Return the spread window of ``entry``: its ``tenant_spread_seconds``, else the
    ``_tenant_spread_seconds`` header of its options (0 without either)."""
    spread = getattr(entry, "tenant_spread_seconds", 0.0)
    if spread:
        return float(spread)
    return validate_spread((entry.options.get("headers") or {}).get(SPREAD_HEADER), SPREAD_HEADER)


def options_for_schema(base: Mapping[str, Any], schema_name: str, window: float) -> dict[str, Any]:
    """Return ``base``'s ``apply_async`` options for ``schema_name``'s message: its schema in
    the ``_schema_name`` header (``base["headers"]`` must be a dict), and its
    ``spread_offset`` within ``window`` as extra countdown (a numeric ``expires`` moves
    with it)."""
    options = dict(base)
    options["headers"] = {**base["headers"], SCHEMA_HEADER: schema_name}
    offset = spread_offset(schema_name, window)
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
