"""``TenantAwareModelEntry``: a django-celery-beat row of one schema, as a beat entry.

Where a row is sent (``row_targets``): a tenant's row to its tenant; a public row to
public, to the schema its ``_schema_name`` header names, or, with the header
``"_all_tenants_only": true``, to every tenant. Its bookkeeping (``last_run_at``,
``total_run_count``, disabling a one-off or expired task) is written to the row's own
schema with schema-qualified SQL (``beat_sql.update_row``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import schedules
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import ModelEntry
from django_celery_beat.utils import NEVER_CHECK_TIMEOUT

from .beat_sql import SCHEDULE_MODELS, schema_of, update_row
from .capture import (
    ALL_TENANTS_HEADER,
    SCHEMA_HEADER,
    SPREAD_HEADER,
    TIMEZONE_HEADER,
    entry_headers,
)
from .conf import public_schema_name
from .internals import model_entry_now
from .resolution import header_flag, validate_schema_name
from .scheduler import expand_entry, logger
from .spread import validate_spread
from .zones import ZonedCrontab, zoned_schedule

__all__ = ["TenantAwareModelEntry", "row_targets", "row_values"]


class TenantAwareModelEntry(ModelEntry):
    """A ``PeriodicTask`` row of one schema, sent and saved in the right schemas.

    Attributes:
        schema_name(str): the schema the row was read from; its bookkeeping goes there.
        tenant_schemas(tuple[str, ...] | None): where it is sent: the row's own schema
            for a tenant row; for a public row, public, the schema of its
            ``_schema_name`` header, or every tenant (None) with ``_all_tenants_only``.
        tenant_spread_seconds(float): the ``_tenant_spread_seconds`` header, or 0.

    With a ``_tenant_timezone`` header, a crontab row is due at its wall-clock time in
    each tenant's zone (see ``zones.ZonedCrontab``; the row's own ``timezone`` is not
    used then); the zones' last runs are kept in memory, from the row's ``last_run_at``.
    """

    schema_name: str
    tenant_schemas: tuple[str, ...] | None
    tenant_spread_seconds: float
    schedule: Any
    #: The row's values when the entry was made (see ``row_values``): a read of the row
    #: that finds them again keeps the entry. They are taken before django-celery-beat
    #: fills in a missing ``last_run_at``; an entry made after a run holds the values
    #: that ``save()`` writes.
    read_values: tuple[Any, ...]

    def __init__(self, model: PeriodicTask, app: Any = None) -> None:
        self.read_values = row_values(model)
        self.schema_name = schema_of(model)
        super().__init__(model, app=app)
        self.tenant_schemas, self.tenant_spread_seconds = row_targets(
            self.schema_name, self.options["headers"]
        )
        zone = self.options["headers"].get(TIMEZONE_HEADER)
        self.schedule = zoned_schedule(self.schedule, zone, self.name)

    def __next__(self) -> TenantAwareModelEntry:
        """django-celery-beat's next entry; a ``tenant_timezone`` row keeps its zones' runs."""
        new_entry: TenantAwareModelEntry = super().__next__()
        if isinstance(new_entry.schedule, ZonedCrontab):
            new_entry.schedule.adopt_runs(self.schedule)
        return new_entry

    @classmethod
    def from_entry(cls, name: str, app: Any = None, **entry: Any) -> TenantAwareModelEntry:
        """Create or update the public row of a ``beat_schedule`` entry (see ``expand_entry``).

        Its targets are stored as headers, as the PyPI package stores them, so
        existing rows carry over. Fields given as ``tenant_schemas`` (one schema, or
        None for every tenant) and ``tenant_spread_seconds`` are made headers too.
        """
        from django_tenants.utils import schema_context

        options = dict(entry.get("options") or {})
        if "tenant_schemas" in entry or "tenant_spread_seconds" in entry:
            tenant_schemas = entry.pop("tenant_schemas", None)
            spread = validate_spread(entry.pop("tenant_spread_seconds", None))
            schema_name = None
            if tenant_schemas is not None:
                (schema_name,) = tenant_schemas  # a stored row goes to one schema or to all
            options["headers"] = entry_headers(options.get("headers") or {}, schema_name, spread)
        with schema_context(public_schema_name()):
            created: TenantAwareModelEntry = super().from_entry(
                name, app=app, **dict(entry, options=options)
            )
        return created

    @classmethod
    def from_schedule(cls, mapping: Mapping[str, Any], app: Any = None) -> dict[str, Any]:
        """Return the enabled entries of the public rows that ``beat_schedule`` items become
        (named as ``expand_entry`` says), creating or updating the rows.

        An item that cannot be made entries is logged and left out.
        """
        entries: dict[str, Any] = {}
        for name, fields in mapping.items():
            try:
                for entry_name, entry_fields in expand_entry(name, fields).items():
                    entry = cls.from_entry(entry_name, app=app, **entry_fields)
                    if entry.model.enabled:
                        entries[entry_name] = entry
            except Exception as exc:
                logger.error("beat: Ignoring schedule entry %r: %s", name, exc, exc_info=True)
        return entries

    def is_due(self) -> Any:
        """Celery's ``is_due``; a one-off task that ran, or an expired task, is disabled
        in its own schema instead of being sent.

        django-celery-beat disables an expired task itself from 2.8 on; with older
        releases it is disabled here when it falls due.
        """
        model = self.model
        if model.one_off and model.enabled and model.total_run_count > 0:
            model.enabled, model.total_run_count, model.last_run_at = False, 0, None
            self._write({"enabled": False, "total_run_count": 0, "last_run_at": None}, True)
            return schedules.schedstate(False, NEVER_CHECK_TIMEOUT)
        state = super().is_due()
        if state.is_due and model.expires is not None and model_entry_now(self) >= model.expires:
            self._disable(model)
            return schedules.schedstate(False, NEVER_CHECK_TIMEOUT)
        return state

    def save(self) -> None:
        """Save ``last_run_at`` and ``total_run_count`` into this row, in its own schema."""
        model = self.model
        self._write({"last_run_at": model.last_run_at, "total_run_count": model.total_run_count})

    def _disable(self, model: PeriodicTask) -> None:
        model.no_changes, model.enabled, model.last_run_at = True, False, None
        self._write({"enabled": False, "last_run_at": None})

    def _write(self, values: Mapping[str, Any], signal_change: bool = False) -> None:
        update_row(self.schema_name, self.model.pk, values, signal_change)


def row_targets(
    schema_name: str, headers: Mapping[str, Any]
) -> tuple[tuple[str, ...] | None, float]:
    """Return ``(tenant_schemas, tenant_spread_seconds)`` of a row of ``schema_name``.

    A tenant's row always stays in its tenant, whatever its headers say.

    Raises:
        InvalidSchemaName: a public row's ``_schema_name`` header is not a schema name.
        TenantConfigurationError: the ``_tenant_spread_seconds`` header is malformed, or
            a public row's ``_all_tenants_only`` header is neither true nor false.
    """
    spread = validate_spread(headers.get(SPREAD_HEADER))
    public = public_schema_name()
    if schema_name != public:
        return (schema_name,), spread
    if header_flag(headers.get(ALL_TENANTS_HEADER), ALL_TENANTS_HEADER):
        return None, spread
    target = headers.get(SCHEMA_HEADER)
    return (public if target is None else validate_schema_name(target),), spread


def row_values(model: PeriodicTask) -> tuple[Any, ...]:
    """Return the values of a ``PeriodicTask`` row and of its schedule row, to compare reads."""
    values: list[Any] = [
        getattr(model, field.attname) for field in PeriodicTask._meta.concrete_fields
    ]
    for field_name, schedule_model in SCHEDULE_MODELS.items():
        schedule = PeriodicTask._meta.get_field(field_name).get_cached_value(model, default=None)
        values.append(
            None
            if schedule is None
            else tuple(getattr(schedule, f.attname) for f in schedule_model._meta.concrete_fields)
        )
    return tuple(values)
