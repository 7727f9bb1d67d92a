"""fanout: sending one entry to its schemas, with real PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from celery._state import _set_task_join_will_block, task_join_will_block
from celery.beat import BeatLazyFunc
from django.db import connection
from django_tenants.utils import tenant_context

from tenant_schemas_celery.fanout import results_not_awaited, send_to_schemas
from tests.beat_helpers import TASK, drain, schemas_of, statements
from tests.project.celery import app
from tests.project.customers.models import Client


def fanout_entry(queue: str, **fields: Any) -> Any:
    values = {
        "name": "job",
        "task": TASK,
        "args": [],
        "kwargs": {},
        "options": {"queue": queue},
        "tenant_spread_seconds": 0.0,
        **fields,
    }
    return SimpleNamespace(**values)


# Sending --------------------------------------------------------------------------------


@pytest.mark.usefixtures("beat_db")
def test_all_messages_go_through_one_producer_without_queries(beat_queue: str) -> None:
    schemas = [f"schema{index}" for index in range(25)]
    with app.producer_or_acquire() as producer:
        publish = producer.publish
        calls: list[Any] = []

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            return publish(*args, **kwargs)

        producer.publish = counting
        sent = statements(lambda: send_to_schemas(app, fanout_entry(beat_queue), schemas, producer))
    assert sent == []
    assert len(calls) == 25
    assert schemas_of(drain(beat_queue)) == sorted(schemas)


def test_without_a_producer_one_is_acquired_once(beat_queue: str, monkeypatch: Any) -> None:
    acquired = []
    original = app.producer_or_acquire

    def spy(producer: Any = None) -> Any:
        acquired.append(producer)
        return original(producer)

    monkeypatch.setattr(app, "producer_or_acquire", spy)
    send_to_schemas(app, fanout_entry(beat_queue), ["a", "b", "c"])
    # One acquisition; each send then reuses that producer
    assert acquired[0] is None
    assert len(acquired) == 4 and len({id(producer) for producer in acquired[1:]}) == 1
    assert schemas_of(drain(beat_queue)) == ["a", "b", "c"]


def test_headers_args_and_spread_of_each_message(beat_queue: str) -> None:
    calls = []

    def now() -> int:
        calls.append(1)
        return len(calls)

    entry = fanout_entry(
        beat_queue,
        args=[BeatLazyFunc(now)],
        kwargs={"k": "v"},
        options={
            "queue": beat_queue,
            "expires": 600,
            "headers": {"mine": 1, "_all_tenants_only": True, "_tenant_spread_seconds": 9},
        },
        tenant_spread_seconds=120,
    )
    send_to_schemas(app, entry, ["tenant1", "tenant2"])
    messages = drain(beat_queue)
    assert calls == [1]  # a lazy argument is evaluated once per run, not per tenant
    for message in messages:
        assert message["args"] == [1]
        assert message["kwargs"] == {"k": "v"}
        assert message["mine"] == 1
        assert message["celery_beat_task"] is True
        assert "_all_tenants_only" not in message and "_tenant_spread_seconds" not in message
        assert message["eta"] is not None and message["expires"] is not None
    assert schemas_of(messages) == ["tenant1", "tenant2"]


def test_each_copy_is_sent_in_its_schema_and_the_tenant_before_comes_back(
    beat_queue: str,
) -> None:
    seen: list[tuple[str, str, str, bool]] = []

    def apply_async(copy: Any, producer: Any) -> None:
        headers = copy.options["headers"]
        seen.append(
            (connection.schema_name, headers["_schema_name"], copy.name, producer is shared)
        )

    entry = fanout_entry(beat_queue, options={"headers": {"_all_tenants_only": True}})
    tenant1 = Client.objects.get(schema_name="tenant1")
    with app.producer_or_acquire() as shared, tenant_context(tenant1):
        sent = send_to_schemas(app, entry, ["tenant2", "public"], shared, apply_async)
        assert connection.tenant is tenant1  # the tenant active before, itself
    assert sent == ["tenant2", "public"]
    assert seen == [("tenant2", "tenant2", "job", True), ("public", "public", "job", True)]
    assert entry.options == {"headers": {"_all_tenants_only": True}}  # the entry is not changed


def test_first_failed_send_ends_the_run(beat_queue: str, caplog: Any) -> None:
    entry = fanout_entry(beat_queue, kwargs={"unserializable": object()})
    assert send_to_schemas(app, entry, ["a", "b", "c"]) == []
    assert drain(beat_queue) == []
    assert "its 2 remaining schema(s) are not sent" in caplog.text


def test_a_failed_batch_write_is_logged(beat_queue: str, caplog: Any, monkeypatch: Any) -> None:
    # Given a producer whose batch fails when it is written (after 3 messages)
    @contextmanager
    def failing_batch(max_size: int) -> Iterator[None]:
        yield
        raise ConnectionError("broker gone")

    with app.producer_or_acquire() as producer:
        monkeypatch.setattr(producer, "batch", failing_batch, raising=False)
        sent = send_to_schemas(app, fanout_entry(beat_queue), ["a", "b", "c"], producer)
        monkeypatch.undo()
    drain(beat_queue)
    assert sent == ["a", "b", "c"]
    assert "failed after 3 message(s); the last 3 of them may not have reached" in caplog.text


@pytest.mark.skipif(
    not hasattr(__import__("kombu").Producer, "batch"),
    reason="this kombu has no Producer.batch: messages are sent one by one",
)
def test_messages_are_written_in_batches(beat_queue: str, monkeypatch: Any) -> None:
    sizes = []
    with app.producer_or_acquire() as producer:
        batch = producer.batch

        def recording(max_size: int) -> Any:
            sizes.append(max_size)
            return batch(max_size)

        monkeypatch.setattr(producer, "batch", recording, raising=False)
        send_to_schemas(app, fanout_entry(beat_queue), ["a", "b"], producer)
        monkeypatch.undo()
    assert sizes == [1000]
    assert schemas_of(drain(beat_queue)) == ["a", "b"]


def redis_subscribe_calls() -> int:
    """How many SUBSCRIBE commands the result backend's Redis server ran so far."""
    import redis

    stats = redis.Redis.from_url(app.conf.result_backend).info("commandstats")
    return int(stats.get("cmdstat_subscribe", {}).get("calls", 0))


def test_the_result_backend_does_not_watch_the_results_of_a_run(beat_queue: str) -> None:
    # Celery's Redis result backend subscribes to the result of each message sent...
    before = redis_subscribe_calls()
    app.send_task(TASK, queue=beat_queue)
    assert redis_subscribe_calls() > before
    # ...but not to those of a run, which beat never reads
    before = redis_subscribe_calls()
    send_to_schemas(app, fanout_entry(beat_queue), ["a", "b", "c"])
    assert redis_subscribe_calls() == before
    messages = drain(beat_queue)[1:]
    # The messages are unchanged: the worker stores their results as usual
    assert schemas_of(messages) == ["a", "b", "c"]
    assert [message["ignore_result"] for message in messages] == [False] * 3
    assert not task_join_will_block()


def test_results_not_awaited_restores_the_flag() -> None:
    with pytest.raises(RuntimeError), results_not_awaited():
        assert task_join_will_block()
        raise RuntimeError("send failed")
    assert not task_join_will_block()
    # Where joining already blocks (a worker process), it stays so
    _set_task_join_will_block(True)
    try:
        with results_not_awaited():
            pass
        assert task_join_will_block()
    finally:
        _set_task_join_will_block(False)
