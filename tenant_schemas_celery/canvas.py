"""Send side, canvas: every signature carried by a message runs in the sender's schema.

A message can carry signatures that a worker publishes later: ``link`` and
``link_error`` callbacks, the rest of a ``chain`` and a chord's body (``chord``).
They are published from inside another task, while that task's tenant is active,
so each is stamped when the canvas is applied: every task signature in them that has
no ``_schema_name`` header of its own gets the schema active at that moment.

The stamps go on copies: the caller's signatures, and their headers dicts, are
never modified, so one callback signature may be reused from several tenants.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from celery.canvas import Signature

from .capture import SCHEMA_HEADER

#: ``apply_async`` options that hold signatures published later by a worker.
CARRIED_OPTIONS = ("link", "link_error", "chain", "chord")


def carries_signatures(options: Mapping[str, Any]) -> bool:
    """Return True if ``options`` holds any of ``CARRIED_OPTIONS`` (a message's canvas)."""
    get = options.get  # the keys spelled out: a generator over them costs more than the check
    return bool(get("link") or get("link_error") or get("chain") or get("chord"))


def stamp_carried(options: MutableMapping[str, Any], schema_name: str | None) -> None:
    """Replace the signatures of ``options`` by copies stamped with ``schema_name``."""
    if schema_name is None:
        return
    for key in CARRIED_OPTIONS:
        value = options.get(key)
        if value:
            options[key] = _stamp_any(value, schema_name)


def stamped_list(signatures: Any, schema_name: str | None) -> Any:
    """Return ``signatures`` (one or a list, as ``link=`` takes) stamped with ``schema_name``."""
    if schema_name is None:
        return signatures
    return _stamp_any(signatures, schema_name)


def stamped(signature: Any, schema_name: str) -> Any:
    """Return a copy of ``signature`` whose task signatures all carry a ``_schema_name``.

    A task signature that has its own ``_schema_name`` keeps it; groups, chains and
    chords are walked (their own options are left alone: Celery merges them into
    every member, over the member's own headers).
    """
    if not isinstance(signature, Mapping):
        return signature
    copy = dict(signature)
    options = dict(copy.get("options") or {})
    kwargs = copy.get("kwargs")
    subtask_type = copy.get("subtask_type")
    if subtask_type in ("chain", "group") and isinstance(kwargs, Mapping):
        copy["kwargs"] = {**kwargs, "tasks": _stamp_any(kwargs.get("tasks"), schema_name)}
    elif subtask_type == "chord" and isinstance(kwargs, Mapping):
        copy["kwargs"] = {
            **kwargs,
            "header": _stamp_any(kwargs.get("header"), schema_name),
            "body": _stamp_any(kwargs.get("body"), schema_name),
        }
    else:
        headers = options.get("headers") or {}
        if SCHEMA_HEADER not in headers:
            options["headers"] = {**headers, SCHEMA_HEADER: schema_name}
    stamp_carried(options, schema_name)
    copy["options"] = options
    if isinstance(signature, Signature):
        return Signature.from_dict(copy, app=signature.app)
    return copy


def _stamp_any(value: Any, schema_name: str) -> Any:
    if isinstance(value, Mapping):
        return stamped(value, schema_name)
    if isinstance(value, tuple):
        return tuple(_stamp_any(item, schema_name) for item in value)
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return [_stamp_any(item, schema_name) for item in value]
    return value
