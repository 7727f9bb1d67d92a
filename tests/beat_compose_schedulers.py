"""authentik's scheduler: ``TenantAwareSchedulerMixin`` over django-celery-beat's.

For ``celery beat -S tests.beat_compose_schedulers.AuthentikScheduler`` in the
end-to-end tests of ``tests/test_beat_compose.py``, and for its in-process tests.
(celery-redbeat's is in ``tests.beat_redbeat_scheduler``: importing redbeat connects a
``beat_init`` receiver that expects its own scheduler.)
"""

from __future__ import annotations

from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from tenant_schemas_celery.scheduler import TenantAwareScheduleEntry, TenantAwareSchedulerMixin


class SchedulerEntry(ModelEntry, TenantAwareScheduleEntry):
    """authentik's entry class (``authentik/tenants/scheduler.py``)."""


class AuthentikScheduler(TenantAwareSchedulerMixin, DatabaseScheduler):
    """authentik's scheduler: the mixin over django-celery-beat's ``DatabaseScheduler``."""

    Entry = SchedulerEntry
