"""Which tenants a schedule entry or a ``delay_for_tenants`` call goes to.

The rules, shared by every scheduler and by ``TenantTask.delay_for_tenants``:

* The tenants are those of a queryset (by default ``tenant_queryset()``: every
  tenant, public included; a scheduler's ``get_queryset()`` may narrow it).
* "Every tenant" leaves the public schema out; a list of schemas may name public
  without a tenant row for it.
* A tenant whose schema does not exist in PostgreSQL yet is skipped (tenant still
  being created), and so is one whose ``schema_name`` is not a usable schema name.
  Both are found with one query for all tenants, never one per tenant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery.utils.log import get_logger
from django.db import connections

from ._sql import closing_on_error, tenant_schemas_existing
from .conf import public_schema_name
from .exceptions import InvalidSchemaName
from .resolution import validate_schema_name

if TYPE_CHECKING:
    from django.db.models import QuerySet

__all__ = [
    "NOT_A_TENANT",
    "NOT_READY",
    "UNUSABLE_NAME",
    "OnceLog",
    "Readiness",
    "TenantTargets",
    "read_readiness",
    "tenant_queryset",
    "valid_schema_names",
]

#: Celery's beat logger: our lines read in line with Celery's own.
logger = get_logger("celery.beat")

#: Why a schema is not sent to (the values of ``Readiness.split``'s skipped schemas).
NOT_A_TENANT = "neither the public schema nor a tenant of TenantAwareSchedulerMixin.get_queryset()"
NOT_READY = "its schema does not exist in the database yet (tenant still being created?)"
UNUSABLE_NAME = "the tenant's schema_name is not a usable schema name"


def tenant_queryset() -> QuerySet[Any]:
    """Return every tenant, public included (the schedulers' default ``get_queryset()``)."""
    from django_tenants.utils import get_tenant_model

    queryset: QuerySet[Any] = get_tenant_model().objects.all()
    return queryset


@dataclass(frozen=True)
class Readiness:
    """The tenants of a queryset, public excluded, sorted by whether they can be sent to.

    Attributes:
        ready: schema names of the tenants whose schema exists, in the queryset's order.
        not_ready: those whose schema does not exist yet.
        unusable: ``schema_name`` values that are not usable schema names.
    """

    ready: tuple[str, ...]
    not_ready: tuple[str, ...]
    unusable: tuple[str, ...]

    def split(self, wanted: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
        """Return the schemas to send to and the skipped ones, each with its reason.

        ``wanted`` None means every ready tenant (the skipped: the tenants not ready,
        and the unusable names); else the ``wanted`` names that are public or a ready
        tenant, in order.
        """
        if wanted is None:
            skipped = dict.fromkeys(self.not_ready, NOT_READY)
            skipped.update(dict.fromkeys(self.unusable, UNUSABLE_NAME))
            return list(self.ready), skipped
        public = public_schema_name()
        ready, not_ready = set(self.ready), set(self.not_ready)
        schemas: list[str] = []
        skipped = {}
        for name in wanted:
            if name == public or name in ready:
                schemas.append(name)
            else:
                skipped[name] = NOT_READY if name in not_ready else NOT_A_TENANT
        return schemas, skipped


def read_readiness(queryset: Any) -> Readiness:
    """Return the ``Readiness`` of the tenants of ``queryset``, read with one statement."""
    with closing_on_error(connections[queryset.db]):
        rows = tenant_schemas_existing(queryset)
    public = public_schema_name()
    ready: list[str] = []
    not_ready: list[str] = []
    unusable: list[str] = []
    for name, exists in rows:
        if name == public:
            continue
        try:
            (ready if exists else not_ready).append(validate_schema_name(name))
        except InvalidSchemaName:
            unusable.append(name)
    return Readiness(tuple(ready), tuple(not_ready), tuple(unusable))


def valid_schema_names(names: Iterable[str], rejected: OnceLog | None = None) -> list[str]:
    """Return the ``names`` that are usable schema names; report the others to ``rejected``."""
    valid, invalid = [], []
    for name in names:
        try:
            valid.append(validate_schema_name(name))
        except InvalidSchemaName:
            invalid.append(name)
    if rejected is not None:
        rejected.update(invalid)
    return valid


class OnceLog:
    """Log a warning the first time a schema is skipped, and again only after it recovered."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.reported: set[str] = set()

    @classmethod
    def unusable_names(cls) -> OnceLog:
        """Return a ``OnceLog`` for tenants whose schema name is unusable."""
        return cls("beat: Ignoring tenant schema %r: it is not a usable schema name.")

    def update(self, skipped: Iterable[str], checked: Iterable[str] = ()) -> None:
        """Report the ``skipped`` schemas not reported yet; forget the ``checked`` that were not."""
        skipped = set(skipped)
        self.reported -= set(checked) - skipped
        for schema_name in sorted(skipped - self.reported):
            logger.warning(self.message, schema_name)
        self.reported |= skipped


class TenantTargets:
    """The schemas entries are sent to, read at most once per burst of due entries.

    Parameters:
        get_queryset(Callable): returns the queryset of tenants beat may send to
            (the scheduler's ``get_queryset``).

    Each skipped schema is logged once (again only after it recovered). Call
    ``forget()`` when the beat loop goes to sleep: the next ``resolve()`` reads the
    tenants again, so tenants created or deleted since are picked up.
    """

    def __init__(self, get_queryset: Callable[[], Any]) -> None:
        self.get_queryset = get_queryset
        self._readiness: Readiness | None = None
        self._unusable = OnceLog.unusable_names()
        self._not_ready = OnceLog(
            "beat: Skipping tenant schema %r: it does not exist in the database yet "
            "(tenant still being created?)."
        )
        self._not_tenant = OnceLog(
            "beat: Skipping schema %r: it is neither the public schema nor a tenant "
            "of the scheduler's get_queryset()."
        )

    def readiness(self) -> Readiness:
        """Return the tenants' ``Readiness``, read once until ``forget()``."""
        if self._readiness is None:
            readiness = read_readiness(self.get_queryset())
            self._unusable.update(readiness.unusable)
            tenants = readiness.ready + readiness.not_ready
            self._not_ready.update(readiness.not_ready, tenants)
            self._readiness = readiness
        return self._readiness

    def resolve(self, tenant_schemas: Sequence[str] | None) -> list[str]:
        """Return the schemas an entry goes to: its ready ``tenant_schemas``, or all tenants."""
        schemas, skipped = self.readiness().split(tenant_schemas)
        if tenant_schemas is not None:
            strangers = [name for name, why in skipped.items() if why == NOT_A_TENANT]
            self._not_tenant.update(strangers, tenant_schemas)
        return schemas

    def forget(self) -> None:
        """Drop the tenants read so far; the next ``resolve()`` reads them again."""
        self._readiness = None
