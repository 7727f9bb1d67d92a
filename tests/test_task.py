"""``TenantTask``'s own behaviour: the guarded body of every kind of ``run``, tasks made
tenant-aware after the fact, the lookup hook's contract, and the end-of-task receiver.

In-process (``apply``: the same ``task_prerun``/``task_postrun`` path as a worker),
against real PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, Task
from celery.signals import task_postrun
from django.core.exceptions import ObjectDoesNotExist
from django.db import connection
from django_tenants.utils import schema_context

from tenant_schemas_celery.app import CeleryApp
from tenant_schemas_celery.exceptions import TenantNotFound
from tenant_schemas_celery.task import TenantTask, make_tenant_aware, tenant_aware_class
from tests.project.celery import app
from tests.project.notes import tasks

#: Schemas the bodies of this module's tasks ran in.
ran: list[str] = []


class MethodRun(TenantTask):
    name = "task_tests.method"

    def run(self) -> str:
        ran.append(connection.schema_name)
        return connection.schema_name


class StaticRun(TenantTask):
    name = "task_tests.static"

    @staticmethod
    def run() -> str:
        ran.append(connection.schema_name)
        return connection.schema_name


class ClassRun(TenantTask):
    name = "task_tests.class"

    @classmethod
    def run(cls) -> str:
        ran.append(connection.schema_name)
        return connection.schema_name


@pytest.fixture(autouse=True)
def nothing_ran() -> None:
    ran.clear()


@pytest.mark.parametrize("kind", [MethodRun, StaticRun, ClassRun])
def test_every_kind_of_run_is_guarded(tenants, kind):
    task = app.register_task(kind())
    refused = task.apply(headers={"_schema_name": "nobody"})
    assert refused.state == "FAILURE"
    assert isinstance(refused.result, TenantNotFound)
    assert ran == []  # the body never ran
    with schema_context("tenant1"):
        assert task.apply().get() == "tenant1"
    assert ran == ["tenant1"]


@pytest.fixture
def apps() -> Iterator[tuple[Celery, CeleryApp]]:
    """A plain Celery app and a tenant-aware one."""
    plain = Celery("task-tests-plain", set_as_current=False)
    tenant_aware = CeleryApp("task-tests-tenant", set_as_current=False)
    yield plain, tenant_aware
    plain.close()
    tenant_aware.close()


def test_a_task_autoretry_wrapped_then_registered_in_a_celery_app_is_guarded(tenants, apps):
    # Given a task of a plain app, whose run autoretry already wrapped
    plain, tenant_aware = apps

    @plain.task(shared=False, name="task_tests.recorded", autoretry_for=(KeyError,))
    def body() -> str:
        ran.append(connection.schema_name)
        return connection.schema_name

    # When it is registered in a CeleryApp, which makes it tenant-aware in place
    recorded = tenant_aware.register_task(plain.tasks["task_tests.recorded"])
    assert isinstance(recorded, TenantTask)
    # Then a failed activation stops its body, and it runs in its tenant otherwise
    refused = recorded.apply(headers={"_schema_name": "nobody"})
    assert isinstance(refused.result, TenantNotFound)
    assert ran == []
    with schema_context("tenant2"):
        assert recorded.apply().get() == "tenant2"


def test_tenant_aware_class_keeps_tenant_tasks_and_extends_other_bases():
    class Base(Task):
        """A base knowing nothing of tenants."""

        def greet(self) -> str:
            return "hello"

    assert tenant_aware_class(MethodRun) is MethodRun
    variant = tenant_aware_class(Base)
    assert issubclass(variant, TenantTask) and issubclass(variant, Base)
    assert (variant.__name__, variant.__qualname__, variant.__doc__) == (
        Base.__name__,
        Base.__qualname__,
        Base.__doc__,
    )
    assert make_tenant_aware(Base) is variant
    assert variant().greet() == "hello"


def test_the_default_lookup_raises_object_does_not_exist_for_an_unknown_schema(tenants):
    with pytest.raises(ObjectDoesNotExist):
        tasks.whereami.get_tenant_for_schema("nobody")
    assert tasks.whereami.get_tenant_for_schema("tenant1").schema_name == "tenant1"


class Audited(TenantTask):
    """A lookup override calling ``super()``, as the hook's docstring shows."""

    tenant_cache_seconds = 30
    calls: list[str] = []

    @classmethod
    def get_tenant_for_schema(cls, schema_name: str) -> Any:
        cls.calls.append(schema_name)
        return super().get_tenant_for_schema(schema_name)


@app.task(base=Audited, shared=False, name="task_tests.audited")
def audited() -> str:
    return connection.schema_name


def test_an_override_is_called_for_every_task_and_keeps_the_cache_through_super(tenants):
    Audited.calls.clear()
    with schema_context("tenant2"):
        assert [audited.apply().get() for _ in range(2)] == ["tenant2", "tenant2"]
    assert Audited.calls == ["tenant2", "tenant2"]
    assert Audited.get_tenant_for_schema("tenant2") is Audited.get_tenant_for_schema("tenant2")


def test_task_postrun_receivers_connected_after_tasks_ran_see_the_tenant(tenants):
    # Given a task that already ran, so the library's receivers are all connected
    tasks.whereami.apply()
    seen: list[str] = []

    def receiver(sender: Any = None, **kwargs: Any) -> None:
        seen.append(connection.schema_name)

    # When a task_postrun receiver is connected after that
    task_postrun.connect(receiver)
    try:
        with schema_context("tenant1"):
            tasks.whereami.apply(headers={"_schema_name": "tenant2"})
            assert connection.schema_name == "tenant1"
    finally:
        task_postrun.disconnect(receiver)
    # Then it ran before the tenant was restored
    assert seen == ["tenant2"]


# A custom base that is not a TenantTask ----------------------------------------------------


class BothDatabasesBase(Task):
    """A custom base (not a TenantTask) naming the aliases its tasks use."""

    tenant_databases = ("default", "other")


@app.task(base=BothDatabasesBase, shared=False, name="task_tests.both_databases_base")
def other_alias_schema() -> str:
    from django.db import connections

    return connections["other"].schema_name


class RefusingBase(Task):
    """A custom base (not a TenantTask) whose lookup refuses every tenant (say, suspended)."""

    @classmethod
    def get_tenant_for_schema(cls, schema_name: str) -> None:
        raise ObjectDoesNotExist(f"{schema_name} is suspended")


@app.task(base=RefusingBase, shared=False, name="task_tests.refusing_base")
def refused_schema() -> str:
    return connection.schema_name


def test_a_custom_bases_tenant_databases_win_over_tenant_tasks_default(tenants):
    assert other_alias_schema.tenant_databases == ("default", "other")
    with schema_context("tenant1"):
        assert other_alias_schema.apply().get() == "tenant1"


def test_a_custom_bases_lookup_decides(tenants):
    with schema_context("tenant1"):
        result = refused_schema.apply()
    assert result.state == "FAILURE"
    assert isinstance(result.result, TenantNotFound)


def test_a_task_made_tenant_aware_in_place_keeps_its_own_app():
    plain_app = Celery("task-tests-plain", set_as_current=False)
    TenantTask.get_tenant_databases()  # binds TenantTask itself to the current app

    @plain_app.task(shared=False, name="task_tests.keeps_app")
    def body() -> None:
        return None

    task = make_tenant_aware(plain_app.tasks["task_tests.keeps_app"])
    try:
        assert task.app is plain_app
        assert task.apply().get() is None
    finally:
        plain_app.close()
