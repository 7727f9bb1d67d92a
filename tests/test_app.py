"""``CeleryApp``: which tasks become tenant-aware, and the PyPI package's public names."""

from __future__ import annotations

import importlib
import inspect

import pytest
from celery import Task, current_app, shared_task
from celery.contrib.django.task import DjangoTask

from tenant_schemas_celery.app import CeleryApp
from tenant_schemas_celery.cache import SimpleCache, tenant_cache
from tenant_schemas_celery.registry import TenantTaskRegistry
from tenant_schemas_celery.task import TenantTask


class MyBase(Task):
    def hello(self):
        return "hello"


class Subclassed(CeleryApp):
    task_cls = "tests.test_app:MyBase"


@pytest.fixture
def app():
    app = CeleryApp("app-tests", set_as_current=False)
    yield app
    app.close()


def test_app_tasks_are_tenant_tasks_and_django_tasks(app):
    @app.task(shared=False)
    def plain():
        return 1

    assert isinstance(plain, TenantTask)
    assert isinstance(plain, DjangoTask)
    assert hasattr(plain, "delay_on_commit")
    assert isinstance(app.tasks, TenantTaskRegistry)


def test_custom_base_keeps_its_behaviour_and_gains_tenants(app):
    @app.task(base=MyBase, shared=False)
    def custom():
        return 1

    assert isinstance(custom, TenantTask)
    assert isinstance(custom, MyBase)
    assert custom.hello() == "hello"


def test_task_cls_string_on_a_subclass():
    app = Subclassed("subclassed", set_as_current=False)

    @app.task(shared=False)
    def task_of_subclass():
        return 1

    assert isinstance(task_of_subclass, MyBase)
    assert isinstance(task_of_subclass, TenantTask)
    app.close()


def test_shared_task_with_custom_base_on_current_app():
    previous = current_app._get_current_object()
    app = CeleryApp("shared-tests")
    try:

        @shared_task(base=MyBase)
        def shared_custom():
            return 1

        app.finalize()
        assert isinstance(app.tasks[shared_custom.name], TenantTask)
    finally:
        app.close()
        previous.set_current()


def test_class_based_tasks_registered_both_ways(app):
    class ByRegisterTask(Task):
        name = "by.register_task"
        autoretry_for = (KeyError,)

        def run(self):
            return 1

    class ByRegistry(Task):
        name = "by.registry"

        def run(self):
            return 2

    app.register_task(ByRegisterTask())
    app.tasks.register(ByRegistry)
    for name in ("by.register_task", "by.registry"):
        assert isinstance(app.tasks[name], TenantTask)
    # Called directly, the guarded body still runs normally
    assert app.tasks["by.register_task"]() == 1
    assert app.tasks["by.registry"].run() == 2


def test_guarded_run_keeps_the_signature(app):
    @app.task(shared=False)
    def unbound(a, b=2):
        return a + b

    @app.task(shared=False, bind=True)
    def bound(self, a, b=2):
        return a + b

    assert str(inspect.signature(unbound.run)) == "(a, b=2)"
    assert str(inspect.signature(bound.run)) == "(a, b=2)"
    assert unbound(1) == bound(1) == 3


def test_pypi_public_names():
    assert TenantTask.tenant_cache() is tenant_cache
    assert isinstance(tenant_cache, SimpleCache)
    assert TenantTask.get_tenant_databases() == ("default",)
    assert inspect.ismethod(TenantTask.get_tenant_for_schema)
    task_module = importlib.import_module("tenant_schemas_celery.task")
    capture = importlib.import_module("tenant_schemas_celery.capture")
    assert task_module.headers_with_schema is capture.headers_with_schema
    compat = importlib.import_module("tenant_schemas_celery.compat")
    from django_tenants import utils
    from django_tenants.models import TenantMixin
    from django_tenants.test.cases import TenantTestCase

    for name in ("get_tenant_model", "get_public_schema_name", "schema_context", "tenant_context"):
        assert getattr(compat, name) is getattr(utils, name)
    assert compat.TenantMixin is TenantMixin
    assert compat.TenantTestCase is TenantTestCase
    with pytest.raises(AttributeError):
        compat.nothing_here  # noqa: B018


ERRORS = [
    "TenantSchemasCeleryError",
    "InvalidSchemaName",
    "TenantNotFound",
    "TenantSchemaMissing",
    "TenantLookupFailed",
    "TenantActivationMissing",
    "TenantConfigurationError",
]


def test_package_root_exports():
    import tenant_schemas_celery as package
    from tenant_schemas_celery import capture, exceptions, log, scheduler, signals
    from tests.project.settings import BEAT

    # Each name of the package root is the very object of the module that documents it
    expected = {
        "CeleryApp": CeleryApp,
        "TenantTask": TenantTask,
        "headers_with_schema": capture.headers_with_schema,
        "TenantAwareScheduler": scheduler.TenantAwareScheduler,
        "TenantAwarePersistentScheduler": scheduler.TenantAwarePersistentScheduler,
        "SimpleCache": SimpleCache,
        "tenant_cache": tenant_cache,
        "tenant_activated": signals.tenant_activated,
        "SchemaNameFilter": log.SchemaNameFilter,
        **{name: getattr(exceptions, name) for name in ERRORS},
    }
    assert sorted(package.__all__) == sorted([*expected, "TenantAwareDatabaseScheduler"])
    for name, value in expected.items():
        assert getattr(package, name) is value, name
    assert all(
        issubclass(getattr(package, name), package.TenantSchemasCeleryError) for name in ERRORS
    )
    if BEAT:
        from tenant_schemas_celery.db_scheduler import TenantAwareDatabaseScheduler

        assert package.TenantAwareDatabaseScheduler is TenantAwareDatabaseScheduler
    else:  # the scheduler needs the "beat" extra, and says so
        with pytest.raises(ModuleNotFoundError, match="django_celery_beat"):
            package.TenantAwareDatabaseScheduler  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        package.nothing_here  # noqa: B018
