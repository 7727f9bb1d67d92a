"""Django settings of the worker that runs README.md's examples (``tests/test_readme.py``).

The test project's settings, plus the ``reporting`` database alias that the README's
multiple-databases example names (another connection to the same database), and the
queue of that worker: the README's app reads the Django settings without a namespace, so
the queue is given under Celery's old setting name, which Celery reads there.
"""

import os

from tests.project.settings import *  # noqa: F403
from tests.project.settings import DATABASES, _database

DATABASES = {**DATABASES, "reporting": _database()}
CELERY_DEFAULT_QUEUE = os.environ.get("TSC_README_QUEUE", "tsc-readme")
