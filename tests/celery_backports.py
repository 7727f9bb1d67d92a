"""Fixes of newer Celery releases, applied in the test process to the older releases it may run.

Each one is for a bug of Celery itself that the tests hit by the way, not for anything this
library does; each does nothing on a Celery release that has the fix.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable

import celery


def defer_nested_result_unsubscribes() -> None:
    """Celery < 5.7, Redis result backend: an ``AsyncResult`` freed by the GC cannot deadlock.

    ``AsyncResult.__del__`` unsubscribes from the result's channel
    (``ResultConsumer.cancel_for``). When the cyclic garbage collector runs it while this
    thread is inside another subscribe, unsubscribe or ``get_message`` of the same redis-py
    ``PubSub``, that ``PubSub``'s lock (a non-reentrant ``threading.Lock``) is already held
    by this thread, and the thread waits for itself forever: a ``result.get()`` of the test
    never returns (celery/celery#10477; Celery 5.7 defers such an unsubscribe until the
    outer pub/sub operation is done). This does the same: a ``cancel_for`` called while the
    thread is inside one of the consumer's operations is queued, and sent when the outermost
    operation returns.
    """
    if celery.VERSION >= (5, 7):
        return
    from celery.backends.redis import ResultConsumer

    if getattr(ResultConsumer, "_tsc_defers_nested_cancels", False):
        return
    state = threading.local()
    cancel_for = ResultConsumer.cancel_for

    def flush(consumer: Any) -> None:
        queued: list[str] = consumer.__dict__.setdefault("_tsc_queued_cancels", [])
        while queued:
            state.depth = 1
            try:
                cancel_for(consumer, queued.pop(0))
            finally:
                state.depth = 0

    def operation(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def run(consumer: Any, *args: Any, **kwargs: Any) -> Any:
            depth = getattr(state, "depth", 0)
            state.depth = depth + 1
            try:
                return method(consumer, *args, **kwargs)
            finally:
                state.depth = depth
                if not depth:
                    flush(consumer)

        return run

    run_cancel_for = operation(cancel_for)

    @functools.wraps(cancel_for)
    def deferring_cancel_for(consumer: Any, task_id: str) -> None:
        if getattr(state, "depth", 0):
            consumer.__dict__.setdefault("_tsc_queued_cancels", []).append(task_id)
        else:
            run_cancel_for(consumer, task_id)

    for name in ("consume_from", "drain_events", "stop"):
        setattr(ResultConsumer, name, operation(getattr(ResultConsumer, name)))
    ResultConsumer.cancel_for = deferring_cancel_for
    ResultConsumer._tsc_defers_nested_cancels = True
