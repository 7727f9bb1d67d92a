"""The examples in the library's docstrings run and print what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import tenant_schemas_celery

MODULES = sorted(
    info.name
    for info in pkgutil.iter_modules(tenant_schemas_celery.__path__, "tenant_schemas_celery.")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_examples_exist() -> None:
    # The collection above found the modules (and so would find a failing example)
    found = 0
    for name in MODULES:
        finder = doctest.DocTestFinder()
        found += sum(len(test.examples) for test in finder.find(importlib.import_module(name)))
    assert found >= 5
