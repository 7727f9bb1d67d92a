"""The test project's Celery app, set up exactly as the README's quickstart says."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.project.settings")

from django.conf import settings

from tenant_schemas_celery.app import CeleryApp as TenantAwareCeleryApp

app = TenantAwareCeleryApp()
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(lambda: settings.INSTALLED_APPS)
