"""Publishing with ``CeleryApp``: every message stamped once, by whichever call sends it.

A ``TenantTask``'s ``apply_async`` puts the header and stamps the signatures its message
carries; Celery's ``apply_async`` then calls ``app.send_task`` with ``task_type``, which
passes them on without a second copy. ``send_task`` by name still does both itself.
Messages go to kombu's in-memory transport; no worker runs.
"""

from __future__ import annotations

from typing import Any

import pytest
from django_tenants.utils import schema_context

from tenant_schemas_celery import app as app_module
from tenant_schemas_celery.app import CeleryApp
from tenant_schemas_celery.canvas import CARRIED_OPTIONS, carries_signatures

QUEUE = "tsc-publish-path"


@pytest.fixture
def memory_app():
    app = CeleryApp("publish_path", set_as_current=False)
    app.conf.broker_url = "memory://"
    app.conf.task_default_queue = QUEUE

    @app.task(name="publish_path.add", shared=False)
    def add(number: int) -> int:
        return number

    yield app, app.tasks["publish_path.add"]
    app.close()


@pytest.fixture
def stamp_calls(monkeypatch):
    calls: list[str | None] = []
    original = app_module.stamp_carried

    def recording(options: Any, schema_name: str | None) -> None:
        calls.append(schema_name)
        original(options, schema_name)

    monkeypatch.setattr(app_module, "stamp_carried", recording)
    return calls


def received(app: Any) -> Any:
    with app.connection_for_read() as connection:
        message = connection.default_channel.basic_get(QUEUE, no_ack=True)
    assert message is not None
    return message


def callback_schema(message: Any) -> str | None:
    (callback,) = message.decode()[2]["callbacks"]
    headers: dict[str, Any] = (callback.get("options") or {}).get("headers") or {}
    return headers.get("_schema_name")


def test_apply_async_messages_are_stamped_once(database, memory_app, stamp_calls):
    app, task = memory_app
    with schema_context("tenant1"):
        task.apply_async((1,), link=task.si(2), link_error=task.si(3))
    message = received(app)
    # The message and its callback carry the schema, stamped by apply_async alone
    assert message.headers["_schema_name"] == "tenant1"
    assert callback_schema(message) == "tenant1"
    assert stamp_calls == []


def test_send_task_by_name_still_stamps(database, memory_app, stamp_calls):
    app, task = memory_app
    with schema_context("tenant1"):
        app.send_task("publish_path.add", (1,), link=task.si(2))
    message = received(app)
    assert message.headers["_schema_name"] == "tenant1"
    assert callback_schema(message) == "tenant1"
    assert stamp_calls == ["tenant1"]


def test_send_task_with_a_plain_task_type_still_stamps(database, memory_app, stamp_calls):
    app, task = memory_app
    with schema_context("tenant1"):
        app.send_task("publish_path.add", (1,), link=task.si(2), task_type=object())
    assert received(app).headers["_schema_name"] == "tenant1"
    assert stamp_calls == ["tenant1"]


@pytest.mark.parametrize("key", CARRIED_OPTIONS)
def test_carries_signatures_checks_every_carried_option(key):
    assert carries_signatures({key: ["signature"]})
    assert not carries_signatures({key: None, "headers": {"x": 1}})
