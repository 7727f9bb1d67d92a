"""The schedulers of the beat high-availability tests: each stamps the entry it sends.

See ``tests.beat_ha_app``: the stamp tells which beat sent which run of an entry.
"""

from __future__ import annotations

from typing import Any

from tenant_schemas_celery.db_scheduler import TenantAwareDatabaseScheduler
from tenant_schemas_celery.scheduler import TenantAwarePersistentScheduler, TenantAwareScheduler
from tests.beat_ha_app import stamp


class StampingScheduler(TenantAwareScheduler):
    """``TenantAwareScheduler``, stamping each entry it sends."""

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        stamp(entry)
        super().apply_entry(entry, producer=producer)


class StampingPersistentScheduler(TenantAwarePersistentScheduler):
    """``TenantAwarePersistentScheduler``, stamping each entry it sends."""

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        stamp(entry)
        super().apply_entry(entry, producer=producer)


class StampingDatabaseScheduler(TenantAwareDatabaseScheduler):
    """``TenantAwareDatabaseScheduler``, stamping each row it sends."""

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        stamp(entry)
        super().apply_entry(entry, producer=producer)
