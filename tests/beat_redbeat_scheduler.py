"""``TenantAwareSchedulerMixin`` over celery-redbeat's ``RedBeatScheduler``.

For ``celery beat -S tests.beat_redbeat_scheduler.TenantRedBeatScheduler`` in the
end-to-end tests of ``tests/test_beat_compose.py``, and for its in-process tests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from redbeat import RedBeatScheduler

from tenant_schemas_celery.scheduler import TenantAwareSchedulerMixin


class TenantRedBeatScheduler(TenantAwareSchedulerMixin, RedBeatScheduler):
    """The mixin over celery-redbeat's ``RedBeatScheduler``.

    In a ``celery beat`` process (``TSC_REDBEAT_PREFIX`` set), its keys have that prefix
    (concurrent test runs share the Redis database), it takes no lock, and each message
    names its entry in the ``periodic_task_name`` header, as django-celery-beat's rows
    do (the end-to-end app's recorder reads it).
    """

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self.e2e = bool(os.environ.get("TSC_REDBEAT_PREFIX"))
        if self.e2e:
            app.conf.update(
                redbeat_redis_url=app.conf.broker_url,
                redbeat_key_prefix=os.environ["TSC_REDBEAT_PREFIX"],
                redbeat_lock_key=None,
            )
        super().__init__(app, *args, **kwargs)

    def expand_schedule(self, config: Mapping[str, Any]) -> dict[str, Any]:
        entries = super().expand_schedule(config)
        if self.e2e:
            for name, fields in entries.items():
                fields["options"]["headers"].setdefault("periodic_task_name", name)
        return entries
