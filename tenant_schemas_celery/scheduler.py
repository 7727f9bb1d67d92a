"""Celery beat schedulers that send each entry to tenant schemas.

Usage::

    celery -A proj beat --scheduler=tenant_schemas_celery.scheduler.TenantAwareScheduler

A ``beat_schedule`` item ``NAME`` becomes one entry per schema ``NAME@SCHEMA``
when it has ``"tenant_schemas": [...]`` (the schema in its ``_schema_name``
header), else one entry ``NAME@__all_tenants_only__`` that is sent, at each due
time, to every tenant of ``get_queryset()`` then existing (public excluded).
These are the names of the PyPI package, so existing schedule files carry over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from celery.beat import PersistentScheduler, ScheduleEntry, Scheduler
from kombu.utils.objects import cached_property

from .capture import SCHEMA_HEADER
from .conf import public_schema_name
from .fanout import (
    ALL_TENANTS,
    TenantTargets,
    logger,
    send_to_schemas,
    validate_schema_list,
    validate_spread,
)
from .resolution import validate_schema_name

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

#: Prefix of Celery's built-in tasks: without ``tenant_schemas`` they run once, in public.
CELERY_TASK_PREFIX = "celery."


class TenantAwareScheduleEntry(ScheduleEntry):
    """A beat entry sent to the schemas it lists, or to every tenant.

    Parameters:
        tenant_schemas(Sequence[str] | None): the schemas to send to (``"public"``
            allowed); None sends to every tenant of the scheduler's ``get_queryset()``,
            public excluded.
        tenant_spread_seconds(float | None): spread each run over this many seconds:
            every schema's message is delayed by a stable offset in ``[0, window)``.
            None or 0: no delay.

    The other parameters are those of ``celery.beat.ScheduleEntry``.
    """

    tenant_schemas: tuple[str, ...] | None = None
    tenant_spread_seconds: float = 0.0

    def __init__(
        self,
        *args: Any,
        tenant_schemas: Any = None,
        tenant_spread_seconds: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tenant_schemas = (
            None if tenant_schemas is None else validate_schema_list(tenant_schemas)
        )
        self.tenant_spread_seconds = validate_spread(tenant_spread_seconds)

    def __reduce__(self) -> tuple[Any, ...]:
        cls, args = super().__reduce__()
        state = {
            "tenant_schemas": self.tenant_schemas,
            "tenant_spread_seconds": self.tenant_spread_seconds,
        }
        return cls, args, state

    def update(self, other: ScheduleEntry) -> None:
        """Update the editable fields, the tenant options included, from ``other``."""
        super().update(other)
        self.tenant_schemas = getattr(other, "tenant_schemas", None)
        self.tenant_spread_seconds = getattr(other, "tenant_spread_seconds", 0.0)

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
    entry. Celery's built-in tasks (``celery.*``) without ``tenant_schemas`` keep
    their name and run once, in public.

    Raises:
        TenantConfigurationError: ``tenant_schemas`` or ``tenant_spread_seconds`` is malformed
            (the message names the option and what is wrong with it).

    Example:
        >>> sorted(expand_entry("report", {"task": "t", "schedule": 60, "tenant_schemas": ["a"]}))
        ['report@a']
        >>> sorted(expand_entry("report", {"task": "t", "schedule": 60}))
        ['report@__all_tenants_only__']
    """
    fields = dict(fields)
    schemas = fields.pop("tenant_schemas", None)
    spread = validate_spread(fields.pop("tenant_spread_seconds", None))
    if schemas is None and str(fields.get("task", "")).startswith(CELERY_TASK_PREFIX):
        return {name: _for_schema(fields, public_schema_name(), spread)}
    if schemas is None:
        return {f"{name}@{ALL_TENANTS}": {**fields, "tenant_spread_seconds": spread}}
    return {
        f"{name}@{schema}": _for_schema(fields, schema, spread)
        for schema in validate_schema_list(schemas)
    }


def _for_schema(fields: Mapping[str, Any], schema_name: str, spread: float) -> dict[str, Any]:
    options = dict(fields.get("options") or {})
    options["headers"] = {**(options.get("headers") or {}), SCHEMA_HEADER: schema_name}
    return {
        **fields,
        "options": options,
        "tenant_schemas": (schema_name,),
        "tenant_spread_seconds": spread,
    }


def entry_targets(entry: Any) -> tuple[str, ...] | None:
    """Return the schemas an entry goes to (None: every tenant).

    Entries of other classes go to the schema of their ``_schema_name`` header,
    or to every tenant without one.
    """
    if hasattr(entry, "tenant_schemas"):
        targets: tuple[str, ...] | None = entry.tenant_schemas
        return targets
    schema_name = (entry.options.get("headers") or {}).get(SCHEMA_HEADER)
    return None if schema_name is None else (validate_schema_name(schema_name),)


class TenantAwareSchedulerMixin(_SchedulerBase):
    """Makes a Celery beat scheduler send each due entry to its tenant schemas.

    Override ``get_queryset()`` to narrow the tenants beat sends to (your own
    notion of a "ready" tenant); tenants whose schema does not exist yet are
    always skipped.
    """

    Entry: Any = TenantAwareScheduleEntry

    @classmethod
    def get_queryset(cls) -> QuerySet[Any]:
        """Return the tenants that entries without ``tenant_schemas`` are sent to.

        Also limits the tenants an entry's ``tenant_schemas`` may name (public
        needs no tenant row). Every tenant but the public one by default.
        """
        from django_tenants.utils import get_tenant_model

        queryset: QuerySet[Any] = get_tenant_model().objects.exclude(
            schema_name=public_schema_name()
        )
        return queryset

    @cached_property
    def tenant_targets(self) -> TenantTargets:
        """The tenants of ``get_queryset()``, read at most once per burst of due entries."""
        return TenantTargets(self.get_queryset)

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        """Send ``entry`` to each of its schemas; log, never raise, on failure."""
        try:
            schemas = self.tenant_targets.resolve(entry_targets(entry))
            logger.info(
                "beat: Sending due task %s (%s) to %d schema(s).",
                entry.name,
                entry.task,
                len(schemas),
            )
            send_to_schemas(self.app, entry, schemas, producer)
        except Exception:
            logger.exception(
                "beat: Could not send due task %s (%s); trying again at its next due time.",
                entry.name,
                entry.task,
            )
        finally:
            self._tasks_since_sync += 1
            if self.should_sync():
                self._do_sync()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Run one beat iteration; tenants are read again once the loop goes to sleep."""
        delay: float = super().tick(*args, **kwargs)
        if delay:
            self.tenant_targets.forget()
        return delay

    def merge_inplace(self, b: Mapping[str, Any]) -> None:
        """Make the schedule hold the expanded entries of ``b``, keeping their run history."""
        entries = self._entries_from_config(b)
        schedule = self.schedule
        for name in set(schedule) - set(entries):
            del schedule[name]
        for name, entry in entries.items():
            current = schedule.get(name)
            if current is not None:
                entry.last_run_at = current.last_run_at
                entry.total_run_count = current.total_run_count
            schedule[name] = entry

    def update_from_dict(self, dict_: Mapping[str, Any]) -> None:
        """Add the expanded entries of ``dict_`` to the schedule."""
        self.schedule.update(self._entries_from_config(dict_))

    def _entries_from_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        entries: dict[str, Any] = {}
        for name, fields in config.items():
            if isinstance(fields, ScheduleEntry):
                fields.app = self.app
                entries[name] = fields
                continue
            try:
                expanded = {
                    entry_name: self.Entry(**dict(entry_fields, name=entry_name, app=self.app))
                    for entry_name, entry_fields in expand_entry(name, fields).items()
                }
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
        return "\n".join(line for line in (super().info, tenants) if line)


class TenantAwareScheduler(TenantAwareSchedulerMixin, Scheduler):
    """Celery's in-memory ``Scheduler``, sending each entry to its tenant schemas."""


class TenantAwarePersistentScheduler(TenantAwareSchedulerMixin, PersistentScheduler):
    """Celery's ``PersistentScheduler`` (shelve file), sending each entry to its tenant schemas."""
