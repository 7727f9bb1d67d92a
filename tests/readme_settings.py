"""Django settings of the worker that runs README.md's examples (``tests/test_readme.py``).

The test project's settings (its ``CELERY_BROKER_URL`` is the broker that the README's
app, configured with ``namespace='CELERY'``, connects to), plus the ``reporting`` database
alias that the README's multiple-databases example names (another connection to the same
database), and the queue of that worker.
"""

import os

from tests.project.settings import *  # noqa: F403
from tests.project.settings import DATABASES, _database

DATABASES = {**DATABASES, "reporting": _database()}
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("TSC_README_QUEUE", "tsc-readme")
# Celery's default (the test project turns it off): the worker logs as a user's would, which
# the tests read (a task's output is logged as a warning).
CELERY_WORKER_HIJACK_ROOT_LOGGER = True
