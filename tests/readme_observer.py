"""Imported by the worker that runs README.md's examples (``tests/test_readme.py``).

The README's task bodies print or do nothing, so this module records, for every task
run, the schema of each database connection as the task left them: a ``task_postrun``
receiver sees the task's tenant (the README's "How it works" says so). Records go to a
Redis list named by ``TSC_README_RUNS``, as JSON.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery.signals import task_postrun
from django.conf import settings
from django.db import connections

RUNS_KEY = os.environ.get("TSC_README_RUNS", "tsc-tests:readme-runs")


def runs_db() -> redis.Redis:
    return redis.Redis.from_url(f"{settings.REDIS_URL}/12")


@task_postrun.connect(weak=False, dispatch_uid="tests.readme_observer")
def record_run(sender: Any = None, task_id: str = "", state: str = "", **kwargs: Any) -> None:
    schemas = {alias: connections[alias].schema_name for alias in settings.DATABASES}
    run = {"task": sender.name, "id": task_id, "state": state, "schemas": schemas}
    runs_db().rpush(RUNS_KEY, json.dumps(run))
