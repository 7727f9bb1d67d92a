"""tenant-schemas-celery demo: three tenants, a real Celery worker and beat.

    make demo                      # or: .venv/bin/python examples/demo/run.py

It (re)creates the demo database, migrates the public schema, starts ``celery worker``
and ``celery beat`` (``TenantAwareScheduler``), creates three tenants with a few orders
each, and shows:

1. a task sent in each tenant sees only that tenant's rows;
2. a chain and a chord stay in the tenant they were sent from;
3. a periodic beat entry without ``tenant_schemas`` runs once per tenant;
4. a task whose tenant was deleted before it ran fails with ``TenantNotFound``.

Then it stops the worker and beat and drops its database and temporary folder: also on
Ctrl-C, SIGTERM and errors. Exit status: 0 when every property held, 1 when one did not,
2 on an error, 128 + the signal number when interrupted.

Environment: ``DATABASE_URL`` (default ``postgres://postgres@127.0.0.1:5432/tsc_demo``;
the demo drops and recreates that database, so its name must contain "demo"),
``BROKER_URL`` (default: kombu's filesystem transport in a temporary folder; or
``redis://...``, ``amqp://...``), ``RESULT_BACKEND`` (see ``settings.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python examples/demo/run.py` puts this folder first on sys.path, where ./celery.py
# would shadow the celery package: the repository root takes its place.
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import os
import shutil
import signal
import subprocess
import tempfile
import time
import traceback
import uuid
from datetime import datetime
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_MODULE = "examples.demo.settings"
APP_MODULE = "examples.demo.celery"
SCHEDULER = "tenant_schemas_celery.scheduler.TenantAwareScheduler"

#: The tenants (schema names) and the orders each starts with.
TENANTS = {
    "acme": ["anvil"],
    "globex": ["globe", "hammock"],
    "initech": ["stapler", "printer", "TPS report"],
}
DELETED_TENANT = "initech"
COUNTDOWN = 2  # seconds: the task for the deleted tenant waits this long before running
READY_TIMEOUT = 60  # seconds for the worker and beat to start
TASK_TIMEOUT = 30  # seconds for one task's result
ROUND_TIMEOUT = 20  # seconds for a complete beat round to be seen
STOP_TIMEOUT = 10  # seconds between SIGTERM and SIGKILL
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """Raised in the main thread when the demo receives SIGINT, SIGTERM or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, frame: Any) -> None:
    # Once is enough: the cleanup that follows is not cut short by a second Ctrl-C.
    for handled in HANDLED_SIGNALS:
        signal.signal(handled, signal.SIG_IGN)
    raise Interrupted(signum)


def say(text: str = "") -> None:
    print(text, flush=True)


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%H:%M:%S.%f")[:-3]


class Demo:
    """One run of the demo: what it started and created, so that ``cleanup()`` undoes it."""

    def __init__(self) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.tmp: Path | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.database: dict[str, Any] | None = None  # set once the demo may have created it
        self.queue_on_broker: str | None = None  # a Redis or RabbitMQ queue to delete
        self.checks: list[tuple[str, bool]] = []

    # -- the demo ------------------------------------------------------------------------

    def run(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="tsc-demo-"))
        os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
        os.environ["DEMO_TMP"] = str(self.tmp)
        os.environ["DEMO_QUEUE"] = f"tsc-demo-{self.run_id}"

        import django
        from django.conf import settings

        django.setup()
        db = settings.DATABASES["default"]
        say("tenant-schemas-celery demo")
        say(f"  database  {self.database_label(db)}")
        if settings.BROKER_URL:
            say(f"  broker    {self.url_label(settings.BROKER_URL)}")
            say(f"  results   {self.url_label(settings.CELERY_RESULT_BACKEND)}")
        else:
            say(f"  broker    filesystem:// in {self.tmp / 'broker'}")
            say(f"  results   {settings.CELERY_RESULT_BACKEND}")
        say(f"  queue     {settings.CELERY_TASK_DEFAULT_QUEUE}")
        say(f"  temp dir  {self.tmp}")
        say()
        if "demo" not in db["NAME"]:
            raise SystemExit(
                f"Refusing to use database {db['NAME']!r}: the demo drops and recreates its "
                "database, so DATABASE_URL must name one whose name contains 'demo'."
            )

        say("Setting up")
        self.check_database_server(db)
        self.database = db
        self.queue_on_broker = settings.CELERY_TASK_DEFAULT_QUEUE if settings.BROKER_URL else None
        self.create_database()
        say(f"  created database {db['NAME']} and migrated the public schema")
        self.start_processes()
        self.create_tenants()
        self.wait_until_ready()
        say()

        self.show_tasks_per_tenant()
        self.show_canvas()
        self.show_periodic_task()
        self.show_deleted_tenant()

    def check_database_server(self, db: dict[str, Any]) -> None:
        import psycopg2

        try:
            self.admin_sql(db, "SELECT 1")
        except psycopg2.OperationalError as exc:
            reason = " ".join(str(exc).split())
            raise SystemExit(f"Cannot connect to PostgreSQL (set DATABASE_URL): {reason}") from None

    def create_database(self) -> None:
        from django.core.management import call_command

        assert self.database is not None
        self.admin_sql(
            self.database,
            f'DROP DATABASE IF EXISTS "{self.database["NAME"]}" WITH (FORCE)',
            f'CREATE DATABASE "{self.database["NAME"]}"',
        )
        call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)

    def start_processes(self) -> None:
        assert self.tmp is not None
        worker = ["worker", "-l", "INFO", "-P", "prefork", "-c", "2",
                  "-n", f"tsc-demo-{self.run_id}@%h",
                  "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
        beat = ["beat", "-l", "INFO", "--scheduler", SCHEDULER,
                "-s", str(self.tmp / "celerybeat-schedule")]  # fmt: skip
        self.start("worker", worker)
        self.start("beat", beat)
        say(
            f"  started celery worker (pid {self.processes['worker'].pid}, prefork pool) and "
            f"celery beat (pid {self.processes['beat'].pid}, TenantAwareScheduler)"
        )

    def create_tenants(self) -> None:
        from django_tenants.utils import schema_context

        from examples.demo.customers.models import Client, Domain
        from examples.demo.shop.models import Order

        for schema_name, orders in TENANTS.items():
            tenant = Client(schema_name=schema_name, name=schema_name.capitalize())
            tenant.save(verbosity=0)  # creates and migrates the tenant's schema
            Domain.objects.create(domain=f"{schema_name}.localhost", tenant=tenant, is_primary=True)
            with schema_context(schema_name):
                Order.objects.bulk_create(Order(name=name) for name in orders)
            say(
                f"  created tenant {schema_name:<8} with {plural(len(orders), 'order')}: "
                + ", ".join(orders)
            )

    def show_tasks_per_tenant(self) -> None:
        from django_tenants.utils import schema_context

        from examples.demo.shop.tasks import list_orders

        say("1. A task per tenant sees only its own rows")
        say("   list_orders.delay() sent in each tenant's schema_context:")
        results = {}
        for schema_name in TENANTS:
            with schema_context(schema_name):
                results[schema_name] = list_orders.delay()
        ok = True
        for schema_name, result in results.items():
            seen = result.get(timeout=TASK_TIMEOUT, interval=0.1)
            orders = seen["orders"]
            say(
                f"   {schema_name:<8} -> ran in schema {seen['schema']:<8} and saw "
                f"{plural(len(orders), 'order')}: " + ", ".join(orders)
            )
            ok = ok and seen == {"schema": schema_name, "orders": TENANTS[schema_name]}
        self.check(ok, "each task saw exactly its own tenant's orders")

    def show_canvas(self) -> None:
        from celery import chain, chord
        from django_tenants.utils import schema_context

        from examples.demo.shop.models import Order
        from examples.demo.shop.tasks import add_order, count_orders, summarize

        say("2. A chain and a chord stay in their tenant")
        with schema_context("globex"):
            chained = chain(
                add_order.s([], "gift card"), add_order.s("gift wrap"), count_orders.s()
            ).delay()
        done = chained.get(timeout=TASK_TIMEOUT, interval=0.1)
        say("   chain sent in globex: add_order | add_order | count_orders")
        say(f"     steps ran in {', '.join(done['trail'])}; globex now has {done['count']} orders")
        chain_ok = done == {"trail": ["globex"] * 3, "count": len(TENANTS["globex"]) + 2}

        with schema_context("initech"):
            chorded = chord(add_order.s([], f"bulk order {i}") for i in (1, 2, 3))(summarize.s())
        done = chorded.get(timeout=TASK_TIMEOUT, interval=0.1)
        say("   chord sent in initech: [add_order x 3] then summarize")
        say(
            f"     header tasks ran in {', '.join(done['header'])}; callback ran in "
            f"{done['callback']}; initech now has {done['count']} orders"
        )
        chord_ok = done == {
            "header": ["initech"] * 3,
            "callback": "initech",
            "count": len(TENANTS["initech"]) + 3,
        }

        with schema_context("acme"):
            acme = list(Order.objects.order_by("id").values_list("name", flat=True))
        say(f"   acme, untouched, still has {plural(len(acme), 'order')}: {', '.join(acme)}")
        self.check(
            chain_ok and chord_ok and acme == TENANTS["acme"],
            "every step ran in the tenant it was sent from; no other tenant changed",
        )

    def show_periodic_task(self) -> None:
        from django_tenants.utils import schema_context

        from examples.demo.shop.models import PeriodicRun

        say("3. A periodic task runs once per tenant")
        say('   beat entry "record-periodic-run": every 2 s, no tenant_schemas, so')
        say("   TenantAwareScheduler runs it as record-periodic-run@__all_tenants_only__")
        deadline = time.monotonic() + ROUND_TIMEOUT
        while True:
            runs = {}
            for schema_name in TENANTS:
                with schema_context(schema_name):
                    runs[schema_name] = list(
                        PeriodicRun.objects.values_list("beat_round", "schema_seen")
                    )
            complete = set.intersection(*({r for r, _ in rows} for rows in runs.values()))
            if complete or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if not complete:
            say(f"   no beat round reached all three tenants within {ROUND_TIMEOUT} s")
            self.check(False, "a beat round ran the task in every tenant")
            return
        beat_round = min(complete)
        say(f"   beat round sent at {clock(beat_round)}:")
        ok = True
        for schema_name, rows in runs.items():
            seen = [schema for r, schema in rows if r == beat_round]
            say(f"   {schema_name:<8} -> {plural(len(seen), 'run')}, in schema {', '.join(seen)}")
            stamps = [r for r, _ in rows]
            ok = ok and seen == [schema_name]  # once, in its own schema, in this round
            ok = ok and len(stamps) == len(set(stamps))  # never twice in any round
            ok = ok and all(schema == schema_name for _, schema in rows)
        self.check(ok, "each beat round ran the task once in every tenant, in its own schema")

    def show_deleted_tenant(self) -> None:
        from django_tenants.utils import schema_context

        from examples.demo.customers.models import Client
        from examples.demo.shop.tasks import list_orders
        from tenant_schemas_celery.exceptions import TenantNotFound

        say("4. A task for a deleted tenant fails cleanly")
        with schema_context(DELETED_TENANT):
            result = list_orders.apply_async(countdown=COUNTDOWN)
        sent = time.monotonic()
        Client.objects.get(schema_name=DELETED_TENANT).delete(force_drop=True)
        deleted_after = time.monotonic() - sent
        say(
            f"   list_orders sent in {DELETED_TENANT} with countdown={COUNTDOWN} s, then tenant "
            f"{DELETED_TENANT} deleted (schema dropped) {deleted_after:.1f} s later"
        )
        result.get(timeout=TASK_TIMEOUT + COUNTDOWN, interval=0.1, propagate=False)
        error = result.result
        say(f"   task state {result.state}: {type(error).__name__}: {error}")
        self.check(
            deleted_after < COUNTDOWN
            and result.state == "FAILURE"
            and isinstance(error, TenantNotFound),
            "the task failed with TenantNotFound instead of running in another schema",
        )

    def check(self, ok: bool, claim: str) -> None:
        self.checks.append((claim, ok))
        say(f"   {'OK' if ok else 'FAILED'}: {claim}")
        say()

    # -- processes -----------------------------------------------------------------------

    def start(self, name: str, args: list[str]) -> None:
        assert self.tmp is not None
        pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        with (self.tmp / f"{name}.log").open("wb") as log:
            # Its own session: a Ctrl-C in the terminal reaches this script only, which
            # then stops the worker and beat in order.
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", APP_MODULE, *args],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": pythonpath},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self, name: str) -> str:
        assert self.tmp is not None
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        for name, marker in (("worker", " ready."), ("beat", "beat: Starting...")):
            while marker not in self.log(name):
                if self.processes[name].poll() is not None:
                    raise RuntimeError(f"celery {name} exited with {self.processes[name].poll()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"celery {name} did not start in {READY_TIMEOUT} s")
                time.sleep(0.1)
        say("  worker and beat are ready")

    def stop(self, name: str) -> None:
        """SIGTERM the process we started, SIGKILL its process group after STOP_TIMEOUT."""
        process = self.processes.pop(name)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                say(f"  celery {name} did not stop in {STOP_TIMEOUT} s: killing it")
                # The group is the session it was started in: its pool processes too.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(STOP_TIMEOUT)
        say(f"  stopped celery {name} (pid {process.pid})")

    def print_logs(self, lines: int = 30) -> None:
        for name in self.processes:
            tail = self.log(name).splitlines()[-lines:]
            say(f"--- last {len(tail)} lines of the celery {name} log ---")
            for line in tail:
                say(f"    {line}")

    # -- cleanup -------------------------------------------------------------------------

    def cleanup(self) -> bool:
        """Undo everything ``run()`` did; return False if part of it failed."""
        say("Cleaning up")
        ok = True
        steps = [lambda name=name: self.stop(name) for name in ("beat", "worker")
                 if name in self.processes]  # fmt: skip
        steps += [self.drop_database, self.delete_queue, self.remove_tmp]
        for step in steps:
            try:
                step()
            except Exception as exc:
                ok = False
                say(f"  cleanup step failed: {type(exc).__name__}: {exc}")
        return ok

    def drop_database(self) -> None:
        if self.database is None:
            return
        from django.db import connections

        connections.close_all()
        self.admin_sql(
            self.database, f'DROP DATABASE IF EXISTS "{self.database["NAME"]}" WITH (FORCE)'
        )
        say(f"  dropped database {self.database['NAME']}")
        self.database = None

    def delete_queue(self) -> None:
        if self.queue_on_broker is None:
            return
        from examples.demo.celery import app

        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            queue = app.amqp.queues[self.queue_on_broker](conn.default_channel)
            queue.declare()  # kombu's Redis transport deletes only the bindings it knows
            queue.delete()
            if conn.transport.driver_type == "amqp":
                queue.exchange.delete()
        say(f"  deleted queue {self.queue_on_broker}")
        self.queue_on_broker = None

    def remove_tmp(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp)
            say(f"  removed {self.tmp}")
            self.tmp = None

    @staticmethod
    def admin_sql(db: dict[str, Any], *statements: str) -> None:
        """Run ``statements`` on the server's ``postgres`` database, in autocommit."""
        import psycopg2

        admin = psycopg2.connect(
            dbname="postgres", user=db["USER"], password=db["PASSWORD"],
            host=db["HOST"] or None, port=db["PORT"] or None, connect_timeout=10,
        )  # fmt: skip
        try:
            admin.autocommit = True
            with admin.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
        finally:
            admin.close()

    @staticmethod
    def database_label(db: dict[str, Any]) -> str:
        user = db["USER"] + (":***" if db["PASSWORD"] else "")
        return f"postgres://{user}@{db['HOST']}:{db['PORT']}/{db['NAME']}"

    @staticmethod
    def url_label(url: str) -> str:
        from kombu.utils.url import maybe_sanitize_url

        return str(maybe_sanitize_url(url))


def main() -> int:
    started = time.monotonic()
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, _interrupt)
    demo = Demo()
    status = 0
    try:
        demo.run()
        failed = [claim for claim, ok in demo.checks if not ok]
        if failed:
            status = 1
            demo.print_logs()
    except Interrupted as exc:
        say(f"\nInterrupted by {signal.Signals(exc.signum).name}.")
        status = 128 + exc.signum
    except SystemExit as exc:
        say(str(exc.code))
        status = 2
    except Exception:
        traceback.print_exc()
        demo.print_logs()
        status = 2
    finally:
        # Cleanup runs to its end: further signals are ignored until then.
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if not demo.cleanup() and status == 0:
            status = 2
    elapsed = time.monotonic() - started
    say()
    if status == 0:
        say(f"Demo finished in {elapsed:.1f} s: all {len(demo.checks)} properties held.")
    elif demo.checks and status == 1:
        failed_count = sum(not ok for _, ok in demo.checks)
        say(f"Demo finished in {elapsed:.1f} s: {failed_count} of {len(demo.checks)} FAILED.")
    else:
        say(f"Demo stopped after {elapsed:.1f} s (exit status {status}).")
    return status


if __name__ == "__main__":
    sys.exit(main())
