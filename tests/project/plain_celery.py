"""A plain ``celery.Celery`` app (no CeleryApp) with one TenantTask and one ordinary task."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.project.settings")

import django
from celery import Celery

django.setup()

from django.db import connection  # noqa: E402

from tenant_schemas_celery.task import TenantTask  # noqa: E402
from tests.project.runtime_conf import set_setting  # noqa: E402

app = Celery("plain", set_as_current=False)
app.config_from_object("django.conf:settings", namespace="CELERY")
set_setting(app, "task_default_queue", os.environ.get("TSC_QUEUE", "tsc-tests") + "-plain")


@app.task(base=TenantTask)
def tenant_schema():
    return connection.schema_name


@app.task
def plain_schema():
    return connection.schema_name


@app.task(base=TenantTask)
def record_schema(token):
    from tests.project.notes.tasks import record_event

    record_event(f"plain:{token}:{connection.schema_name}")
