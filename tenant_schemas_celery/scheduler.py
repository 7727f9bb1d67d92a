"""Celery beat schedulers that send each entry to tenant schemas.

Usage::

    celery -A proj beat --scheduler=tenant_schemas_celery.scheduler.TenantAwareScheduler

A ``beat_schedule`` item ``NAME`` becomes one entry per schema ``NAME@SCHEMA``
when it has ``"tenant_schemas": [...]`` (the schema in its ``_schema_name``
header), else one entry ``NAME@__all_tenants_only__`` (with the header
``"_all_tenants_only": True``) that is sent, at each due time, to every tenant of
``get_queryset()`` then existing, public excluded. These are the names and headers
of the PyPI package, so existing schedule files carry over.

``TenantAwareSchedulerMixin`` adds the fan-out to any Celery scheduler (Celery's,
django-celery-beat's ``DatabaseScheduler``, celery-redbeat's ``RedBeatScheduler``):
the base scheduler keeps its own entries and storage, and each message goes through
its ``apply_async(entry, producer=..., advance=False)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from celery.beat import PersistentScheduler, ScheduleEntry, Scheduler
from celery.utils.log import get_logger
from kombu.utils.objects import cached_property

from .capture import (
    ALL_TENANTS_HEADER,
    SCHEMA_HEADER,
    SPREAD_HEADER,
    TIMEZONE_HEADER,
    entry_headers,
)
from .conf import beat_heartbeat_file, public_schema_name
from .fanout import is_fanout_copy, send_to_schemas
from .internals import rebuild_heap, sync_scheduler
from .leader import LeaderElection, scheduler_election
from .liveness import HeartbeatFile
from .resolution import header_flag, validate_schema_list, validate_schema_name
from .spread import validate_spread
from .targets import TenantTargets, tenant_queryset
from .zones import TenantZones, ZonedCrontab, validate_zone_option, zoned_schedule

if TYPE_CHECKING:
    from celery.beat import Scheduler as _SchedulerBase
    from django.db.models import QuerySet
else:
    _SchedulerBase = object

__all__ = [
    "TenantAwarePersistentScheduler",
    "TenantAwareScheduleEntry",
    "TenantAwareScheduler",
    "TenantAwareSchedulerMixin",
    "expand_entry",
]

#: Celery's beat logger: our lines read in line with Celery's own.
logger = get_logger("celery.beat")

#: Prefix of Celery's built-in tasks: without ``tenant_schemas`` they run once, in public.
CELERY_TASK_PREFIX = "celery."
#: Suffix (after ``@``) of the name of an entry that is sent to every tenant.
ALL_TENANTS = "__all_tenants_only__"


def __getattr__(name: str) -> Any:
    # ``Tenant``, the tenant model, as the PyPI package's module has it; looked up on
    # first access, so that importing this module needs no ready app registry.
    if name == "Tenant":
        from django_tenants.utils import get_tenant_model

        return get_tenant_model()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TenantAwareScheduleEntry(ScheduleEntry):
    """A beat entry sent to the schemas it lists, or to every tenant.

    Parameters:
        tenant_schemas(Sequence[str] | None): the schemas to send to (``"public"``
            allowed). By default, those its headers name: the ``_schema_name``
            header's schema, or every tenant of the scheduler's ``get_queryset()``,
            public excluded, with ``"_all_tenants_only": True`` or without either.
        tenant_spread_seconds(float | None): spread each run over this many seconds:
            every schema's message is delayed by a stable offset in ``[0, window)``.
            By default the ``_tenant_spread_seconds`` header, or 0 (no delay).

    With a ``_tenant_timezone`` header (see ``expand_entry``), its crontab schedule
    becomes a ``zones.ZonedCrontab``: due at its wall-clock time in each tenant's zone.
    The other parameters are those of ``celery.beat.ScheduleEntry``. A ninth
    positional field that is not Celery's ``relative`` flag (the ``tenant_schemas``
    that schedule files of the PyPI package's older releases hold) is dropped.
    """

    tenant_schemas: tuple[str, ...] | None = None
    tenant_spread_seconds: float = 0.0
    schedule: Any

    def __init__(
        self,
        *args: Any,
        tenant_schemas: Any = None,
        tenant_spread_seconds: Any = None,
        **kwargs: Any,
    ) -> None:
        if len(args) == 9 and not isinstance(args[8], bool):
            args = args[:8]
        super().__init__(*args, **kwargs)
        headers = self.options.get("headers") or {}
        self.tenant_schemas = (
            header_targets(headers)
            if tenant_schemas is None
            else validate_schema_list(tenant_schemas)
        )
        self.tenant_spread_seconds = (
            validate_spread(headers.get(SPREAD_HEADER), SPREAD_HEADER)
            if tenant_spread_seconds is None
            else validate_spread(tenant_spread_seconds)
        )
        self.schedule = zoned_schedule(self.schedule, headers.get(TIMEZONE_HEADER), self.name)

    def __reduce__(self) -> tuple[Any, ...]:
        cls, args = super().__reduce__()
        state = {
            "tenant_schemas": self.tenant_schemas,
            "tenant_spread_seconds": self.tenant_spread_seconds,
        }
        return cls, args, state

    def update(self, other: ScheduleEntry) -> None:
        """Update the editable fields, the tenant options included, from ``other``.

        A ``tenant_timezone`` entry keeps its zones' last runs while its crontab is unchanged.
        """
        older = self.schedule
        super().update(other)
        if isinstance(other, TenantAwareScheduleEntry):
            self.tenant_schemas = other.tenant_schemas
            self.tenant_spread_seconds = other.tenant_spread_seconds
        else:
            headers = self.options.get("headers") or {}
            self.tenant_schemas = header_targets(headers)
            self.tenant_spread_seconds = validate_spread(headers.get(SPREAD_HEADER), SPREAD_HEADER)
            self.schedule = zoned_schedule(self.schedule, headers.get(TIMEZONE_HEADER), self.name)
        if isinstance(self.schedule, ZonedCrontab):
            self.schedule.adopt_runs(older)

    def editable_fields_equal(self, other: ScheduleEntry) -> bool:
        return (
            super().editable_fields_equal(other)
            and self.tenant_schemas == getattr(other, "tenant_schemas", None)
            and self.tenant_spread_seconds == getattr(other, "tenant_spread_seconds", 0.0)
        )

    def __repr__(self) -> str:
        targets = "all tenants" if self.tenant_schemas is None else list(self.tenant_schemas)
        return f"{super().__repr__()} -> {targets}"


def expand_entry(name: str, fields: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the schedule entries (name to fields) that a ``beat_schedule`` item becomes.

    ``tenant_schemas`` gives one ``NAME@SCHEMA`` entry per schema, its schema in
    ``options["headers"]["_schema_name"]``; without it, one ``NAME@__all_tenants_only__``
    entry with ``options["headers"]["_all_tenants_only"] = True``. A spread is kept
    in the ``_tenant_spread_seconds`` header, a ``tenant_timezone`` (attribute name or
    module-level function, see ``zones``) in the ``_tenant_timezone`` header (a
    function as its import path). Celery's built-in tasks (``celery.*``)
    without ``tenant_schemas`` keep their name and run once, in public. The fields
    are Celery's only, so any scheduler's entry class takes them.

    Raises:
        TenantConfigurationError: ``tenant_schemas``, ``tenant_spread_seconds`` or
            ``tenant_timezone`` is malformed, or ``tenant_timezone`` is given with a
            schedule that is not a crontab (the message names the option and what is
            wrong with it).

    Example:
        >>> expand_entry("report", {"task": "t", "schedule": 60, "tenant_schemas": ["a"]})
        {'report@a': {'task': 't', 'schedule': 60, 'options': {'headers': {'_schema_name': 'a'}}}}
        >>> sorted(expand_entry("report", {"task": "t", "schedule": 60}))
        ['report@__all_tenants_only__']
    """
    fields = dict(fields)
    schemas = fields.pop("tenant_schemas", None)
    spread = validate_spread(fields.pop("tenant_spread_seconds", None))
    zone = validate_zone_option(fields.pop("tenant_timezone", None), name)
    zoned_schedule(fields.get("schedule"), zone, name)  # only a crontab has a wall-clock time
    if schemas is None and str(fields.get("task", "")).startswith(CELERY_TASK_PREFIX):
        return {name: _with_targets(fields, public_schema_name(), spread, zone)}
    if schemas is None:
        return {f"{name}@{ALL_TENANTS}": _with_targets(fields, None, spread, zone)}
    return {
        f"{name}@{schema}": _with_targets(fields, schema, spread, zone)
        for schema in validate_schema_list(schemas)
    }


def _with_targets(
    fields: Mapping[str, Any], schema_name: str | None, spread: float, zone: str | None
) -> dict[str, Any]:
    options = dict(fields.get("options") or {})
    options["headers"] = entry_headers(options.get("headers") or {}, schema_name, spread, zone)
    return {**fields, "options": options}


def header_targets(headers: Mapping[str, Any]) -> tuple[str, ...] | None:
    """Return the schemas that an entry's headers send it to (None: every tenant).

    ``"_all_tenants_only": True`` means every tenant; else the ``_schema_name``
    header names the one schema; without either, every tenant.

    Raises:
        InvalidSchemaName: the ``_schema_name`` header is not a usable schema name.
        TenantConfigurationError: the ``_all_tenants_only`` header is neither true nor false.
    """
    if header_flag(headers.get(ALL_TENANTS_HEADER), ALL_TENANTS_HEADER):
        return None
    schema_name = headers.get(SCHEMA_HEADER)
    return None if schema_name is None else (validate_schema_name(schema_name),)


def entry_targets(entry: Any) -> tuple[str, ...] | None:
    """Return the schemas an entry goes to (None: every tenant).

    Its ``tenant_schemas`` (any iterable of names or tenants: a subclass may set a queryset's
    ``values_list``) when set, else what its headers say (see ``header_targets``):
    entries of other classes (Celery's, django-celery-beat's, celery-redbeat's) are
    sent as the PyPI package's headers say.
    """
    explicit = getattr(entry, "tenant_schemas", None)
    if explicit is None:
        return header_targets(entry.options.get("headers") or {})
    return validate_schema_list(explicit, tenants=True)


class TenantAwareSchedulerMixin(_SchedulerBase):
    """Makes a Celery beat scheduler send each due entry to its tenant schemas.

    Put it first among the bases: ``class S(TenantAwareSchedulerMixin, BaseScheduler)``.
    It expands ``beat_schedule`` items (see ``expand_entry``) before handing them to
    the base scheduler's own ``update_from_dict`` / ``merge_inplace``, and leaves
    its ``Entry`` class and storage alone. A due entry is sent once per target
    schema through ``apply_async(entry, producer=..., advance=False)``, with the
    schema active on django-tenants' connection; a base scheduler that calls
    ``apply_async`` itself for a due entry (celery-redbeat) gets the same fan-out.

    Override ``get_queryset()`` to narrow the tenants beat sends to (your own
    notion of a "ready" tenant); tenants whose schema does not exist yet are
    always skipped.

    With ``beat_tenant_leader_election`` on, only the beat holding the leader lock
    sends (see ``leader``); the hooks ``may_send``, ``may_write``, ``save_before_send``
    and ``take_over`` are where a base scheduler's storage joins in.
    """

    _fanning_out = False  # apply_entry is sending an entry to its schemas

    @classmethod
    def get_queryset(cls) -> QuerySet[Any]:
        """Return the tenants beat may send to: every tenant, public included.

        Entries sent to every tenant leave the public schema out themselves; an
        entry's ``tenant_schemas`` may name public without a tenant row for it.
        """
        return tenant_queryset()

    @cached_property
    def tenant_targets(self) -> TenantTargets:
        """The tenants of ``get_queryset()``, read at most once per burst of due entries."""
        return TenantTargets(self.get_queryset)

    @cached_property
    def tenant_zones(self) -> TenantZones:
        """The tenants' zones of ``tenant_timezone`` entries, read again with the tenants."""
        return TenantZones(self.app, self.get_queryset)

    def is_due(self, entry: Any) -> Any:
        """The entry's ``is_due``; a ``tenant_timezone`` entry first gets its tenants' zones."""
        self._refresh_zones(entry)
        return super().is_due(entry)

    def populate_heap(self, *args: Any, **kwargs: Any) -> None:
        """The base scheduler's ``populate_heap``, ``tenant_timezone`` entries zoned first."""
        for entry in list(self.schedule.values()):
            self._refresh_zones(entry)
        super().populate_heap(*args, **kwargs)

    def _refresh_zones(self, entry: Any) -> None:
        if not isinstance(getattr(entry, "schedule", None), ZonedCrontab):
            return
        try:
            self.tenant_zones.refresh(entry, entry_targets(entry))
        except Exception:
            logger.exception(
                "beat: Could not read the tenants' time zones of %s; using those read before.",
                entry.name,
            )

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        """Send ``entry`` to each of its schemas; log, never raise, on failure.

        Under leader election a follower sends nothing (see ``may_send``).
        """
        if not self.may_send():
            logger.debug("beat: Not the leader: not sending %s.", entry.name)
            return
        try:
            targets = entry_targets(entry)
            schemas = self.tenant_targets.resolve(targets)
            schemas = self.tenant_zones.select(entry, schemas, targets)  # tenant_timezone
            logger.info(
                "beat: Sending due task %s (%s) to %d schema(s).",
                entry.name,
                entry.task,
                len(schemas),
            )
            self._fanning_out = True
            try:
                send_to_schemas(self.app, entry, schemas, producer, self._apply_for_schema)
            finally:
                self._fanning_out = False
        except Exception:
            logger.exception(
                "beat: Could not send due task %s (%s); trying again at its next due time.",
                entry.name,
                entry.task,
            )
        if self.should_sync():
            sync_scheduler(self)

    def should_sync(self) -> bool:
        """The base scheduler's ``should_sync``, False while an entry is being sent.

        Celery's ``apply_async`` syncs when it is time to: during a fan-out a tenant
        schema is active, where a base scheduler's unqualified writes would land.
        The sync comes after the fan-out instead, in the schema active before.
        """
        if self._fanning_out:
            return False
        return bool(super().should_sync())

    def _apply_for_schema(self, entry: Any, producer: Any) -> Any:
        return self.apply_async(entry, producer=producer, advance=False)

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        """Send one schema's copy of an entry (Celery's ``apply_async``).

        Called with an entry itself (by a base scheduler that sends due entries this
        way), advance it when asked, then send it to each of its schemas (see
        ``apply_entry``); None is returned then.
        """
        if is_fanout_copy(entry):
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        entry = self.reserve(entry) if advance else entry
        self.apply_entry(entry, producer=producer)
        return None

    # Leader election (see ``leader``) -------------------------------------------------------

    @cached_property
    def leader_election(self) -> LeaderElection | None:
        """This beat's leader election (settings read once); None when it is off."""
        return scheduler_election(self)

    def may_send(self) -> bool:
        """Whether this beat sends due entries now: always, without leader election; else
        only as the leader, with its bookkeeping saved first (``save_before_send``) and its
        lock proven at most ``Timing.proof_max_age`` ago.
        """
        election = self.leader_election
        if election is None:
            return True
        if election.leading:
            self.save_before_send()
        return election.may_send()

    def may_write(self) -> bool:
        """Whether this beat writes bookkeeping: always, without election; else as the leader."""
        election = self.leader_election
        return election is None or election.leading

    def sync(self) -> None:
        """The base scheduler's ``sync``, skipped by a follower under leader election (the
        leader writes the bookkeeping: django-celery-beat's ``last_run_at``, a shelve file).
        """
        if self.may_write():
            super().sync()

    def save_before_send(self) -> None:
        """Under election, make the leader's bookkeeping of a due run durable before it is
        sent (the database scheduler saves ``last_run_at``); nothing to do here.
        """

    def take_over(self) -> None:
        """Catch up when this beat has just become the leader, before it sends.

        Entries held in memory have no state shared between beats: each entry starts
        afresh (its last run is now), so the first run the new leader sends is the one due
        after the takeover; runs due while no beat led are skipped.
        """
        now = self.app.now()
        for entry in self.schedule.values():
            entry.last_run_at = now
        rebuild_heap(self)

    def close(self) -> None:
        """The base scheduler's ``close``; then the leader lock, if any, is released."""
        try:
            super().close()
        finally:
            election = self.__dict__.get("leader_election")
            if election is not None:
                election.close()

    @cached_property
    def heartbeat_file(self) -> HeartbeatFile:
        """The ``beat_tenant_heartbeat_file`` setting's file (read once), touched at every tick."""
        return HeartbeatFile(beat_heartbeat_file(self.app))

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Run one beat iteration; tenants are read again once the loop goes to sleep.

        The heartbeat file is touched first (see ``liveness.HeartbeatFile``), by followers
        too. Under leader election the role is advanced next (``take_over`` when this beat
        just became the leader), and beat sleeps at most ``Timing.try_interval``.
        """
        self.heartbeat_file.touch()
        election = self.leader_election
        if election is not None and election.step():
            self.take_over()
        delay: float = super().tick(*args, **kwargs)
        if delay:
            self.tenant_targets.forget()
            self.tenant_zones.forget()
            if election is not None:
                delay = min(delay, election.max_delay())
        return delay

    def merge_inplace(self, b: Mapping[str, Any]) -> None:
        """The base scheduler's ``merge_inplace`` of the expanded entries of ``b``."""
        super().merge_inplace(self.expand_schedule(b))

    def update_from_dict(self, dict_: Mapping[str, Any]) -> None:
        """The base scheduler's ``update_from_dict`` of the expanded entries of ``dict_``."""
        super().update_from_dict(self.expand_schedule(dict_))

    def expand_schedule(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Return the entries (name to fields) that the ``beat_schedule`` items become.

        Entry objects are kept as they are; a malformed item is logged and left out.
        """
        entries: dict[str, Any] = {}
        for name, fields in config.items():
            if isinstance(fields, ScheduleEntry):
                entries[name] = fields
                continue
            try:
                expanded = expand_entry(name, fields)
            except Exception as exc:
                logger.error("beat: Ignoring schedule entry %r: %s", name, exc, exc_info=True)
                continue
            if not expanded:
                logger.warning("beat: Schedule entry %r has no tenant_schemas; ignored.", name)
            entries.update(expanded)
        return entries

    @property
    def info(self) -> str:
        """Lines for the ``celery beat`` banner."""
        tenants = "    . tenants -> get_queryset(), schemas that exist only"
        path = self.heartbeat_file.path
        heartbeat = f"    . heartbeat -> {path}" if path is not None else ""
        election = self.leader_election
        leader = "" if election is None else f"    . leader election -> {election.lock}"
        return "\n".join(line for line in (super().info, tenants, heartbeat, leader) if line)


class TenantAwareScheduler(TenantAwareSchedulerMixin, Scheduler):
    """Celery's in-memory ``Scheduler``, sending each entry to its tenant schemas."""

    Entry = TenantAwareScheduleEntry


class TenantAwarePersistentScheduler(TenantAwareSchedulerMixin, PersistentScheduler):
    """Celery's ``PersistentScheduler`` (shelve file), sending each entry to its tenant schemas."""

    Entry = TenantAwareScheduleEntry
