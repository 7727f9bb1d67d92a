"""Real Celery processes for the integration tests: started, awaited, and stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class CeleryProcess:
    """A ``celery`` subprocess (worker or beat) whose output goes to a log file."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, ready: str = "") -> None:
        self.args = args
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.ready = ready
        self.log_path = Path(tempfile.mkstemp(prefix="tsc-celery-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> CeleryProcess:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", *self.args],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while self.ready and self.ready not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"celery {self.args[2:3]} did not start:\n{self.log()}")
            time.sleep(0.1)
        return self

    @property
    def nodename(self) -> str:
        """The worker's node name (``-n``, ``%h`` expanded): the ``destination`` of its
        remote control commands, which other workers on the same broker do not answer."""
        return self.args[self.args.index("-n") + 1].replace("%h", socket.gethostname())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the main process (a prefork worker's children die with their pipes)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(20)


def worker(
    broker_url: str, pool: str = "solo", concurrency: int = 1, env: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> CeleryProcess:  # fmt: skip
    """Return a (not yet started) worker of the test project consuming the tests' queue."""
    name = f"tsc-{uuid.uuid4().hex[:8]}@%h"
    args = ["-A", "tests.project.celery", "worker", "-P", pool, "-c", str(concurrency),
            "-n", name, "-l", "INFO", "--without-gossip", "--without-mingle",
            "--without-heartbeat", *extra]  # fmt: skip
    return CeleryProcess(args, {"TSC_BROKER_URL": broker_url, **(env or {})}, ready=" ready.")
