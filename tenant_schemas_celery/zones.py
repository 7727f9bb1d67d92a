"""Tenants' own time zones for crontab entries (the ``tenant_timezone`` option).

An entry with ``tenant_timezone`` (the name of a tenant attribute holding an IANA zone
name, or a module-level function taking the tenant) fires at its crontab's wall-clock
time in each tenant's zone. Its schedule becomes a ``ZonedCrontab``: one copy of the
crontab per zone present among its tenants, each with its own last run, so a run is due
per zone, and only the tenants of the due zones get the message. Each zone's copy is
Celery's own time-zone-aware crontab, so daylight-saving transitions behave as Celery's
do: a run at a skipped local time happens once (an hour later, at the shifted wall-clock
time), a run at a repeated local time happens once (at its first occurrence).

The tenants' zones are read with one statement for all tenants (``TenantZones``), when
the scheduler reads its tenants again, never once per tenant per tick. A tenant whose
zone is unknown, empty or cannot be read uses the app's zone (``app.timezone``); this is
logged once per tenant and value.
"""

from __future__ import annotations

import copy
import importlib
import operator
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from celery.schedules import BaseSchedule, crontab, schedstate
from celery.utils.log import get_logger

from .capture import TIMEZONE_HEADER
from .conf import public_schema_name
from .exceptions import TenantConfigurationError, _short_repr

__all__ = [
    "TenantZones",
    "ZonedCrontab",
    "app_zone_name",
    "known_zone",
    "validate_zone_option",
    "zoned_schedule",
]

#: Celery's beat logger: our lines read in line with Celery's own.
logger = get_logger("celery.beat")


# The option -----------------------------------------------------------------------------


def validate_zone_option(value: object, entry_name: str) -> str | None:
    """Return ``tenant_timezone`` as stored in the ``_tenant_timezone`` header (None: unset).

    An attribute name is kept; a module-level function becomes its import path
    ``"module:name"`` (an entry's state must pickle, and a row's headers are JSON).

    Raises:
        TenantConfigurationError: ``value`` is neither an attribute name, an import path
            ``"module:name"``, nor a module-level function (the message names the entry).

    Example:
        >>> validate_zone_option("timezone", "report")
        'timezone'
        >>> validate_zone_option(known_zone, "report")
        'tenant_schemas_celery.zones:known_zone'
    """
    if value is None:
        return None
    if isinstance(value, str) and value.isidentifier():
        return value
    if isinstance(value, str) and _is_path(value):
        if not callable(_imported(value)):
            raise TenantConfigurationError(
                f"tenant_timezone of schedule entry {entry_name!r}: {value!r} does not "
                f"name an importable function."
            )
        return value
    if callable(value):
        path = f"{getattr(value, '__module__', '')}:{getattr(value, '__qualname__', '')}"
        if _is_path(path) and _imported(path) is value:
            return path
        raise TenantConfigurationError(
            f"tenant_timezone of schedule entry {entry_name!r} must be a module-level "
            f"function (importable by its name), got {_short_repr(value)}."
        )
    raise TenantConfigurationError(
        f"tenant_timezone of schedule entry {entry_name!r} must be the name of a tenant "
        f'attribute, a "module:function" path or a module-level function, got '
        f"{_short_repr(value)}."
    )


def zoned_schedule(schedule: Any, option: str | None, entry_name: str) -> Any:
    """Return ``schedule``, made a ``ZonedCrontab`` by ``option`` (a ``_tenant_timezone`` value).

    Raises:
        TenantConfigurationError: ``option`` is set and ``schedule`` is not a crontab
            (an interval has no wall-clock time), or ``option`` is malformed.
    """
    if isinstance(schedule, ZonedCrontab):
        return schedule
    option = validate_zone_option(option, entry_name)
    if option is None:
        return schedule
    if not isinstance(schedule, crontab):
        raise TenantConfigurationError(
            f"tenant_timezone of schedule entry {entry_name!r} needs a crontab schedule, "
            f"got {_short_repr(schedule)}: only a crontab has a wall-clock time."
        )
    return ZonedCrontab(schedule, option)


def _is_path(value: str) -> bool:
    module, sep, name = value.partition(":")
    return bool(sep) and all(part.isidentifier() for part in (*module.split("."), *name.split(".")))


def _imported(path: str) -> Any:
    module_name, _, qualname = path.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return found


# Zone names -----------------------------------------------------------------------------


def known_zone(value: object) -> ZoneInfo | None:
    """Return the zone an IANA zone name stands for; None for anything else.

    Example:
        >>> known_zone("Asia/Tokyo")
        zoneinfo.ZoneInfo(key='Asia/Tokyo')
        >>> known_zone("Mars/Olympus"), known_zone(""), known_zone(None)
        (None, None, None)
    """
    return _zone_named(value) if isinstance(value, str) and value else None


@lru_cache(maxsize=1024)
def _zone_named(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # not found, malformed, a directory of zones
        return None


def app_zone_name(app: Any) -> str:
    """Return the name of the app's zone (``app.timezone``): its IANA key, else ``"UTC"``."""
    zone = app.timezone
    return str(getattr(zone, "key", None) or "UTC")


def _zone_info(name: str, app: Any) -> tzinfo:
    zone: tzinfo = known_zone(name) or app.timezone
    return zone


# The schedule ---------------------------------------------------------------------------


class ZonedCrontab(BaseSchedule):
    """A crontab due at its wall-clock time in each zone of its tenants.

    Parameters:
        cron(crontab): the crontab, in whatever zone; each zone gets a copy of it.
        option(str): the ``tenant_timezone`` value (attribute name or import path).
        runs(Mapping[str, datetime | None]): each zone's last run (None: the entry's
            ``last_run_at``). Its keys are the zones present (see ``set_zones``).

    Without zones (tenants not read yet) it is due as ``cron`` is.
    """

    def __init__(
        self, cron: crontab, option: str, runs: Mapping[str, datetime | None] | None = None
    ) -> None:
        self.cron = cron
        self.option = option
        self.runs: dict[str, datetime | None] = dict(runs or {})
        self._crons: dict[str, crontab] = {}

    @property
    def app(self) -> Any:
        return self.cron.app

    @app.setter
    def app(self, app: Any) -> None:
        self.cron.app = app
        self._crons.clear()

    @property
    def nowfun(self) -> Any:
        return self.cron.nowfun

    @nowfun.setter
    def nowfun(self, value: Any) -> None:
        self.cron.nowfun = value
        self._crons.clear()

    def now(self) -> datetime:
        """Return the crontab's current time."""
        return self.cron.now()

    def set_zones(self, zones: Iterable[str]) -> None:
        """Make ``zones`` the zones present: new ones start from the entry's ``last_run_at``."""
        zones = set(zones)
        for gone in set(self.runs) - zones:
            del self.runs[gone]
        for zone in zones - set(self.runs):
            self.runs[zone] = None

    def zone_states(self, last_run_at: datetime) -> dict[str, schedstate]:
        """Return each zone's ``(is_due, next)``, as its copy of the crontab says."""
        return {
            zone: self.zone_cron(zone).is_due(last or last_run_at)
            for zone, last in self.runs.items()
        }

    def due_zones(self, last_run_at: datetime) -> list[str]:
        """Return the zones whose run is due now, sorted."""
        return sorted(zone for zone, state in self.zone_states(last_run_at).items() if state[0])

    def mark_run(self, zones: Iterable[str], when: datetime) -> None:
        """Record that the ``zones`` ran at ``when``."""
        for zone in zones:
            self.runs[zone] = when

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Due when some zone is due; the next check at the soonest zone's."""
        states = self.zone_states(last_run_at)
        if not states:
            return self.cron.is_due(last_run_at)
        return schedstate(
            any(state[0] for state in states.values()), min(s[1] for s in states.values())
        )

    def remaining_estimate(self, last_run_at: datetime) -> Any:
        """The soonest zone's ``remaining_estimate``."""
        if not self.runs:
            return self.cron.remaining_estimate(last_run_at)
        return min(
            self.zone_cron(zone).remaining_estimate(last or last_run_at)
            for zone, last in self.runs.items()
        )

    def zone_cron(self, zone: str) -> crontab:
        """Return the copy of the crontab in ``zone`` (the app's zone for an unknown name)."""
        cron = self._crons.get(zone)
        if cron is None:
            cron = copy.copy(self.cron)
            cron.app = self.cron.app
            cron.nowfun = self.cron.nowfun or cron.nowfun  # a copy drops one set after __init__
            cron.tz = _zone_info(zone, cron.app)
            self._crons[zone] = cron
        return cron

    def adopt_runs(self, older: object) -> None:
        """Keep the runs of ``older`` (the schedule this one replaces) if it is the same one."""
        if isinstance(older, ZonedCrontab) and older == self:
            self.runs = older.runs

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.cron, self.option, self.runs)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ZonedCrontab):
            return bool(self.option == other.option and self.cron == other.cron)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{self.cron!r} in each tenant's zone ({self.option})>"


# The tenants' zones ---------------------------------------------------------------------


class TenantZones:
    """Each tenant's zone, per ``tenant_timezone`` option.

    Parameters:
        app(Celery): its ``timezone`` is the zone of tenants without a usable one.
        get_queryset(Callable): returns the tenants (the scheduler's ``get_queryset``).

    A model field is read with ``values_list`` (one statement); a property or a
    function is evaluated once per tenant on the tenants read with one statement.
    A read serves until it is ``max_age`` seconds old, and a send (``select``) after
    ``forget()`` (beat went to sleep) reads again: once per burst of due entries.

    Attributes:
        max_age(float): seconds a read serves the checks of due times. Defaults to 60.
    """

    max_age = 60.0

    def __init__(self, app: Any, get_queryset: Callable[[], Any]) -> None:
        self.app = app
        self.get_queryset = get_queryset
        self._maps: dict[str, tuple[float, dict[str, str]]] = {}
        self._stale: set[str] = set()
        self._reported: dict[tuple[str, str], str] = {}
        self._unsupported: set[str] = set()

    def zone_map(self, option: str, fresh: bool = False) -> dict[str, str]:
        """Return each tenant's zone name (schema name to zone) for ``option``.

        ``fresh``: read again if the last read came before ``forget()``.
        """
        found = self._maps.get(option)
        now = time.monotonic()
        if found is None or now - found[0] > self.max_age or (fresh and option in self._stale):
            found = self._maps[option] = (now, self._read(option))
            self._stale.discard(option)
        return found[1]

    def zones_for(self, option: str, schemas: Sequence[str] | None) -> set[str]:
        """Return the zones of ``schemas`` (None: every tenant but public)."""
        zones = self.zone_map(option)
        if schemas is None:
            public = public_schema_name()
            return {zone for schema, zone in zones.items() if schema != public}
        default = app_zone_name(self.app)
        return {zones.get(schema, default) for schema in schemas}

    def refresh(self, entry: Any, schemas: Sequence[str] | None) -> None:
        """Give a zoned entry's schedule the zones of its tenants ``schemas``."""
        schedule = getattr(entry, "schedule", None)
        if isinstance(schedule, ZonedCrontab):
            schedule.set_zones(self.zones_for(schedule.option, schemas))

    def select(
        self, entry: Any, schemas: Sequence[str], targets: Sequence[str] | None
    ) -> list[str]:
        """Return the ``schemas`` of the zones where ``entry`` is due, and record their run.

        ``targets`` are the entry's targets (None: every tenant), whose zones the entry
        keeps. An entry without ``tenant_timezone`` keeps all of ``schemas``; so does one
        whose class does not make its schedule zoned (logged once).
        """
        schedule = getattr(entry, "schedule", None)
        if not isinstance(schedule, ZonedCrontab):
            if TIMEZONE_HEADER in (entry.options.get("headers") or {}):
                self._not_zoned(entry)
            return list(schemas)
        zones = self.zone_map(schedule.option, fresh=True)
        self.refresh(entry, targets)
        due = set(schedule.due_zones(entry.last_run_at))
        schedule.mark_run(due, schedule.now())
        default = app_zone_name(self.app)
        return [schema for schema in schemas if zones.get(schema, default) in due]

    def forget(self) -> None:
        """Make the next send read the zones again (beat went to sleep)."""
        self._stale.update(self._maps)

    def _not_zoned(self, entry: Any) -> None:
        if entry.name not in self._unsupported:
            self._unsupported.add(entry.name)
            logger.warning(
                "beat: Entry %r has a _tenant_timezone header, but its class %s does not "
                "support tenant_timezone: it is sent to its tenants as its schedule says.",
                entry.name,
                type(entry).__name__,
            )

    def _read(self, option: str) -> dict[str, str]:
        default = app_zone_name(self.app)
        zones: dict[str, str] = {}
        for schema, value in self._values(option):
            zone = known_zone(value)
            key = (option, schema)
            if zone is None:
                shown = _short_repr(value)
                if self._reported.get(key) != shown:
                    self._reported[key] = shown
                    logger.warning(
                        "beat: Tenant %r: tenant_timezone %s gave %s, not an IANA time zone "
                        "name; the tenant uses the app's time zone %s.",
                        schema,
                        option,
                        shown,
                        default,
                    )
                zones[schema] = default
            else:
                self._reported.pop(key, None)
                zones[schema] = zone.key
        return zones

    def _values(self, option: str) -> list[tuple[str, object]]:
        queryset = self.get_queryset()
        if not _is_path(option) and _is_field(queryset.model, option):
            return list(queryset.values_list("schema_name", option))
        get: Callable[[Any], object] = (
            _imported(option) if _is_path(option) else operator.attrgetter(option)
        )
        values = []
        for tenant in queryset:
            try:
                value = get(tenant)
            except Exception as exc:  # a tenant's failing zone must not stop beat
                value = exc
            values.append((tenant.schema_name, value))
        return values


def _is_field(model: Any, name: str) -> bool:
    fields = {field.attname: field for field in model._meta.concrete_fields}
    return name in fields and not fields[name].is_relation
