"""The demo's Celery app, set up as the README's quickstart says.

    celery -A examples.demo.celery worker -l INFO
    celery -A examples.demo.celery beat -l INFO \
        --scheduler tenant_schemas_celery.scheduler.TenantAwareScheduler
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.demo.settings")

from django.conf import settings

from tenant_schemas_celery.app import CeleryApp as TenantAwareCeleryApp

app = TenantAwareCeleryApp()
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(lambda: settings.INSTALLED_APPS)
