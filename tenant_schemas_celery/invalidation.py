"""Cross-process invalidation of the tenant cache.

When a tenant is saved or deleted, the process that did it drops the tenant from its
own cache and, once the transaction commits, broadcasts the remote-control command
``tenant_schemas_celery_forget`` to every worker. A worker's main process handles the
command: it clears its cache and bumps a counter kept in memory shared with the
pool processes it forks (prefork), which clear their caches before their next task.
"""

from __future__ import annotations

import logging
import mmap
from typing import Any

from celery.app import app_or_default
from celery.worker.control import control_command

from .cache import tenant_cache
from .conf import app_setting

logger = logging.getLogger(__name__)

#: Name of the remote-control command that makes workers forget cached tenants.
FORGET_COMMAND = "tenant_schemas_celery_forget"

# One 8-byte counter in anonymous shared memory: created at import, before the
# worker forks its pool, so the main process and all pool processes see the same one.
_generation = mmap.mmap(-1, 8)
_counter = memoryview(_generation).cast("Q")
_seen_generation = [0]


def generation() -> int:
    """Return how many invalidations this worker has received."""
    value: int = _counter[0]
    return value


def catch_up() -> None:
    """Clear this process's tenant cache if the worker received an invalidation since."""
    current = generation()
    if current != _seen_generation[0]:
        _seen_generation[0] = current
        tenant_cache.clear()


def forget_everywhere(schema_name: str) -> None:
    """Broadcast ``FORGET_COMMAND`` for ``schema_name``; log, never raise, on failure."""
    app = app_or_default()
    if app_setting(app, "task_tenant_cache_broadcast") is False:
        return
    try:
        app.control.broadcast(FORGET_COMMAND, arguments={"schema_name": schema_name})
    except Exception:
        logger.warning(
            "Could not broadcast %s for schema %r: workers keep cached tenants until "
            "their tenant_cache_seconds expire.",
            FORGET_COMMAND,
            schema_name,
            exc_info=True,
        )


@control_command(args=[("schema_name", str)], signature="<schema_name>")
def tenant_schemas_celery_forget(state: Any, schema_name: str = "", **kwargs: Any) -> dict:
    """Remote-control command: forget cached tenants in this worker and its pool processes."""
    _counter[0] = generation() + 1
    catch_up()
    return {"ok": f"forgot cached tenants ({schema_name or 'all'})"}
