"""Django settings of the test project; every connection setting comes from the environment."""

import importlib.util
import os

SECRET_KEY = "tests-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"


def _database(**extra):
    return {
        "ENGINE": "django_tenants.postgresql_backend",
        "NAME": os.environ.get("TSC_PG_DB", "tsc_test"),
        "USER": os.environ.get("TSC_PG_USER", "postgres"),
        "PASSWORD": os.environ.get("TSC_PG_PASSWORD", ""),
        "HOST": os.environ.get("TSC_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("TSC_PG_PORT", "5432"),
        **extra,
    }


DATABASES = {
    "default": _database(),
    # A second connection to the same database, for the multiple-databases tests.
    "other": _database(),
    # A third one that no test task lists in tenant_databases.
    "untouched": _database(),
}
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)

#: django-celery-beat is optional (the "beat" extra): without it, its tests are not collected.
BEAT = importlib.util.find_spec("django_celery_beat") is not None
SHARED_APPS = [
    "django_tenants",
    "tests.project.customers",
    "django.contrib.contenttypes",
    *(["django_celery_beat"] if BEAT else []),
    # Also shared, so that a task wrongly run in public would find a table to write to.
    "tests.project.notes",
]
TENANT_APPS = [
    "django.contrib.contenttypes",
    *(["django_celery_beat"] if BEAT else []),
    "tests.project.notes",
]
INSTALLED_APPS = list(dict.fromkeys(SHARED_APPS + TENANT_APPS))
TENANT_MODEL = "customers.Client"
TENANT_DOMAIN_MODEL = "customers.Domain"

REDIS_URL = os.environ.get("TSC_REDIS_URL", "redis://127.0.0.1:6379")
AMQP_URL = os.environ.get("TSC_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

CELERY_BROKER_URL = os.environ.get("TSC_BROKER_URL", f"{REDIS_URL}/13")
CELERY_RESULT_BACKEND = os.environ.get("TSC_RESULT_BACKEND", f"{REDIS_URL}/14")
CELERY_RESULT_EXTENDED = True
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("TSC_QUEUE", "tsc-tests")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_TENANT_CACHE_SECONDS = int(os.environ.get("TSC_CACHE_SECONDS", "0"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

# Fault tests (tests/test_faults.py): optional worker settings, read only when the env sets them.
import json  # noqa: E402

if "TSC_DB_REUSE_MAX" in os.environ:  # the worker keeps its connections for 2 x N task runs
    CELERY_DB_REUSE_MAX = int(os.environ["TSC_DB_REUSE_MAX"])
if "TSC_LIMIT_SET_CALLS" in os.environ:  # django-tenants sets search_path once per connection
    TENANT_LIMIT_SET_CALLS = True
if "TSC_CONN_HEALTH_CHECKS" in os.environ:  # Django's check of a reused connection
    for _alias in DATABASES.values():
        _alias["CONN_HEALTH_CHECKS"] = True
if "TSC_BROKER_TRANSPORT_OPTIONS" in os.environ:  # JSON, e.g. Redis' visibility_timeout
    CELERY_BROKER_TRANSPORT_OPTIONS = json.loads(os.environ["TSC_BROKER_TRANSPORT_OPTIONS"])

# Deployment tests: optional switches, read only when the env sets them.
if os.environ.get("TSC_PSYCOPG_POOL"):  # psycopg 3's pool (Django 5.1+): tests/test_psycopg3.py
    for _alias in DATABASES.values():
        _alias.setdefault("OPTIONS", {})["pool"] = {"min_size": 1, "max_size": 4}
if os.environ.get("TSC_RESULTS_LAYOUT") in ("shared", "both", "tenant"):  # test_results.py
    # django-celery-results in SHARED_APPS only, in both lists, or in TENANT_APPS only
    if os.environ["TSC_RESULTS_LAYOUT"] in ("shared", "both"):
        SHARED_APPS.append("django_celery_results")
    if os.environ["TSC_RESULTS_LAYOUT"] in ("both", "tenant"):
        TENANT_APPS.append("django_celery_results")
    INSTALLED_APPS = list(dict.fromkeys(SHARED_APPS + TENANT_APPS))
    CELERY_RESULT_BACKEND = "django-db"
if "TSC_CONN_MAX_AGE" in os.environ:  # tests/test_connections.py: persistent connections
    for _alias in DATABASES.values():
        _alias["CONN_MAX_AGE"] = int(os.environ["TSC_CONN_MAX_AGE"])
if "TSC_BEAT_HEARTBEAT_FILE" in os.environ:  # tests/test_liveness.py: beat's heartbeat file
    CELERY_BEAT_TENANT_HEARTBEAT_FILE = os.environ["TSC_BEAT_HEARTBEAT_FILE"]
