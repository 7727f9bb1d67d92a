"""Worker-side OpenTelemetry for tests/test_otel.py (``-I tests.project.otel_worker``).

Set up as opentelemetry-instrumentation-celery documents it, in ``worker_process_init``:
each pool process instruments Celery and writes its finished spans, one JSON line
each, to the file named by ``TSC_OTEL_SPANS``.
"""

from __future__ import annotations

import json
import os

from celery.signals import worker_process_init
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor


def _one_line(span) -> str:
    return json.dumps(json.loads(span.to_json())) + "\n"


def instrument(**kwargs) -> None:
    provider = TracerProvider()
    out = open(os.environ["TSC_OTEL_SPANS"], "a", buffering=1)  # noqa: SIM115 -- process-long
    provider.add_span_processor(
        SimpleSpanProcessor(ConsoleSpanExporter(out=out, formatter=_one_line))
    )
    CeleryInstrumentor().instrument(tracer_provider=provider)


if os.environ.get("TSC_OTEL_SPANS"):
    worker_process_init.connect(instrument, weak=False)
