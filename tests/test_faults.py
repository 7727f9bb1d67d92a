"""Faults, with real processes: killed workers, restarted PostgreSQL and brokers, deleted tenants.

Every test records what each run of ``durable_probe`` saw (schema, attempt, PID) in Redis and
checks the rows written: a task runs in the tenant it was sent from, or does not run at all,
and nothing ever lands in public by accident. Services that a test restarts are its own
(a PostgreSQL cluster and a Redis server on free ports, in temporary directories), except
RabbitMQ, whose app is stopped and started again on the shared node.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import kombu.transport.redis
import psycopg2
import pytest
import redis
from django.conf import settings
from django.db import connections
from django_tenants.utils import schema_context

from tenant_schemas_celery.exceptions import TenantNotFound
from tests.conftest import BROKERS, create_tenant, recorded_events, use_broker
from tests.project.celery import app
from tests.project.notes import tasks
from tests.project.notes.models import Note
from tests.workers import CeleryProcess, worker

pytestmark = pytest.mark.integration
TIMEOUT = 60
SCHEMAS = ("tenant1", "tenant2", "public")
DB_ERRORS = {"OperationalError", "InterfaceError"}  # a connection lost to a restart


# --- helpers ---------------------------------------------------------------------------------


def new_token(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def runs(token: str | None = None, phase: str | None = None) -> list[dict]:
    """The records of ``durable_probe`` runs, oldest first."""
    records = [json.loads(r) for r in tasks.events().lrange(tasks.FAULTS_KEY, 0, -1)]
    return [
        r
        for r in records
        if (token is None or r["token"] == token) and (phase is None or r["phase"] == phase)
    ]


def send(schema_name: str, token: str, hold: float = 0.0):
    """Send ``durable_probe`` from ``schema_name``; its first run sleeps ``hold`` seconds."""
    with schema_context(schema_name):
        return tasks.durable_probe.delay(token, hold)


def wait_for(condition, timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout} s")
        time.sleep(0.05)


def notes_in(schema_name: str) -> list[str]:
    with schema_context(schema_name):
        return sorted(Note.objects.values_list("text", flat=True))


def assert_runs_in_their_tenants(sent: dict[str, str]) -> None:
    """Every run of every sent token was in its tenant, and each finished at least once."""
    for token, schema_name in sent.items():
        seen = runs(token)
        assert {r["schema"] for r in seen} == {schema_name}, (token, seen)
        assert any(r["phase"] == "done" for r in seen), (token, seen)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def alive(process: CeleryProcess) -> bool:
    return process.process is not None and process.process.poll() is None


@contextlib.contextmanager
def sending_to(url: str) -> Iterator[None]:
    """Point this process's app (the sender) at ``url`` for the block."""
    previous = app.conf.broker_url
    use_broker(url)
    try:
        yield
    finally:
        use_broker(previous)


@pytest.fixture
def faults(tenants):
    """The ``tenants`` fixture, with the run records of ``durable_probe`` emptied."""
    events = tasks.events()
    keys = [tasks.FAULTS_KEY, *events.scan_iter(f"{tasks.FAULTS_KEY}:*")]
    events.delete(*keys)
    yield tenants


class RedisServer:
    """A ``redis-server`` on a free port, persisting every write (AOF, fsync always)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tsc-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--logfile", str(self.dir / "log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: self._pings(client), timeout=20, what="redis-server answers")

    def _pings(self, client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server: SIGTERM shuts it down cleanly, SIGKILL crashes it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(20)

    def destroy(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def rabbitmq_app_stopped() -> Iterator[None]:
    """Stop the shared RabbitMQ node's app for the block (connections drop, durable state stays)."""
    rabbitmqctl("stop_app")
    try:
        yield
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")


def rabbitmqctl(command: str) -> None:
    subprocess.run(["rabbitmqctl", command], check=True, capture_output=True, timeout=120)


#: Unacked Redis messages come back after 4 s (kombu looks every restore_interval seconds);
#: in production the visibility timeout must exceed the longest task, or it runs twice.
REDIS_TRANSPORT_OPTIONS = {
    "visibility_timeout": 4,
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
#: kombu < 5.7 has neither option: a worker looks for unacked messages when it starts,
#: then only every 100 s (every 10th call, 10 s apart).
KOMBU_RESTORE_OPTIONS = hasattr(kombu.transport.redis.Channel, "unacked_restore_interval")
#: ... so a message that was unacked when Redis went down can wait that long to come back.
OLD_KOMBU_RESTORE = 110


@contextlib.contextmanager
def durable_broker(name: str) -> Iterator[tuple[str, dict[str, str], RedisServer | None]]:
    """Broker ``name`` set up to lose nothing: (URL, worker env, the Redis server if own).

    amqp: the shared RabbitMQ; Celery's defaults declare the queue durable and send messages
    persistent. redis: a dedicated redis-server with AOF, unacked messages back after 4 s.
    """
    if name == "amqp":
        yield BROKERS["amqp"], {}, None
        return
    server = RedisServer()
    try:
        server.start()
        env = {"TSC_BROKER_TRANSPORT_OPTIONS": json.dumps(REDIS_TRANSPORT_OPTIONS)}
        yield server.url, env, server
    finally:
        server.destroy()


# --- 1. a worker killed with SIGKILL mid-task under acks_late --------------------------------


@pytest.mark.parametrize("broker_name", ["amqp", "redis"])
def test_solo_worker_killed_mid_task_redelivers_in_its_tenant(faults, broker_name):
    # Given a solo worker running an acks_late task sent from tenant2,
    # with more tasks from every schema queued behind it (prefetched, unacked)
    with durable_broker(broker_name) as (url, env, _), sending_to(url):
        first, second = worker(url, pool="solo", env=env), worker(url, pool="solo", env=env)
        try:
            first.start()
            held = new_token("held")
            result = send("tenant2", held, hold=60)
            wait_for(lambda: runs(held), what="the held task started")
            queued = {new_token(f"queued-{s}"): s for s in SCHEMAS}
            queued_results = {token: send(s, token) for token, s in queued.items()}
            # When the worker is killed with SIGKILL and another worker starts
            first.kill()
            assert runs(held, "done") == []
            if broker_name == "redis" and not KOMBU_RESTORE_OPTIONS:
                # so that the second worker's look at start-up finds them past the timeout
                time.sleep(REDIS_TRANSPORT_OPTIONS["visibility_timeout"] + 1)
            second.start()
            # Then the held task is delivered again (RabbitMQ: at once; Redis: after the
            # visibility timeout) and finishes in tenant2, as do the queued ones in theirs
            assert result.get(timeout=TIMEOUT) == "tenant2"
            for token, queued_result in queued_results.items():
                assert queued_result.get(timeout=TIMEOUT) == queued[token]
        finally:
            first.stop()
            second.stop()
    killed, rerun, finished = runs(held)
    assert (killed["phase"], killed["attempt"], killed["pid"]) == ("start", 1, first.process.pid)
    assert (rerun["phase"], rerun["attempt"], rerun["pid"]) == ("start", 2, second.process.pid)
    assert rerun["redelivered"] is True
    assert finished["phase"] == "done"
    assert_runs_in_their_tenants({held: "tenant2", **queued})
    # And each task wrote its row once, in its own schema only
    assert notes_in("tenant2") == sorted(
        f"durable:{t}" for t, s in {held: "tenant2", **queued}.items() if s == "tenant2"
    )
    assert notes_in("tenant1") == [f"durable:{t}" for t, s in queued.items() if s == "tenant1"]
    assert notes_in("public") == [f"durable:{t}" for t, s in queued.items() if s == "public"]


@pytest.mark.parametrize("broker_name", sorted(BROKERS))
def test_pool_process_killed_mid_task_is_retried_in_its_tenant(faults, broker_name):
    # Given a prefork worker whose pool process runs an acks_late task from tenant1
    url = BROKERS[broker_name]
    process = worker(url, pool="prefork", concurrency=2)
    with sending_to(url):
        try:
            process.start()
            held = new_token("held")
            result = send("tenant1", held, hold=60)
            wait_for(lambda: runs(held), what="the held task started")
            pool_pid = runs(held)[0]["pid"]
            others = {new_token(f"other-{s}"): s for s in SCHEMAS * 2}
            other_results = [send(s, token) for token, s in others.items()]
            # When that pool process is killed with SIGKILL
            os.kill(pool_pid, signal.SIGKILL)
            # Then reject_on_worker_lost puts the task back; it runs again in tenant1
            assert result.get(timeout=TIMEOUT) == "tenant1"
            assert [r.get(timeout=TIMEOUT) for r in other_results] == list(others.values())
            assert alive(process)
        finally:
            process.stop()
    killed, rerun, finished = runs(held)
    assert (killed["attempt"], killed["pid"], killed["phase"]) == (1, pool_pid, "start")
    assert (rerun["attempt"], rerun["phase"], finished["phase"]) == (2, "start", "done")
    assert rerun["pid"] != pool_pid
    assert_runs_in_their_tenants({held: "tenant1", **others})
    assert notes_in("tenant1").count(f"durable:{held}") == 1
    assert f"durable:{held}" not in notes_in("public") + notes_in("tenant2")


# --- 2. PostgreSQL restarted while a worker is busy ------------------------------------------


def _pg_bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    """A throwaway PostgreSQL cluster on a free port (its server is stopped via its PID file)."""

    def __init__(self) -> None:
        bindir = _pg_bindir()
        if bindir is None:
            pytest.skip("initdb not found")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="tsc-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0  # initdb refuses to run as root
        if self.as_postgres:
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-o", options,
                  "start")  # fmt: skip
        wait_for(self.accepts_connections, what="PostgreSQL accepts connections")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", mode, "stop")

    def accepts_connections(self) -> bool:
        try:
            self.connect("postgres").close()
        except psycopg2.OperationalError:
            return False
        return True

    def connect(self, dbname: str):
        return psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname)

    def copy_database(self, source: dict) -> None:
        """Create ``source``'s database here, with its schemas and rows (pg_dump | psql)."""
        admin = self.connect("postgres")
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{source["NAME"]}"')
        admin.close()
        env = {**os.environ, "PGPASSWORD": source["PASSWORD"] or ""}
        dump = subprocess.run(
            [str(self.bindir / "pg_dump"), "-h", source["HOST"], "-p", str(source["PORT"]),
             "-U", source["USER"], "--no-owner", source["NAME"]],
            check=True, capture_output=True, env=env, timeout=60,
        )  # fmt: skip
        subprocess.run(
            [str(self.bindir / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(self.port), "-U", "postgres", source["NAME"]],
            input=dump.stdout, check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError):
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


PG_SETTINGS = {
    # Celery's default: the worker closes its connections before and after every task.
    "per-task": {},
    # CELERY_DB_REUSE_MAX with Django's CONN_HEALTH_CHECKS: the library re-arms Django's
    # health check for every task, so a dead connection is replaced before it is used.
    "reuse-max-health-checks": {"TSC_DB_REUSE_MAX": "1000", "TSC_CONN_HEALTH_CHECKS": "1"},
    # CELERY_DB_REUSE_MAX alone: the worker keeps its connections and nothing checks them, so
    # the first task of each pool process after the restart fails (as with plain Celery),
    # without running; the library replaces the connection before the next task.
    "reuse-max": {"TSC_DB_REUSE_MAX": "1000"},
}


@pytest.mark.parametrize("db_settings", sorted(PG_SETTINGS))
def test_postgres_restart_while_worker_is_busy(faults, db_settings):
    recovers = db_settings != "reuse-max"
    db = settings.DATABASES["default"]
    cluster = PostgresCluster()
    process = None
    succeeded: dict[str, str] = {}  # token -> schema it was sent from
    failed: dict[str, str] = {}

    def outcome(token: str, schema_name: str, result, must_succeed, started=False) -> None:
        """File the task as succeeded (in its schema) or failed (with a database error).

        ``must_succeed`` is True, or False when the task may fail. A tenant's task that had
        not started fails in the tenant lookup, before its body.
        """
        result.wait(timeout=TIMEOUT, propagate=False)
        if result.state == "SUCCESS":
            assert result.result == schema_name
            succeeded[token] = schema_name
            return
        assert not must_succeed, f"{token} failed: {result.result!r}"
        lookup_failed = schema_name != "public" and not started
        expected = {"TenantLookupFailed"} if lookup_failed else DB_ERRORS
        assert type(result.result).__name__ in expected, repr(result.result)
        failed[token] = schema_name

    def round_of_tasks(label: str, rounds: int = 2, must_succeed=True) -> None:
        sent = {new_token(label): s for _ in range(rounds) for s in SCHEMAS}
        results = {token: send(s, token) for token, s in sent.items()}
        for token, result in results.items():
            outcome(token, sent[token], result, must_succeed)

    try:
        cluster.init()
        cluster.copy_database(db)
        env = {
            "TSC_PG_HOST": "127.0.0.1",
            "TSC_PG_PORT": str(cluster.port),
            "TSC_PG_USER": "postgres",
            "TSC_PG_PASSWORD": "",
            **PG_SETTINGS[db_settings],
        }
        process = worker(BROKERS["redis"], pool="prefork", concurrency=2, env=env).start()
        # Given a prefork worker whose processes have used their connections in every schema
        round_of_tasks("warm")
        # When PostgreSQL restarts while they are idle
        cluster.stop("fast")
        cluster.start()
        # Then every task sent afterwards runs in its tenant (or fails without running)
        round_of_tasks("after-idle-restart", rounds=3, must_succeed=recovers)

        # When PostgreSQL restarts while both pool processes are inside a task
        busy = {new_token(f"busy-{s}"): s for s in ("tenant1", "tenant2")}
        busy_results = {token: send(s, token, hold=2) for token, s in busy.items()}
        wait_for(
            lambda: all(runs(t) or r.ready() for t, r in busy_results.items()),
            what="both busy tasks started",
        )
        cluster.stop("fast")
        cluster.start()
        # Then those tasks fail on their next query, and the next ones run in their tenant
        for token, result in busy_results.items():
            started = bool(runs(token))
            assert started or not recovers
            outcome(token, busy[token], result, must_succeed=False, started=started)
        assert set(failed) >= set(busy)
        round_of_tasks("after-busy-restart", rounds=3, must_succeed=recovers)

        # When PostgreSQL is down, tasks fail before their body runs
        cluster.stop("fast")
        down = {new_token(f"down-{s}"): s for s in SCHEMAS}
        down_results = {token: send(s, token) for token, s in down.items()}
        for token, result in down_results.items():
            outcome(token, down[token], result, must_succeed=False)
        assert set(failed) >= set(down)
        # And once it is back, the same worker runs every task in its tenant again
        cluster.start()
        round_of_tasks("after-outage", rounds=3, must_succeed=recovers)
        assert alive(process)
        with contextlib.closing(cluster.connect(db["NAME"])) as check_db, check_db.cursor() as cur:
            cluster_notes = {}
            for schema_name in SCHEMAS:
                cur.execute(f'SELECT text FROM "{schema_name}".notes_note')
                cluster_notes[schema_name] = sorted(text for (text,) in cur.fetchall())
    finally:
        if process is not None:
            process.stop()
        cluster.destroy()

    assert_runs_in_their_tenants(succeeded)
    for token, schema_name in failed.items():
        assert {r["schema"] for r in runs(token)} <= {schema_name}
        assert not runs(token, "done")
    # And each task that succeeded wrote its row once, in its own schema; the others wrote none
    assert cluster_notes == {
        schema_name: sorted(f"durable:{t}" for t, s in succeeded.items() if s == schema_name)
        for schema_name in SCHEMAS
    }
    # And the worker recovered by itself: once PostgreSQL was back, at most the first task of
    # each of its 2 pool processes failed (only without health checks), and the rest ran
    for phase in ("after-idle-restart", "after-busy-restart", "after-outage"):
        failures = [token for token in failed if token.startswith(phase)]
        assert len(failures) <= (0 if recovers else 2), (phase, failures)


# --- 3. the broker restarted ------------------------------------------------------------------


@pytest.mark.parametrize("broker_name", ["redis", "amqp"])
def test_broker_restart_loses_no_message(faults, broker_name):
    """Queued, reserved and running tasks all run after a broker restart, each in its tenant.

    Settings: tasks with ``acks_late``; RabbitMQ with Celery's durable queue and persistent
    messages; Redis with AOF (``appendfsync always``), shut down cleanly (SIGTERM), and a
    ``visibility_timeout`` (longer than any task) after which unacked messages come back.
    A Redis crash (SIGKILL) is not covered: kombu can then lose the message it was handing
    to the worker, or stop the worker (``AttributeError`` in ``restore_unacked_once``).
    """
    sent: dict[str, str] = {}

    def send_batch(label: str, rounds: int, hold: float) -> None:
        for _ in range(rounds):
            for schema_name in SCHEMAS:
                token = new_token(f"{label}-{schema_name}")
                sent[token] = schema_name
                send(schema_name, token, hold=hold)

    with durable_broker(broker_name) as (url, env, server), sending_to(url):
        process = worker(url, pool="prefork", concurrency=2, env=env,
                         extra=("--prefetch-multiplier", "1"))  # fmt: skip
        try:
            process.start()
            # Given acks_late tasks from every schema: running, reserved and queued
            send_batch("before", rounds=4, hold=0.5)
            wait_for(lambda: len(runs(phase="done")) >= 2, what="the first tasks finished")
            # When the broker shuts down and comes back
            if server is not None:
                server.stop()
                time.sleep(1)
                server.start()
            else:
                with rabbitmq_app_stopped():
                    time.sleep(1)
            # And more tasks are sent once it is back
            send_batch("after", rounds=2, hold=0)
            # Then the worker reconnects by itself and every task runs, in its tenant
            try:
                wait_for(
                    lambda: {r["token"] for r in runs(phase="done")} >= set(sent),
                    timeout=TIMEOUT if KOMBU_RESTORE_OPTIONS else TIMEOUT + OLD_KOMBU_RESTORE,
                    what="every task finished",
                )
            except AssertionError:
                missing = set(sent) - {r["token"] for r in runs(phase="done")}
                raise AssertionError(f"never finished: {missing}\n{process.log()}") from None
            assert alive(process)
            assert "Trying to re-establish the connection" in process.log()
        finally:
            process.stop()
    assert_runs_in_their_tenants(sent)
    # And each wrote its row in its own schema only (maybe twice: delivery is at-least-once)
    for schema_name in SCHEMAS:
        assert set(notes_in(schema_name)) == {
            f"durable:{t}" for t, s in sent.items() if s == schema_name
        }


# --- 4. a tenant deleted while its tasks wait in the queue -----------------------------------


def test_tenant_deleted_while_its_tasks_wait_in_the_queue(faults):
    # Given a prefork worker that has cached the tenant "doomed_q" in its pool processes
    process = worker(BROKERS["redis"], pool="prefork", concurrency=2)
    doomed = None
    try:
        process.start()
        doomed = create_tenant("doomed_q")
        with schema_context("doomed_q"):
            warm = [tasks.cached_write_note.delay(f"warm {i}") for i in range(6)]
        assert {r.get(timeout=TIMEOUT) for r in warm} == {"doomed_q"}
        # And both pool processes busy, so that what is sent next waits
        blockers = {
            new_token("blocker-tenant1"): "tenant1",
            new_token("blocker-tenant2"): "tenant2",
        }
        blocker_results = [send(s, token, hold=3) for token, s in blockers.items()]
        wait_for(lambda: all(runs(token) for token in blockers), what="both blockers started")
        # And tasks of every kind sent from the doomed tenant, between live tenants' tasks
        doomed_results, recorded, live_results, ghosts = [], [], [], []
        for i in range(3):
            ghosts.append(new_token(f"ghost{i}"))
            with schema_context("doomed_q"):
                recorded.append(
                    tasks.recording_write_note.apply_async(
                        (f"ghost recorded {i}",), link_error=tasks.on_error.s()
                    )
                )
                doomed_results += [
                    tasks.write_note.delay(f"ghost {i}"),
                    tasks.cached_write_note.delay(f"ghost cached {i}"),
                    recorded[-1],
                    tasks.durable_probe.delay(ghosts[-1]),
                ]
            for schema_name in SCHEMAS:
                with schema_context(schema_name):
                    live_results.append((tasks.write_note.delay(f"live {i}"), schema_name))
        # When the tenant is deleted while they wait
        doomed.delete(force_drop=True)
        assert not any(runs(token, "done") for token in blockers), "the blockers ended too soon"
        # Then every one of its tasks fails with TenantNotFound naming it
        for result in doomed_results:
            with pytest.raises(TenantNotFound, match="doomed_q"):
                result.get(timeout=TIMEOUT)
        # And the other tenants' tasks run in their own schemas, on the same worker
        assert [r.get(timeout=TIMEOUT) for r, _ in live_results] == [s for _, s in live_results]
        assert [r.get(timeout=TIMEOUT) for r in blocker_results] == list(blockers.values())
        assert alive(process)
        # And the failure handlers saw the error, in public
        wait_for(lambda: len(recorded_events()) == 2 * len(recorded), what="failure handlers")
        assert sorted(recorded_events()) == sorted(
            f"{kind}:{r.id}:TenantNotFound:public"
            for r in recorded
            for kind in ("errback", "on_failure")
        )
    finally:
        process.stop()
        if doomed is not None and doomed.pk is not None:
            doomed.delete(force_drop=True)
    # And nothing of theirs was written anywhere
    assert not any(runs(token) for token in ghosts)
    assert notes_in("public") == ["live 0", "live 1", "live 2"]
    for schema_name in ("tenant1", "tenant2"):
        blocker = [f"durable:{t}" for t, s in blockers.items() if s == schema_name]
        assert notes_in(schema_name) == sorted(["live 0", "live 1", "live 2", *blocker])
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'doomed_q'")
        assert cursor.fetchone() is None
