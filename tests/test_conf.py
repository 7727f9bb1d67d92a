"""Option lookup: task attribute, then app setting (either spelling), then default; bad values."""

from __future__ import annotations

import pytest
from celery import Celery
from django.test import override_settings

from tenant_schemas_celery import conf
from tenant_schemas_celery.exceptions import TenantConfigurationError
from tenant_schemas_celery.task import TenantTask


@pytest.fixture
def app():
    app = Celery("conf-tests", set_as_current=False)
    yield app
    app.close()


def make_task(app, **attributes):
    @app.task(base=TenantTask, shared=False, **attributes)
    def probe():
        return None

    return probe


def test_defaults(app):
    task = make_task(app)
    assert conf.tenant_databases(task) == ("default",)
    assert conf.tenant_cache_seconds(task) == 0


def test_default_alias_follows_tenant_db_alias(app):
    with override_settings(TENANT_DB_ALIAS="other"):
        assert make_task(app).get_tenant_databases() == ("other",)


@pytest.mark.parametrize("key", ["task_tenant_databases", "TASK_TENANT_DATABASES"])
def test_app_setting_either_spelling(app, key):
    app.conf[key] = ["default", "other"]
    assert make_task(app).get_tenant_databases() == ("default", "other")


def test_task_attribute_wins_over_setting(app):
    app.conf.task_tenant_cache_seconds = 5
    app.conf.task_tenant_databases = ["other"]
    task = make_task(app, tenant_cache_seconds=0, tenant_databases=("default",))
    assert conf.tenant_cache_seconds(task) == 0
    assert conf.tenant_databases(task) == ("default",)
    assert conf.tenant_cache_seconds(make_task(app, name="second")) == 5


def test_a_single_alias_string_is_accepted(app):
    assert conf.tenant_databases(make_task(app, tenant_databases="other")) == ("other",)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (("default", "nope"), "names ['nope'], which settings.DATABASES does not define"),
        ((), "non-empty list"),
        ((1,), "non-empty list of database alias strings"),
        (42, "must be a list of database aliases"),
    ],
)
def test_bad_databases_are_named(app, value, message):
    with pytest.raises(
        TenantConfigurationError, match=message.replace("[", r"\[").replace("]", r"\]")
    ):
        conf.tenant_databases(make_task(app, tenant_databases=value))


@pytest.mark.parametrize("value", [-1, "30", True, [30]])
def test_bad_cache_seconds_are_named(app, value):
    app.conf.task_tenant_cache_seconds = value
    with pytest.raises(TenantConfigurationError, match="task_tenant_cache_seconds setting"):
        conf.tenant_cache_seconds(make_task(app))
