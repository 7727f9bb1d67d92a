"""Django settings of the demo project. Connections come from the environment:

``DATABASE_URL``
    ``postgres://USER:PASSWORD@HOST:PORT/NAME``; default ``postgres://postgres@127.0.0.1:5432/tsc_demo``.
``BROKER_URL``
    ``redis://...`` or ``amqp://...``; default: kombu's filesystem transport in ``DEMO_TMP``
    (no broker to install). Results go to Redis with a Redis or RabbitMQ broker
    (``RESULT_BACKEND``, default the broker's URL for Redis, ``redis://127.0.0.1:6379/0``
    for RabbitMQ), else to files in ``DEMO_TMP``.
``DEMO_TMP``
    folder of the filesystem broker and results (``run.py`` makes a temporary one);
    default ``<tmp>/tsc-demo``.
``DEMO_QUEUE``
    the task queue; default ``tsc-demo`` (``run.py`` gives each run its own).
"""

import os
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from celery.beat import BeatLazyFunc

SECRET_KEY = "demo-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"


def database_from_url(url: str) -> dict:
    """Return a django-tenants ``DATABASES`` entry for a ``postgres://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise ValueError(f"DATABASE_URL must be a postgres:// URL, got {url!r}")
    return {
        "ENGINE": "django_tenants.postgresql_backend",
        "NAME": unquote(parts.path.lstrip("/")) or "tsc_demo",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


DATABASE_URL = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/tsc_demo"
DATABASES = {"default": database_from_url(DATABASE_URL)}
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)

SHARED_APPS = [
    "django_tenants",
    "examples.demo.customers",
    "django.contrib.contenttypes",
]
TENANT_APPS = [
    "django.contrib.contenttypes",
    "examples.demo.shop",
]
INSTALLED_APPS = list(dict.fromkeys(SHARED_APPS + TENANT_APPS))
TENANT_MODEL = "customers.Client"
TENANT_DOMAIN_MODEL = "customers.Domain"

# Celery (read by app.config_from_object("django.conf:settings", namespace="CELERY")).
DEMO_TMP = Path(os.environ.get("DEMO_TMP") or Path(tempfile.gettempdir()) / "tsc-demo")
BROKER_URL = os.environ.get("BROKER_URL", "")

if BROKER_URL:
    CELERY_BROKER_URL = BROKER_URL
    CELERY_RESULT_BACKEND = os.environ.get("RESULT_BACKEND") or (
        BROKER_URL
        if BROKER_URL.startswith(("redis://", "rediss://"))
        else "redis://127.0.0.1:6379/0"
    )
else:
    for folder in ("broker", "broker-control", "results"):
        (DEMO_TMP / folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://localhost/"  # a host name, or kombu warns about it
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(DEMO_TMP / "broker"),
        "data_folder_out": str(DEMO_TMP / "broker"),
        "control_folder": str(DEMO_TMP / "broker-control"),
        "polling_interval": 0.1,
    }
    CELERY_RESULT_BACKEND = f"file://{DEMO_TMP / 'results'}"
    # The filesystem transport cannot deliver remote-control broadcasts: do not send the
    # "forget this tenant" broadcast on tenant saves/deletes (the tenant cache is off anyway).
    CELERY_TASK_TENANT_CACHE_BROADCAST = False

# Own names, so that the demo never shares a queue or a broadcast with other workers.
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("DEMO_QUEUE") or "tsc-demo"
CELERY_CONTROL_EXCHANGE = "tsc-demo"
CELERY_RESULT_EXPIRES = 600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# An entry without "tenant_schemas": TenantAwareScheduler sends it to every tenant at each
# due time (entry name "record-periodic-run@__all_tenants_only__"). Its argument is the
# time of the round, evaluated once per round, so the runs of one round can be told apart.
CELERY_BEAT_SCHEDULE = {
    "record-periodic-run": {
        "task": "examples.demo.shop.tasks.record_periodic_run",
        "schedule": 2.0,
        "args": (BeatLazyFunc(time.time),),
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
