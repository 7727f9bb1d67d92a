"""Django settings of the benchmark project; every knob comes from a ``BENCH_*`` variable.

The models are the test project's (``customers.Client`` tenants, ``notes.Note`` in
every schema), but the database is the benchmark's own (``BENCH_PG_DB``), created
and dropped by the benchmark scripts.

Variables:
    BENCH_PG_DB: database name (default ``tsc_bench_worker``).
    BENCH_PG_HOST / BENCH_PG_PORT / BENCH_PG_USER / BENCH_PG_PASSWORD: PostgreSQL.
    BENCH_BROKER_URL: Celery broker (default Redis database 10).
    BENCH_CACHE_SECONDS: ``CELERY_TASK_TENANT_CACHE_SECONDS`` (default 0, no cache).
    BENCH_DB_REUSE_MAX: ``CELERY_DB_REUSE_MAX``; empty (the default here is 1000000)
        means Celery's own default: close the connections around every task.
    BENCH_LIMIT_SET_CALLS: ``TENANT_LIMIT_SET_CALLS`` (``1`` or ``0``, default ``0``).
"""

from __future__ import annotations

import os
from typing import Any

SECRET_KEY = "bench-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")


def _database() -> dict[str, Any]:
    return {
        "ENGINE": "django_tenants.postgresql_backend",
        "NAME": os.environ.get("BENCH_PG_DB", "tsc_bench_worker"),
        "USER": os.environ.get("BENCH_PG_USER", "postgres"),
        "PASSWORD": os.environ.get("BENCH_PG_PASSWORD", ""),
        "HOST": os.environ.get("BENCH_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("BENCH_PG_PORT", "5432"),
    }


DATABASES = {"default": _database()}
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)

SHARED_APPS = [
    "django_tenants",
    "tests.project.customers",
    "django.contrib.contenttypes",
    # Also shared, so that the plain-Celery floor finds the table in public.
    "tests.project.notes",
]
TENANT_APPS = ["django.contrib.contenttypes", "tests.project.notes"]
INSTALLED_APPS = list(dict.fromkeys(SHARED_APPS + TENANT_APPS))
TENANT_MODEL = "customers.Client"
TENANT_DOMAIN_MODEL = "customers.Domain"
TENANT_LIMIT_SET_CALLS = os.environ.get("BENCH_LIMIT_SET_CALLS", "0") == "1"

CELERY_BROKER_URL = os.environ.get("BENCH_BROKER_URL", f"{REDIS_URL}/10")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# Acked after the body ran, so that "queue empty and nothing unacked" means "all done".
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_TENANT_CACHE_SECONDS = float(os.environ.get("BENCH_CACHE_SECONDS", "0"))
_reuse = os.environ.get("BENCH_DB_REUSE_MAX", "1000000")
CELERY_DB_REUSE_MAX = int(_reuse) if _reuse else None

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
