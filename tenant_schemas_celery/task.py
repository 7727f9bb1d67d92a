"""``TenantTask``: a Celery task that runs in the schema of the tenant it was sent from."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from types import FunctionType, MethodType
from typing import Any, ClassVar, TypeVar
from weakref import WeakKeyDictionary

from celery import Task
from celery.contrib.django.task import DjangoTask
from celery.signals import task_postrun, task_prerun

from . import activation, conf, internals
from . import inspection as _inspection  # noqa: F401  (registers inspect commands)
from .cache import SimpleCache, tenant_cache
from .canvas import stamp_carried, stamped_list
from .capture import current_schema_name, headers_carrying, headers_with_schema
from .dispatch import send_to_tenants
from .resolution import DEFAULT_LOOKUP_ATTR, cached_tenant

__all__ = ["TenantTask", "headers_with_schema", "make_tenant_aware", "tenant_aware_class"]

_TaskT = TypeVar("_TaskT", bound=Task)
_GUARD_MARK = "__tenant_guarded__"


class TenantTask(DjangoTask):
    """A task that runs with its database connections switched to the sender's tenant.

    Sending (``delay``, ``apply_async``, ``apply``, signatures and canvas) stores the
    schema active on django-tenants' connection in the ``_schema_name`` header.
    Before the body runs, every alias of ``tenant_databases`` is switched to that
    tenant (public without a header); afterwards the previous tenant comes back.
    When the header is malformed or names no tenant, the task fails with a
    ``TenantSchemasCeleryError`` and its body does not run.

    Attributes:
        tenant_databases(Sequence[str] | None): aliases to switch; defaults to the
            ``task_tenant_databases`` setting, then ``(TENANT_DB_ALIAS,)``.
        tenant_cache_seconds(float | None): how long a looked-up tenant is reused;
            defaults to the ``task_tenant_cache_seconds`` setting, then 0 (no cache).
    """

    tenant_databases: ClassVar[Sequence[str] | None] = None
    tenant_cache_seconds: ClassVar[float | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _guard_run(cls)

    @classmethod
    def get_tenant_for_schema(cls, schema_name: str) -> Any:
        """Return the tenant whose schema is ``schema_name``; override to customise the lookup.

        The worker calls it before every task. This default looks the tenant up by
        ``schema_name``, and reuses it from ``tenant_cache()`` for
        ``tenant_cache_seconds``; an override that calls ``super()`` keeps the cache.

        Raises:
            ObjectDoesNotExist: no tenant has that schema (the task fails with
                ``TenantNotFound``).
        """
        return cached_tenant(
            cls.tenant_cache(), schema_name, conf.tenant_cache_seconds(cls), _default_lookup
        )

    setattr(get_tenant_for_schema.__func__, DEFAULT_LOOKUP_ATTR, True)  # type: ignore[attr-defined]

    @classmethod
    def get_tenant_databases(cls) -> tuple[str, ...]:
        """Return the database aliases switched to the task's tenant; override to customise."""
        return conf.tenant_databases(cls)

    @classmethod
    def tenant_cache(cls) -> SimpleCache:
        """Return the cache of tenant objects (process-wide by default); override to customise."""
        return tenant_cache

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> Any:
        """Send the task with the active schema in its ``_schema_name`` header.

        Signatures the message carries (``link``, ``link_error``, the rest of a chain,
        a chord's body) are stamped with the active schema too, unless they name one.
        """
        if link or link_error or options.get("chain") or options.get("chord"):
            active = current_schema_name()
            options["headers"] = headers_carrying(options.get("headers"), active)
            link = stamped_list(link, active) if link else link
            link_error = stamped_list(link_error, active) if link_error else link_error
            stamp_carried(options, active)
        else:
            options["headers"] = headers_with_schema(options.get("headers"))
        return super().apply_async(
            args,
            kwargs,
            task_id=task_id,
            producer=producer,
            link=link,
            link_error=link_error,
            shadow=shadow,
            **options,
        )

    def apply_async_on_commit(self, *args: Any, **kwargs: Any) -> None:
        """``apply_async`` when the transaction commits, in the schema active now."""
        kwargs["headers"] = headers_with_schema(kwargs.get("headers"))
        super().apply_async_on_commit(*args, **kwargs)

    def delay_on_commit(self, *args: Any, **kwargs: Any) -> None:
        """``delay`` when the transaction commits, in the schema active now."""
        self.apply_async_on_commit(args, kwargs)

    def apply(
        self,
        args: Any = None,
        kwargs: Any = None,
        link: Any = None,
        link_error: Any = None,
        task_id: str | None = None,
        retries: int | None = None,
        throw: bool | None = None,
        logfile: Any = None,
        loglevel: Any = None,
        headers: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run the task locally, in the active schema (or its ``_schema_name`` header's)."""
        return super().apply(
            args,
            kwargs,
            link=link,
            link_error=link_error,
            task_id=task_id,
            retries=retries,
            throw=throw,
            logfile=logfile,
            loglevel=loglevel,
            headers=headers_with_schema(headers),
            **options,
        )

    def delay_for_tenants(
        self,
        *args: Any,
        tenants: Iterable[Any] | None = None,
        spread_seconds: float = 0,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Send the task once per tenant (every tenant by default); return results by schema.

        Tenants whose schema does not exist yet are skipped; ``spread_seconds``
        spreads the messages over a window, each tenant at a stable offset. The
        keyword arguments ``tenants`` and ``spread_seconds`` are not passed to the task.

        Example (tenants ``tenant1`` and ``tenant2``)::

            results = reset_remaining_jobs.delay_for_tenants(spread_seconds=60)
            sorted(results)  # ['tenant1', 'tenant2']
        """
        return send_to_tenants(self, args, kwargs, tenants=tenants, spread_seconds=spread_seconds)

    def apply_async_for_tenants(
        self,
        args: Any = None,
        kwargs: Any = None,
        tenants: Iterable[Any] | None = None,
        spread_seconds: float = 0,
        **options: Any,
    ) -> dict[str, Any]:
        """Like ``delay_for_tenants``, with ``apply_async`` options for every message."""
        return send_to_tenants(
            self, args, kwargs, tenants=tenants, spread_seconds=spread_seconds, **options
        )


def _default_lookup(schema_name: str) -> Any:
    from django_tenants.utils import get_tenant_model

    return get_tenant_model().objects.get(schema_name=schema_name)


def _guard_run(cls: type) -> None:
    """Make ``cls.run`` raise the task's tenant activation error instead of running."""
    raw = inspect.getattr_static(cls, "run")
    target = raw.__func__ if isinstance(raw, staticmethod) else raw
    if getattr(target, _GUARD_MARK, False):
        return
    ensure_activated = activation.ensure_activated
    if isinstance(raw, staticmethod):
        body: Callable[..., Any] = raw.__func__

        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            ensure_activated(self)
            return body(*args, **kwargs)

        _copy_identity(run, body)
        run.__signature__ = _with_self(body)  # type: ignore[attr-defined]
    elif isinstance(raw, FunctionType):
        method: Callable[..., Any] = raw

        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            ensure_activated(self)
            return method(self, *args, **kwargs)

        _copy_identity(run, method)
        run.__wrapped__ = method  # type: ignore[attr-defined]
    else:
        descriptor = raw

        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            ensure_activated(self)
            return descriptor.__get__(self, type(self))(*args, **kwargs)

    setattr(run, _GUARD_MARK, True)
    cls.run = run  # type: ignore[attr-defined]


def _copy_identity(wrapper: Callable[..., Any], wrapped: Callable[..., Any]) -> None:
    for name in ("__module__", "__name__", "__qualname__", "__doc__"):
        if hasattr(wrapped, name):
            setattr(wrapper, name, getattr(wrapped, name))


def _with_self(function: Callable[..., Any]) -> inspect.Signature | None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    task_self = inspect.Parameter("_task_self", inspect.Parameter.POSITIONAL_ONLY)
    return signature.replace(parameters=[task_self, *signature.parameters.values()])


_variants: WeakKeyDictionary[type, type] = WeakKeyDictionary()


def tenant_aware_class(base: type[_TaskT]) -> type[_TaskT]:
    """Return ``base`` if it is a ``TenantTask``, else a ``TenantTask`` subclass of it.

    ``base`` comes first in the subclass's bases, so what it defines (its app, its
    ``tenant_databases``, an override of ``get_tenant_for_schema``) wins over
    ``TenantTask``'s defaults, and its own ``apply_async`` reaches ``TenantTask``'s
    through ``super()``.
    """
    if issubclass(base, TenantTask):
        return base
    variant = _variants.get(base)
    if variant is None:
        namespace = {
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "__doc__": base.__doc__,
        }
        variant = type(base.__name__, (base, TenantTask), namespace)
        _variants[base] = variant
    return variant


def make_tenant_aware(task: Any) -> Any:
    """Return a task class or instance turned into a ``TenantTask`` (instances in place)."""
    if inspect.isclass(task):
        return tenant_aware_class(task)
    if not isinstance(task, TenantTask):
        task.__class__ = tenant_aware_class(type(task))
        # autoretry already wrapped the unguarded run: it must call the guarded one
        internals.rebind_autoretry_run(task, MethodType(type(task).run, task))
    return task


_DEACTIVATE_UID = "tenant_schemas_celery.deactivate"


@task_prerun.connect(weak=False, dispatch_uid="tenant_schemas_celery.activate")
def _activate_tenant(sender: Any = None, **kwargs: Any) -> None:
    if isinstance(sender, TenantTask):
        _restore_after_other_receivers()
        activation.enter(sender)
    elif sender is not None and not sender.request.is_eager:
        activation.note_worker_task(sender)


def _deactivate_tenant(sender: Any = None, **kwargs: Any) -> None:
    if isinstance(sender, TenantTask):
        activation.leave(sender)


def _restore_after_other_receivers() -> None:
    """Keep the restoring ``task_postrun`` receiver last, so every other one sees the tenant.

    Receivers run in the order they were connected, and most are connected after this
    module is imported: the receiver is connected again, at the end, whenever it is not.
    """
    if internals.last_receiver_uid(task_postrun) != _DEACTIVATE_UID:
        task_postrun.disconnect(dispatch_uid=_DEACTIVATE_UID)
        task_postrun.connect(_deactivate_tenant, weak=False, dispatch_uid=_DEACTIVATE_UID)


task_postrun.connect(_deactivate_tenant, weak=False, dispatch_uid=_DEACTIVATE_UID)
