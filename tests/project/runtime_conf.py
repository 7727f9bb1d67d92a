"""Change a Celery setting at run time so that the change wins on every supported Celery."""

from __future__ import annotations

from typing import Any

from celery import Celery


def set_setting(app: Celery, name: str, value: Any) -> None:
    """Set the Celery setting ``name`` (lower case) of ``app`` to ``value``.

    ``app.conf.name = value`` alone is not enough for an app configured with
    ``config_from_object("django.conf:settings", namespace="CELERY")``: up to Celery 5.6,
    ``ConfigurationView.__getitem__`` tries the namespaced name (``CELERY_BROKER_URL``) in
    every mapping, the Django settings included, before it tries the plain name in the
    changes, so the Django setting hides the change. Celery 5.7 looks at the changes first.
    The change is stored under both names, and is found first by either lookup.
    """
    app.conf[name] = value
    if app.namespace:  # app.conf.prefix would be None until the configuration is read
        app.conf[f"{app.namespace.rstrip('_')}_{name}".upper()] = value
