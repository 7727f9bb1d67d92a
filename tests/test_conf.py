"""Option lookup: task attribute, then app setting (either spelling), then default; bad values."""

from __future__ import annotations

from pathlib import Path

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


def test_extra_search_paths_follow_the_setting():
    from tenant_schemas_celery.session import proof_parameters, search_path_for

    assert search_path_for("tenant1", "public") == ["tenant1", "public"]
    with override_settings(PG_EXTRA_SEARCH_PATHS=["extensions"]):
        paths = search_path_for("tenant1", "public")
        assert paths == ["tenant1", "public", "extensions"]
        assert proof_parameters(paths, "tenant1")[0] == '"tenant1","public","extensions"'
    assert search_path_for("tenant1", "public") == ["tenant1", "public"]


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


def test_run_time_changes_win_at_the_next_call(app):
    # A change made after tasks already ran is read at the next call
    task = make_task(app)
    assert task.get_tenant_databases() == ("default",)
    app.conf["task_tenant_databases"] = ("other",)
    assert task.get_tenant_databases() == ("other",)
    app.conf.update(task_tenant_databases=("default", "other"))
    assert task.get_tenant_databases() == ("default", "other")


class _FirstConfig:
    task_tenant_cache_seconds = 7


class _SecondConfig:
    task_tenant_cache_seconds = 9


def test_config_from_object_replaces_a_remembered_setting(app):
    # The source is remembered between calls; a new source replaces it
    app.config_from_object(_FirstConfig)
    task = make_task(app)
    assert conf.tenant_cache_seconds(task) == 7
    assert conf.tenant_cache_seconds(task) == 7
    app.config_from_object(_SecondConfig)
    assert conf.tenant_cache_seconds(task) == 9


def test_namespaced_key_set_on_app_conf_is_found():
    # app.conf["CELERY_TASK_TENANT_DATABASES"] on an app configured with namespace CELERY
    app = Celery("conf-namespace", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    try:
        task = make_task(app)
        assert task.get_tenant_databases() == ("default",)
        app.conf["CELERY_TASK_TENANT_DATABASES"] = ("default", "other")
        assert task.get_tenant_databases() == ("default", "other")
    finally:
        app.close()


# beat_tenant_heartbeat_file --------------------------------------------------------------


@pytest.mark.parametrize("key", ["beat_tenant_heartbeat_file", "BEAT_TENANT_HEARTBEAT_FILE"])
def test_heartbeat_file_either_spelling(app, key):
    assert conf.beat_heartbeat_file(app) is None
    app.conf[key] = "/tmp/beat.heartbeat"
    assert conf.beat_heartbeat_file(app) == "/tmp/beat.heartbeat"


def test_heartbeat_file_a_path_object_or_empty(app):
    app.conf.beat_tenant_heartbeat_file = Path("/tmp/beat.heartbeat")
    assert conf.beat_heartbeat_file(app) == "/tmp/beat.heartbeat"
    app.conf.beat_tenant_heartbeat_file = ""
    assert conf.beat_heartbeat_file(app) is None


def test_heartbeat_file_from_the_django_setting():
    app = Celery("conf-heartbeat", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    try:
        with override_settings(CELERY_BEAT_TENANT_HEARTBEAT_FILE="/run/beat.heartbeat"):
            assert conf.beat_heartbeat_file(app) == "/run/beat.heartbeat"
        assert conf.beat_heartbeat_file(app) is None
    finally:
        app.close()


@pytest.mark.parametrize("value", [5, True, b"/tmp/beat.heartbeat", ["/tmp/beat.heartbeat"]])
def test_bad_heartbeat_file_is_named(app, value):
    app.conf.beat_tenant_heartbeat_file = value
    with pytest.raises(
        TenantConfigurationError, match="the beat_tenant_heartbeat_file setting must be a file path"
    ):
        conf.beat_heartbeat_file(app)
