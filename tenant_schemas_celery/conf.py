"""Option lookup: task attribute, then the Celery app's configuration, then the default.

Task attributes and ``app.conf`` changes made at run time (``app.conf.x = ...``,
``app.conf.update(...)``) are read on every call. What comes from the configuration
source (Django settings, a config module) is remembered per app until Django's
``setting_changed`` signal (``override_settings``) says otherwise, or the app's
configuration is replaced (``config_from_object``): Celery's own lookup of an absent key
costs tens of microseconds, too much to pay on every task.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS

from .exceptions import TenantConfigurationError

if TYPE_CHECKING:
    from celery import Celery

#: Default for ``tenant_cache_seconds``: tenants are looked up for every task.
DEFAULT_CACHE_SECONDS = 0

_MEMO_ATTR = "_tenant_schemas_celery_settings"
_source_generation = [0]


@cache
def tenant_db_alias() -> str:
    """Return django-tenants' ``TENANT_DB_ALIAS``: the connection that carries the schema."""
    alias: str = getattr(settings, "TENANT_DB_ALIAS", DEFAULT_DB_ALIAS)
    return alias


@cache
def public_schema_name() -> str:
    """Return django-tenants' ``PUBLIC_SCHEMA_NAME`` (``"public"`` by default)."""
    name: str = getattr(settings, "PUBLIC_SCHEMA_NAME", "public")
    return name


@cache
def extra_search_paths() -> tuple[str, ...]:
    """Return django-tenants' ``PG_EXTRA_SEARCH_PATHS``: schemas put after every tenant's."""
    return tuple(getattr(settings, "PG_EXTRA_SEARCH_PATHS", ()))


def app_setting(app: Celery, name: str) -> Any:
    """Return the Celery setting ``name`` (lower case) or its upper-case spelling, or None.

    With ``config_from_object("django.conf:settings", namespace="CELERY")`` the
    Django setting ``CELERY_<NAME>`` is found under either spelling, and so is a change
    made at run time under any of the three (``app.conf["CELERY_<NAME>"] = ...``).
    """
    conf = app.conf
    changes = conf.changes
    if changes:
        for key in _spellings(app, name):
            value = changes.get(key)
            if value is not None:
                return value
    memo = app.__dict__.get(_MEMO_ATTR)
    if memo is None or memo[0] != _source_generation[0] or memo[1] is not conf:
        memo = app.__dict__[_MEMO_ATTR] = (_source_generation[0], conf, {})
    try:
        return memo[2][name]
    except KeyError:
        value = conf.get(name)
        if value is None:
            value = conf.get(name.upper())
        memo[2][name] = value
        return value


def _spellings(app: Celery, name: str) -> tuple[str, ...]:
    """The keys a change of setting ``name`` may be stored under in ``app.conf``."""
    return _spellings_in(app.namespace, name)


@lru_cache(maxsize=256)
def _spellings_in(namespace: str | None, name: str) -> tuple[str, ...]:
    upper = name.upper()
    if namespace:
        return (name, upper, f"{namespace.rstrip('_').upper()}_{upper}")
    return (name, upper)


def _forget_settings(**kwargs: Any) -> None:
    _source_generation[0] += 1
    tenant_db_alias.cache_clear()
    public_schema_name.cache_clear()
    extra_search_paths.cache_clear()


setting_changed.connect(_forget_settings, dispatch_uid="tenant_schemas_celery.conf")


def task_option(task_or_cls: Any, name: str) -> tuple[Any, str]:
    """Return a task option's value (None if unset), and where it came from, for errors.

    The value is the task's attribute ``name`` when it is not None, else the Celery
    setting ``task_<name>`` of the task's app (see ``app_setting``).

    Parameters:
        task_or_cls: a task, or a task class.
        name(str): the option, as a task attribute (``"tenant_databases"``).
    """
    value = getattr(task_or_cls, name, None)
    if value is not None:
        return value, f"the {name} task option"
    return app_setting(task_or_cls.app, f"task_{name}"), f"the task_{name} setting"


def tenant_databases(task_or_cls: Any) -> tuple[str, ...]:
    """Return the database aliases whose connections follow the task's tenant.

    Parameters:
        task_or_cls: a task, or a task class, with an optional ``tenant_databases``.

    Raises:
        TenantConfigurationError: the value is not a list of aliases of ``settings.DATABASES``.
    """
    value, source = task_option(task_or_cls, "tenant_databases")
    if value is None:
        return (tenant_db_alias(),)
    aliases = _as_aliases(value, source)
    unknown = [alias for alias in aliases if alias not in settings.DATABASES]
    if unknown:
        raise TenantConfigurationError(
            f"{source} names {unknown!r}, which settings.DATABASES does not define "
            f"(known aliases: {sorted(settings.DATABASES)!r})."
        )
    return aliases


def _as_aliases(value: object, source: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Iterable) or isinstance(value, (bytes, dict)):
        raise TenantConfigurationError(
            f"{source} must be a list of database aliases, got {value!r}."
        )
    aliases = tuple(value)
    if not aliases or not all(isinstance(alias, str) for alias in aliases):
        raise TenantConfigurationError(
            f"{source} must be a non-empty list of database alias strings, got {value!r}."
        )
    return aliases


def tenant_cache_seconds(task_or_cls: Any) -> float:
    """Return how long a looked-up tenant may be reused, in seconds (0: always look up).

    Raises:
        TenantConfigurationError: the value is not a number of seconds >= 0.
    """
    value, source = task_option(task_or_cls, "tenant_cache_seconds")
    if value is None:
        return DEFAULT_CACHE_SECONDS
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise TenantConfigurationError(
            f"{source} must be a number of seconds >= 0 (0 disables the cache), got {value!r}."
        )
    return value


def beat_heartbeat_file(app: Celery) -> str | None:
    """Return the file beat touches at every tick (``beat_tenant_heartbeat_file``), or None.

    Raises:
        TenantConfigurationError: the value is neither a path (``str``, ``os.PathLike``)
            nor empty (bytes paths included).
    """
    value = app_setting(app, "beat_tenant_heartbeat_file")
    if value is None or value == "":
        return None
    path = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(path, str):
        raise TenantConfigurationError(
            f"the beat_tenant_heartbeat_file setting must be a file path, got {value!r}."
        )
    return path


#: Default for ``beat_tenant_failover_seconds``.
DEFAULT_FAILOVER_SECONDS = 10.0


def beat_leader_election(app: Celery) -> bool:
    """Return whether beat elects one leader by a PostgreSQL advisory lock
    (``beat_tenant_leader_election``, False by default).

    Raises:
        TenantConfigurationError: the value is not a boolean.
    """
    value = app_setting(app, "beat_tenant_leader_election")
    if value is None:
        return False
    if not isinstance(value, bool):
        raise TenantConfigurationError(
            f"the beat_tenant_leader_election setting must be True or False, got {value!r}."
        )
    return value


def beat_leader_key(app: Celery) -> str | int:
    """Return what names beat's leader lock (``beat_tenant_leader_key``): by default the
    app's ``main`` name.

    Raises:
        TenantConfigurationError: the value is neither a non-empty string nor an integer
            (a ``bigint``), or it is unset and the app has no ``main`` name.
    """
    value = app_setting(app, "beat_tenant_leader_key")
    if value is None:
        value = app.main
        if not value:
            raise TenantConfigurationError(
                "the beat_tenant_leader_key setting is needed: the Celery app has no main "
                "name to key beat's leader lock by."
            )
    int_ok = type(value) is int and -(2**63) <= value < 2**63
    if not int_ok and not (isinstance(value, str) and value):
        raise TenantConfigurationError(
            "the beat_tenant_leader_key setting must be a non-empty string or a 64-bit "
            f"signed integer, got {value!r}."
        )
    return value


def beat_failover_seconds(app: Celery) -> float:
    """Return within how many seconds a follower takes over from a lost beat leader
    (``beat_tenant_failover_seconds``, 10 by default).

    Raises:
        TenantConfigurationError: the value is not a positive (finite) number of seconds.
    """
    value = app_setting(app, "beat_tenant_failover_seconds")
    if value is None:
        return DEFAULT_FAILOVER_SECONDS
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value < float("inf")
    ):
        raise TenantConfigurationError(
            f"the beat_tenant_failover_seconds setting must be a positive number of seconds, "
            f"got {value!r}."
        )
    return float(value)
