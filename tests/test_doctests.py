"""The examples in the library's docstrings run and print what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
from celery._state import _set_current_app, get_current_app

import tenant_schemas_celery
from tests.project.settings import BEAT

#: Modules that import django-celery-beat (the "beat" extra).
#: The modules that import django-celery-beat (the "beat" extra).
BEAT_MODULES = {
    "tenant_schemas_celery.beat_sql",
    "tenant_schemas_celery.db_scheduler",
    "tenant_schemas_celery.model_entry",
}
MODULES = sorted(
    info.name
    for info in pkgutil.iter_modules(tenant_schemas_celery.__path__, "tenant_schemas_celery.")
    if BEAT or info.name not in BEAT_MODULES
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    # An example that creates a Celery app makes it the current app, which shared tasks
    # of later tests would then use: the test project's app is made current again.
    current = get_current_app()
    try:
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    finally:
        _set_current_app(current)
    assert result.failed == 0
    assert get_current_app() is current


def test_examples_exist() -> None:
    # The collection above found the modules (and so would find a failing example)
    found = 0
    for name in MODULES:
        finder = doctest.DocTestFinder()
        found += sum(len(test.examples) for test in finder.find(importlib.import_module(name)))
    assert found >= 5
