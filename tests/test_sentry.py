"""Sentry events captured in a task carry the task's schema as a tag."""

from __future__ import annotations

import pytest
import sentry_sdk
from django_tenants.utils import schema_context
from sentry_sdk.transport import Transport

from tenant_schemas_celery.sentry import SENTRY_TAG
from tests.project.celery import app
from tests.project.notes import tasks


class Capture(Transport):
    def __init__(self, options=None):
        super().__init__(options)
        self.events: list[dict] = []

    def capture_envelope(self, envelope):
        for item in envelope.items:
            if item.type == "event":
                self.events.append(item.payload.json)


@pytest.fixture
def sentry():
    transport = Capture()
    sentry_sdk.init(
        dsn="https://key@sentry.invalid/1", transport=transport, default_integrations=False
    )
    yield transport
    sentry_sdk.get_client().close(timeout=0)
    sentry_sdk.init()  # back to a disabled client


def test_tag_does_not_outlive_the_task(tenants, sentry):
    with schema_context("tenant1"):
        tasks.whereami.apply()
    sentry_sdk.capture_message("outside")
    assert [SENTRY_TAG in e.get("tags", {}) for e in sentry.events] == [False]


def test_task_events_are_tagged_with_the_schema(tenants, sentry):
    with schema_context("tenant2"):
        tasks.capture_sentry_message.apply(args=("hello",))
    assert [e["tags"][SENTRY_TAG] for e in sentry.events] == ["tenant2"]


def test_tagging_can_be_turned_off(tenants, sentry):
    app.conf.task_tenant_sentry_tag = False
    try:
        with schema_context("tenant2"):
            tasks.capture_sentry_message.apply(args=("hello",))
    finally:
        app.conf.task_tenant_sentry_tag = None
    assert [SENTRY_TAG in e.get("tags", {}) for e in sentry.events] == [False]
