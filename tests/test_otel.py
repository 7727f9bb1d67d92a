"""OpenTelemetry: the span opentelemetry-instrumentation-celery opens for a task carries
the task's schema (``tenant.schema_name``), in-process and in a real worker."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest
from celery.signals import task_postrun, task_prerun
from django_tenants.utils import schema_context
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tenant_schemas_celery import otel
from tenant_schemas_celery import task as task_module
from tenant_schemas_celery.otel import OTEL_ATTRIBUTE
from tests.conftest import BROKERS
from tests.project.celery import app
from tests.project.notes import tasks
from tests.workers import worker

RUN_SPAN = f"run/{tasks.whereami.name}"


@pytest.fixture
def spans():
    """The Celery instrumentation on, its spans kept in memory; off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = CeleryInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    yield exporter
    instrumentor.uninstrument()


def run_spans(exporter: InMemorySpanExporter, name: str = RUN_SPAN) -> list:
    return [s for s in exporter.get_finished_spans() if s.name == name]


@pytest.mark.parametrize("schema_name", ["tenant1", "tenant2", "public"])
def test_the_span_of_a_task_carries_its_schema(tenants, spans, schema_name):
    with schema_context(schema_name):
        assert tasks.whereami.apply().get()["schema"] == schema_name
    assert [s.attributes.get(OTEL_ATTRIBUTE) for s in run_spans(spans)] == [schema_name]


def test_each_task_of_a_sequence_gets_its_own_schema(tenants, spans):
    for schema_name in ("tenant1", "tenant2", "tenant1"):
        with schema_context(schema_name):
            tasks.whereami.apply()
    assert [s.attributes.get(OTEL_ATTRIBUTE) for s in run_spans(spans)] == [
        "tenant1",
        "tenant2",
        "tenant1",
    ]


def test_the_attribute_can_be_turned_off(tenants, spans):
    app.conf.task_tenant_otel_attribute = False
    try:
        with schema_context("tenant2"):
            tasks.whereami.apply()
    finally:
        app.conf.task_tenant_otel_attribute = None
    (span,) = run_spans(spans)
    assert OTEL_ATTRIBUTE not in span.attributes


def test_instrumentation_connected_before_the_library(tenants, spans):
    """When the instrumentation's task_prerun receiver runs first, the attribute is set
    as the tenant is activated (the end-of-task receiver is disconnected here)."""
    assert task_prerun.disconnect(dispatch_uid="tenant_schemas_celery.activate")
    assert task_postrun.disconnect(dispatch_uid="tenant_schemas_celery.otel")
    try:  # reconnected after the instrumentation's receiver: it now runs second
        task_prerun.connect(
            task_module._activate_tenant, weak=False, dispatch_uid="tenant_schemas_celery.activate"
        )
        with schema_context("tenant1"):
            tasks.whereami.apply()
    finally:
        task_postrun.connect(
            otel._tag_span_at_end, weak=False, dispatch_uid="tenant_schemas_celery.otel"
        )
    assert [s.attributes.get(OTEL_ATTRIBUTE) for s in run_spans(spans)] == ["tenant1"]


def test_no_instrumentation_no_error(tenants):
    with schema_context("tenant1"):
        assert tasks.whereami.apply().get()["schema"] == "tenant1"


def test_nothing_is_recorded_on_a_task_while_the_instrumentation_is_off(tenants):
    """Installed but not instrumented: the hooks leave the request alone (and cost nothing)."""
    tasks.whereami.push_request(id="otel-off")
    try:
        otel.tag_span(tasks.whereami, "tenant1")
        assert not hasattr(tasks.whereami.request, otel._PENDING_ATTR)
    finally:
        tasks.whereami.pop_request()


def test_the_schema_is_recorded_while_the_instrumentation_is_on(tenants, spans):
    tasks.whereami.push_request(id="otel-on")
    try:
        otel.tag_span(tasks.whereami, "tenant1")
        assert getattr(tasks.whereami.request, otel._PENDING_ATTR) == "tenant1"
    finally:
        tasks.whereami.pop_request()


@pytest.mark.integration
@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_real_worker_spans_carry_the_schema(tenants, pool):
    # Given a worker instrumented in worker_process_init, writing its spans to a file
    spans_file = Path(tempfile.mkstemp(prefix="tsc-otel-", suffix=".jsonl")[1])
    process = worker(
        BROKERS["redis"], pool=pool, concurrency=2, env={"TSC_OTEL_SPANS": str(spans_file)},
        extra=("-I", "tests.project.otel_worker"),
    ).start()  # fmt: skip
    try:
        schemas = ["tenant1", "tenant2", "public", "tenant2", "tenant1", "tenant1"]
        results = []
        for schema_name in schemas:
            with schema_context(schema_name):
                results.append(tasks.whereami.delay())
        ran = [r.get(timeout=60)["schema"] for r in results]
        # Then each run span has the schema its task ran in
        deadline = time.monotonic() + 20
        by_id: dict[str, str | None] = {}
        while len(by_id) < len(results) and time.monotonic() < deadline:
            lines = [json.loads(x) for x in spans_file.read_text().splitlines() if x]
            by_id = {
                s["attributes"]["messaging.message.id"]: s["attributes"].get(OTEL_ATTRIBUTE)
                for s in lines
                if s["name"] == RUN_SPAN
            }
            time.sleep(0.1)
    finally:
        process.stop()
        log = process.log()
    assert ran == schemas
    assert [by_id.get(r.id) for r in results] == schemas, log
