"""The demo (``make demo``) end to end, as a subprocess: its output, exit status and cleanup.

Each run gets its own database (``DATABASE_URL``), and the demo its own temporary folder
and queue, so these tests can run next to other test sessions.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg2
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo" / "run.py"
MARKER = "TSC_DEMO_TEST_MARKER"  # inherited by every process the demo starts
REDIS_URL = os.environ.get("TSC_REDIS_URL", "redis://127.0.0.1:6379")
AMQP_URL = os.environ.get("TSC_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
DEMO_REDIS = f"{REDIS_URL}/11"  # the other tests use databases 12-14
PG = {
    "host": os.environ.get("TSC_PG_HOST", "127.0.0.1"),
    "port": os.environ.get("TSC_PG_PORT", "5432"),
    "user": os.environ.get("TSC_PG_USER", "postgres"),
    "password": os.environ.get("TSC_PG_PASSWORD", ""),
}
BROKERS = {
    "filesystem": {},
    "redis": {"BROKER_URL": DEMO_REDIS},
    "amqp": {"BROKER_URL": AMQP_URL, "RESULT_BACKEND": DEMO_REDIS},
}
EXPECTED_LINES = [
    "acme     -> ran in schema acme     and saw 1 order: anvil",
    "globex   -> ran in schema globex   and saw 2 orders: globe, hammock",
    "initech  -> ran in schema initech  and saw 3 orders: stapler, printer, TPS report",
    "OK: each task saw exactly its own tenant's orders",
    "steps ran in globex, globex, globex; globex now has 4 orders",
    "header tasks ran in initech, initech, initech; callback ran in initech; "
    "initech now has 6 orders",
    "acme, untouched, still has 1 order: anvil",
    "OK: every step ran in the tenant it was sent from; no other tenant changed",
    "TenantAwareScheduler runs it as record-periodic-run@__all_tenants_only__",
    "acme     -> 1 run, in schema acme",
    "globex   -> 1 run, in schema globex",
    "initech  -> 1 run, in schema initech",
    "OK: each beat round ran the task once in every tenant, in its own schema",
    "task state FAILURE: TenantNotFound: No tenant with schema_name 'initech' exists",
    "OK: the task failed with TenantNotFound instead of running in another schema",
    "all 4 properties held.",
]


class Demo:
    """``examples/demo/run.py`` started the way ``make demo`` does, with its own database."""

    def __init__(self, **env: str) -> None:
        self.database = f"tsc_demo_test_{uuid.uuid4().hex[:8]}"
        self.marker = uuid.uuid4().hex
        user = PG["user"] + (f":{PG['password']}" if PG["password"] else "")
        base = {k: v for k, v in os.environ.items()
                if k not in ("DJANGO_SETTINGS_MODULE", "BROKER_URL", "RESULT_BACKEND")}  # fmt: skip
        self.env = {
            **base,
            "DATABASE_URL": f"postgres://{user}@{PG['host']}:{PG['port']}/{self.database}",
            MARKER: self.marker,
            **env,
        }
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Demo:
        self.process = subprocess.Popen(
            [sys.executable, str(DEMO)], cwd=ROOT, env=self.env, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for_line(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.output):
            try:
                self.output.append(self.lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"no line with {text!r} in {timeout} s:\n{self.text()}")

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        status = self.process.wait(timeout)
        time.sleep(0.2)  # let the reader thread take the last lines
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return status

    def text(self) -> str:
        return "\n".join(self.output)

    def temp_dir(self) -> Path:
        line = next(line for line in self.output if line.strip().startswith("temp dir"))
        return Path(line.split(maxsplit=2)[2])

    def database_exists(self) -> bool:
        admin = psycopg2.connect(dbname="postgres", **PG)
        try:
            with admin.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [self.database])
                return cursor.fetchone() is not None
        finally:
            admin.close()

    def leftover_processes(self, grace: float = 5) -> list[int]:
        """PIDs of processes still carrying this run's marker (the demo's descendants)."""
        deadline = time.monotonic() + grace
        while True:
            pids = processes_with_env(f"{MARKER}={self.marker}")
            if not pids or time.monotonic() > deadline:
                return pids
            time.sleep(0.2)

    def clean_up_after_failure(self) -> None:
        """Leave nothing behind even when the demo failed to: kill its processes, by PID."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in processes_with_env(f"{MARKER}={self.marker}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        admin = psycopg2.connect(dbname="postgres", **PG)
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        admin.close()


def processes_with_env(entry: str) -> list[int]:
    wanted = entry.encode()
    pids = []
    for path in Path("/proc").iterdir():
        if not path.name.isdigit() or int(path.name) == os.getpid():
            continue
        try:
            environ = (path / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if wanted in environ.split(b"\0"):
            pids.append(int(path.name))
    return pids


@pytest.fixture
def demo_env():
    started: list[Demo] = []

    def make(**env: str) -> Demo:
        started.append(Demo(**env))
        return started[-1]

    yield make
    for demo in started:
        demo.clean_up_after_failure()


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc"),
]


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_demo_runs_end_to_end(demo_env, broker):
    demo = demo_env(**BROKERS[broker]).start()
    status = demo.wait(timeout=180)
    output = demo.text()

    assert status == 0, output
    for line in EXPECTED_LINES:
        assert line in output, f"missing {line!r} in:\n{output}"
    assert "FAILED" not in output
    assert not demo.database_exists()
    assert not demo.temp_dir().exists()
    assert demo.leftover_processes() == []


def test_demo_cleans_up_on_ctrl_c(demo_env):
    demo = demo_env().start()
    demo.wait_for_line("1. A task per tenant sees only its own rows", timeout=120)
    assert demo.process is not None
    demo.process.send_signal(signal.SIGINT)  # what Ctrl-C sends, to the demo's PID only
    status = demo.wait(timeout=60)
    output = demo.text()

    assert status == 128 + signal.SIGINT, output
    assert "Interrupted by SIGINT." in output
    assert "stopped celery worker" in output
    assert "stopped celery beat" in output
    assert not demo.database_exists()
    assert not demo.temp_dir().exists()
    assert demo.leftover_processes() == []
