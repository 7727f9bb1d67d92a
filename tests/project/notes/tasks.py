"""Tasks of the test project: each reports the schema and rows it saw."""

import os
import time

import redis
from celery import Task, shared_task
from celery.exceptions import Ignore, Reject
from django.conf import settings
from django.db import connection, connections
from django_tenants.utils import schema_context

from tenant_schemas_celery.exceptions import TenantNotFound
from tenant_schemas_celery.task import TenantTask
from tests.project.celery import app

from .models import Note

EVENTS_KEY = f"tsc-tests:events:{os.environ.get('TSC_QUEUE', '')}"


def events() -> redis.Redis:
    return redis.Redis.from_url(f"{settings.REDIS_URL}/12")


def record_event(text: str) -> None:
    events().rpush(EVENTS_KEY, text)


def seen() -> dict:
    """What a task body sees: schemas of each connection and the notes visible."""
    return {
        "schema": connection.schema_name,
        "tenant": getattr(connection.tenant, "name", None),
        "other": connections["other"].schema_name,
        "untouched": connections["untouched"].schema_name,
        "notes": sorted(Note.objects.values_list("text", flat=True)),
    }


@app.task
def whereami(*args, **kwargs):
    return seen()


@app.task
def write_note(text):
    Note.objects.create(text=text)
    return connection.schema_name


@app.task
def fail():
    raise ValueError("boom")


@app.task(bind=True, max_retries=3)
def retry_once(self):
    if self.request.retries == 0:
        raise self.retry(countdown=0.1)
    return {"retries": self.request.retries, **seen()}


@app.task
def reject():
    raise Reject("no", requeue=False)


@app.task
def ignore():
    raise Ignore()


@app.task(soft_time_limit=0.3)
def soft_limited():
    time.sleep(5)


@app.task
def eager_inside(inner_schema):
    """Apply ``whereami`` eagerly in another schema; report both and the schema after."""
    before = connection.schema_name
    with schema_context(inner_schema):
        inner = whereami.apply().result
    return {"before": before, "inner": inner["schema"], "after": connection.schema_name}


@app.task
def send_from_task():
    return whereami.delay().id


@app.task
def collect(results):
    return {"results": [r["schema"] for r in results], "self": connection.schema_name}


@app.task
def on_error(request, exc, traceback):
    record_event(f"errback:{request.id}:{type(exc).__name__}:{connection.schema_name}")


@app.task(tenant_databases=("default", "other"))
def multi_db_whereami():
    return seen()


@app.task(tenant_databases=("default", "missing"))
def bad_alias():
    return seen()


@app.task(tenant_cache_seconds=30)
def cached_whereami():
    return seen()


@app.task(tenant_cache_seconds=0)
def uncached_whereami():
    return seen()


@app.task(autoretry_for=(TenantNotFound,), max_retries=2, default_retry_delay=0.1)
def autoretried_whereami():
    return seen()


class RecordingTask(TenantTask):
    def on_failure(self, exc, task_id, args, kwargs, einfo):
        record_event(f"on_failure:{task_id}:{type(exc).__name__}:{connection.schema_name}")


@app.task(base=RecordingTask)
def recording_write_note(text):
    Note.objects.create(text=text)
    return connection.schema_name


@shared_task(base=TenantTask, bind=True)
def shared_whereami(self):
    return seen()


class PlainBase(Task):
    """A custom base that knows nothing of tenants."""

    def describe(self):
        return "plain-base"


@shared_task(base=PlainBase)
def custom_base_whereami():
    return seen()


class ClassBasedWhereami(Task):
    name = "notes.class_based_whereami"

    def run(self):
        return seen()


app.register_task(ClassBasedWhereami())


@app.task
def log_something(text):
    from celery.utils.log import get_task_logger

    get_task_logger(__name__).warning("logged %s", text)
    return connection.schema_name


@app.task(tenant_cache_seconds=300)
def cached_write_note(text):
    Note.objects.create(text=text)
    return connection.schema_name


PROBES_KEY = f"tsc-tests:probes:{os.environ.get('TSC_QUEUE', '')}"


@app.task(bind=True, max_retries=1)
def probe(self, token, kind="ok", inner_schema=None):
    """Record the schema and marker rows this run sees, write a row, then end as ``kind``.

    The ``soft`` kind is sent with a 1 s soft time limit; no other kind has one, so that
    a slow machine cannot stop a probe before it records.
    """
    import json

    Note.objects.create(text=f"probe:{token}")
    visible = sorted(Note.objects.filter(text__startswith="marker:").values_list("text", flat=True))
    events().rpush(
        PROBES_KEY,
        json.dumps({"token": token, "schema": connection.schema_name, "visible": visible}),
    )
    if kind == "exc":
        raise ValueError(token)
    if kind == "retry" and self.request.retries == 0:
        raise self.retry(countdown=0)
    if kind == "reject":
        raise Reject(token, requeue=False)
    if kind == "soft":
        time.sleep(10)
    if kind == "eager":
        with schema_context(inner_schema):
            probe.apply(args=(f"{token}:inner",))
        events().rpush(
            PROBES_KEY,
            json.dumps(
                {"token": f"{token}:after", "schema": connection.schema_name, "visible": visible}
            ),
        )
    return connection.schema_name


@app.task
def probe_collect(results, token):
    return probe.run(token)


@app.task
def capture_sentry_message(text):
    import sentry_sdk

    sentry_sdk.capture_message(text)


FAULTS_KEY = f"tsc-tests:faults:{os.environ.get('TSC_QUEUE', '')}"  # per test run


@app.task(bind=True, acks_late=True, reject_on_worker_lost=True)
def durable_probe(self, token, hold_first=0.0):
    """For the fault tests: record each run's schema, hold the first run, then write a row.

    ``acks_late`` and ``reject_on_worker_lost``: a run cut short by a dead worker (or pool
    process) is delivered again. Only the first run of ``token`` sleeps ``hold_first`` s.
    """
    import json
    import os

    attempt = events().incr(f"{FAULTS_KEY}:attempts:{token}")
    visible = Note.objects.count()  # use the connection before holding

    def record(phase):
        events().rpush(
            FAULTS_KEY,
            json.dumps(
                {
                    "token": token,
                    "phase": phase,
                    "attempt": attempt,
                    "schema": connection.schema_name,
                    "pid": os.getpid(),
                    "redelivered": bool((self.request.delivery_info or {}).get("redelivered")),
                    "visible": visible,
                }
            ),
        )

    record("start")
    if attempt == 1:
        time.sleep(hold_first)
    Note.objects.create(text=f"durable:{token}")
    record("done")
    return connection.schema_name


@app.task
def sleep_for(seconds):
    time.sleep(seconds)
    return connection.schema_name


def session_report() -> dict:
    """What the server session says, next to what django-tenants believes."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        (current,) = cursor.fetchone()
    return {
        "schema": connection.schema_name,
        "current_schema": current,
        "notes": sorted(Note.objects.values_list("text", flat=True)),
    }


@app.task
def report_session():
    return session_report()


@app.task
def tamper_session(statement):
    """A body that changes its session's state behind django-tenants' back."""
    with connection.cursor() as cursor:
        cursor.execute(statement)
    return connection.schema_name


@app.task
def leave_transaction_open(text, how="autocommit"):
    """A body that writes inside a transaction it never ends."""
    from django.db import transaction

    if how == "autocommit":
        transaction.set_autocommit(False)
    else:
        transaction.atomic().__enter__()
    Note.objects.create(text=text)
    return connection.schema_name


class RefusingTenantTask(TenantTask):
    """A lookup that refuses the schemas listed in Redis (say, suspended tenants)."""

    tenant_cache_seconds = 30

    @classmethod
    def get_tenant_for_schema(cls, schema_name):
        from django.core.exceptions import ObjectDoesNotExist

        if events().sismember(REFUSED_KEY, schema_name):
            raise ObjectDoesNotExist(f"{schema_name} is suspended")
        return super().get_tenant_for_schema(schema_name)


REFUSED_KEY = f"tsc-tests:refused:{os.environ.get('TSC_QUEUE', '')}"


@app.task(base=RefusingTenantTask)
def refusing_whereami():
    return seen()


@app.task
def mark(*args, token=""):
    """A callback that records the schema it ran in."""
    record_event(f"mark:{token}:{connection.schema_name}")


@app.task
def mark_failed(task_id):
    """An errback taking the task id only: Celery sends it as a message."""
    record_event(f"mark:error:{connection.schema_name}")


@app.task
def leave_temp_table(text):
    """A body that leaves a temporary ``notes_note`` (searched before every schema)."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE notes_note (LIKE public.notes_note INCLUDING ALL)")
        cursor.execute("INSERT INTO notes_note (text) VALUES (%s)", [text])
    return connection.schema_name
