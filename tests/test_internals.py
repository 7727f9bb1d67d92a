"""internals: what each private name of Celery, django-tenants and sentry-sdk does for us.

Each test pins the upstream behaviour one function of ``tenant_schemas_celery.internals``
relies on, against the installed versions (nox runs them on the oldest and the newest
pins), so an upgrade that changes it fails here first. The public names used instead of
private ones (``Task.app``, ``celery.current_task``) are pinned here too.
django-celery-beat's are in ``test_internals_beat.py``.
"""

from __future__ import annotations

import datetime
import inspect
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from celery import Celery, Task, current_task, shared_task
from celery import _state as celery_state
from celery.backends import redis as redis_backend
from celery.backends import rpc as rpc_backend
from celery.beat import Scheduler
from celery.result import assert_will_not_block
from django.db import connection

from tenant_schemas_celery import internals
from tenant_schemas_celery.task import TenantTask


@pytest.fixture
def pins_app() -> Iterator[Celery]:
    """A Celery app of its own (not the current one), finalized, with eager tasks."""
    app = Celery("pins", set_as_current=False, task_always_eager=True)
    app.finalize()
    yield app
    app.close()


# Public names used instead of private ones --------------------------------------------


def test_task_app_is_what_the_private_get_app_returns(pins_app: Celery) -> None:
    # Given a task made from a function, and task classes not bound to any app yet
    @pins_app.task(shared=False)
    def made() -> None:
        pass

    class Unbound(TenantTask):
        pass

    class UnboundPlain(Task):
        pass

    # Then Task.app (conf, dispatch, sentry, otel) is Task._get_app(), on a task and on
    # its class, bound or not: the class is bound on first use either way.
    assert made.app is type(made).app is made._get_app() is pins_app
    for cls in (Unbound, UnboundPlain):
        app = cls.app
        assert cls.__bound__
        assert app is cls._get_app() is cls().app


def test_current_task_is_false_outside_a_task_and_the_task_inside(pins_app: Celery) -> None:
    # Given a task that reports what celery.current_task is while it runs
    seen: list[Any] = []

    @pins_app.task(shared=False)
    def report() -> None:
        seen.append((bool(current_task), current_task.name, celery_state.get_current_task()))

    # Then the proxy is false outside a task (log.SchemaNameFilter's test) and is the
    # running task inside, as celery._state.get_current_task() says
    assert not current_task
    assert celery_state.get_current_task() is None
    report.apply()
    assert seen == [(True, report.name, report)]


# Celery ---------------------------------------------------------------------------------


def test_joins_will_block_sets_the_flag_the_result_backends_read() -> None:
    # The Redis and RPC result backends skip subscribing to results (or declaring
    # reply queues) when this very function says joins would block.
    assert redis_backend.task_join_will_block is celery_state.task_join_will_block
    assert rpc_backend.task_join_will_block is celery_state.task_join_will_block
    assert not celery_state.task_join_will_block()
    with internals.joins_will_block():
        assert celery_state.task_join_will_block()
        with pytest.raises(RuntimeError):
            assert_will_not_block()
    assert not celery_state.task_join_will_block()


def test_joins_will_block_leaves_a_flag_already_set_alone() -> None:
    celery_state._set_task_join_will_block(True)
    try:
        with internals.joins_will_block():
            assert celery_state.task_join_will_block()
        assert celery_state.task_join_will_block()
    finally:
        celery_state._set_task_join_will_block(False)


def test_sync_scheduler_syncs_and_restarts_the_counts_should_sync_reads(
    pins_app: Celery,
) -> None:
    # Given an in-memory Celery scheduler that synced long ago and sent tasks since
    syncs: list[bool] = []

    class Recording(Scheduler):
        def sync(self) -> None:
            syncs.append(True)

    scheduler = Recording(pins_app, lazy=True, sync_every_tasks=3)
    scheduler._last_sync = time.monotonic() - 3600
    scheduler._tasks_since_sync = 3
    assert scheduler.should_sync()

    # When it is synced through internals
    internals.sync_scheduler(scheduler)

    # Then sync() ran once and should_sync() starts counting again
    assert syncs == [True]
    assert scheduler._tasks_since_sync == 0
    assert time.monotonic() - scheduler._last_sync < 60
    assert not scheduler.should_sync()


def test_rebuild_heap_makes_the_next_tick_see_entries_changed_outside_it(
    pins_app: Celery,
) -> None:
    # Given an in-memory scheduler whose heap holds an entry due in an hour
    scheduler = Scheduler(pins_app, lazy=True)
    scheduler.update_from_dict({"hourly": {"task": "t", "schedule": 3600}})
    scheduler.schedule["hourly"].last_run_at = pins_app.now()
    assert scheduler.tick() > 60
    # When the entry is made due outside tick: the heap still says it is not
    scheduler.schedule["hourly"].last_run_at = pins_app.now() - datetime.timedelta(hours=2)
    sent: list[str] = []
    scheduler.apply_entry = lambda entry, producer=None: sent.append(entry.name)  # type: ignore[method-assign]
    assert scheduler.tick() > 60 and not sent
    # Then once the heap is rebuilt through internals, the next tick sends it
    internals.rebuild_heap(scheduler)
    assert scheduler.tick() == 0 and sent == ["hourly"]


def test_rebind_autoretry_run_changes_the_body_celerys_autoretry_calls(
    pins_app: Celery,
) -> None:
    # Given a task with autoretry_for (Celery wraps its run) and one without
    @pins_app.task(shared=False, autoretry_for=(KeyError,))
    def retrying() -> str:
        return "original"

    @pins_app.task(shared=False)
    def plain() -> str:
        return "plain"

    task = pins_app.tasks[retrying.name]
    assert "_orig_run" in task.__dict__
    assert "_orig_run" not in pins_app.tasks[plain.name].__dict__

    # When the body the wrapper calls is replaced
    assert internals.rebind_autoretry_run(task, lambda: "replaced")
    assert not internals.rebind_autoretry_run(pins_app.tasks[plain.name], lambda: "x")

    # Then the wrapper looks it up at call time
    assert task.run() == "replaced"
    assert pins_app.tasks[plain.name].run() == "plain"


class _Marked(Task):
    """The base class ``_HookedApp.task_base`` returns."""


class _HookedApp(internals.TaskBaseHook):
    asked: list[Any]

    def task_base(self, base: Any) -> Any:
        self.asked.append(base)
        return type("Marked", (_Marked, base), {})


def test_task_base_hook_sees_the_base_of_app_task_and_shared_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an app whose hook marks the base class of every task made from a function
    app = _HookedApp("hooked", set_as_current=False)
    app.asked = []
    app.finalize()  # makes Celery's built-in tasks (and shared ones) through the hook too
    assert isinstance(app.tasks["celery.backend_cleanup"], _Marked)
    app.asked = []

    class Custom(Task):
        pass

    def fun() -> None:
        pass

    def shared_fun() -> None:
        pass

    # When tasks are made by app.task, with and without base=, and by shared_task
    # (which calls _task_from_fun for every active app at once, and on each app's
    # finalize: only this app is active here, and the finalizer is dropped after)
    made = app.task(fun, name="pins.made", shared=False)
    custom = app.task(fun, name="pins.custom", base=Custom, shared=False)
    finalizers = set(celery_state._on_app_finalizers)
    monkeypatch.setattr(celery_state, "_get_active_apps", lambda: [app])
    try:
        shared_task(shared_fun, name="pins.shared")
    finally:
        celery_state._on_app_finalizers.intersection_update(finalizers)

    # Then every one of them went through the hook
    assert app.asked == [app.Task, Custom, app.Task]
    assert isinstance(made, _Marked)
    assert isinstance(custom, _Marked) and isinstance(custom, Custom)
    assert isinstance(app.tasks["pins.shared"], _Marked)
    assert "base" in inspect.signature(Celery._task_from_fun).parameters
    app.close()


# django-tenants -------------------------------------------------------------------------


@pytest.mark.usefixtures("database")
def test_search_path_hook_runs_in_place_of_handle_search_path_at_each_cursor() -> None:
    hook = internals.search_path_hook(connection)
    if hook is None:  # django-tenants 3.x sets the path inside _cursor() itself
        assert not hasattr(type(connection), "_handle_search_path")
        return
    assert list(inspect.signature(hook).parameters) == ["self", "cursor"]
    # Given a hook installed on the connection in place of django-tenants' own
    calls: list[Any] = []
    connection.set_schema_to_public()
    internals.install_search_path_hook(connection, calls.append)
    try:
        assert internals.installed_search_path_hook(connection) == calls.append
        # When a cursor is made, Then django-tenants calls the hook with that cursor
        with connection.cursor() as cursor:
            pass
        assert len(calls) == 1 and calls[0] is cursor
    finally:
        del connection.__dict__["_handle_search_path"]
    assert internals.installed_search_path_hook(connection) is None
    connection.search_path_set_schemas = None


# sentry-sdk -----------------------------------------------------------------------------


def test_scope_tag_reads_what_set_tag_and_remove_tag_write() -> None:
    scope = sentry_sdk.Scope()
    assert isinstance(scope._tags, dict)
    assert internals.scope_tag(scope, "tenant.schema_name") is None
    scope.set_tag("tenant.schema_name", "tenant1")
    assert internals.scope_tag(scope, "tenant.schema_name") == "tenant1"
    scope.set_tag("tenant.schema_name", "tenant2")
    assert internals.scope_tag(scope, "tenant.schema_name") == "tenant2"
    scope.remove_tag("tenant.schema_name")
    assert internals.scope_tag(scope, "tenant.schema_name") is None
    # sentry.tag_events tags the scope sentry_sdk.get_isolation_scope() returns (a public
    # function sentry-sdk 2.0.0 does not have yet: there it is Scope.get_isolation_scope)
    assert type(sentry_sdk.get_isolation_scope()) is type(scope)


def test_last_receiver_uid_is_the_dispatch_uid_of_the_receiver_connected_last() -> None:
    from celery.utils.dispatch import Signal

    signal = Signal(name="pin")
    assert internals.last_receiver_uid(signal) is None

    def first(**kwargs: Any) -> None: ...

    def second(**kwargs: Any) -> None: ...

    signal.connect(first, weak=False, dispatch_uid="first")
    signal.connect(second, weak=False, dispatch_uid="second")
    assert internals.last_receiver_uid(signal) == "second"
    calls: list[str] = []
    signal.disconnect(dispatch_uid="first")
    signal.connect(lambda **kwargs: calls.append("first"), weak=False, dispatch_uid="first")
    signal.connect(lambda **kwargs: calls.append("other"), weak=False, dispatch_uid="other")
    assert internals.last_receiver_uid(signal) == "other"
    signal.send(sender=None)
    assert calls == ["first", "other"]  # receivers run in that order
