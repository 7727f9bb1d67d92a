"""Every fenced code block of README.md, run or checked against the test project.

The README is parsed here (``readme_blocks``) and the tests run the README's own text, so
a test fails when an example stops working (import path, class or setting name,
behaviour). Each block is named by the HTML comment ``<!-- test: NAME -->`` on the line
before its opening fence; ``test_every_block_is_named_and_exercised`` fails when a block
has no name or no test here (a new example needs one), or a test names a block that is gone.

How the blocks run:

* The Python examples of "Usage" and the task examples after them are written, as they
  are, into a temporary project (``project_files``: ``myproject/celery.py`` is the
  quickstart app, ``myproject/tasks.py`` its tasks, ...). This process imports it to send
  tasks; a real worker runs them, started with the README's own command line
  (``celery -A myproject.celery worker``) plus the test's options (solo pool, ``-I`` for
  the example modules and ``tests/readme_observer.py``, which records the schema of every
  connection for each run). The README's send example (``my_task.delay()``) is run in
  tenant schemas.
* Examples about sending (the one-call dispatcher, ``beat_schedule``, the schedulers, the
  django-celery-beat rows) run in this process; their messages go to a scratch queue and
  are read back from Redis.
* Shell blocks: ``celery`` command lines are parsed by Celery's own command line (the
  options must exist where they are written) and the scheduler paths they name are
  imported as ``celery beat`` imports them, then used by the behaviour tests. The other
  commands are checked against what they name: the package and its requirement, the
  Makefile's ``demo`` target and the demo's settings, ``bench/beat.py``'s arguments, the
  package's extras and the pytest configuration.

What the tests add to the README's text, and nothing else:

* the quickstart blocks are indented by three spaces (as upstream): blocks are dedented;
* blocks that use ``app`` without importing it run with the quickstart's ``app`` (as a
  module: ``from myproject.celery import app`` first); the one-call dispatcher continues
  the dispatcher block, so it also gets ``from myproject.jobs import
  reset_remaining_jobs_in_schema``, and the example of what it skips runs with the
  quickstart's ``my_task``;
* the value of a block's last expression (``my_task.delay()``) is kept, as in a REPL;
* the quickstart app reads its broker and result backend from the Django settings
  ``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND``, as the README says (checked: no
  environment variable gives them), and gets the tests' queue (the worker: its Django
  settings are ``tests/readme_settings.py``, which also adds the ``reporting`` database
  alias of the multiple-databases example), and the task names of the beat examples
  (``myapp.tasks.*``, ``my_app.tasks.*``) are routed to the scratch queue;
* the test project's tenant model has no ``ready`` flag: for the readiness example, the
  base queryset of the schedulers gets one as an annotation (only ``tenant2`` is ready);
* the django-celery-beat example writes to a schema named ``tenant``: the test makes one;
* the heartbeat check is run on a temporary file, in place of the path its settings name.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import psycopg2
import pytest
from celery import _state as celery_state
from celery.beat import Scheduler
from celery.bin.base import CLIContext
from celery.bin.celery import celery as celery_cli
from celery.utils.imports import symbol_by_name
from django.conf import settings
from django.db import connection
from django.db.models import BooleanField, ExpressionWrapper, Q
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tenants.utils import schema_context
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tenant_schemas_celery.app import CeleryApp
from tenant_schemas_celery.db_scheduler import TenantAwareDatabaseScheduler
from tenant_schemas_celery.liveness import (
    leader_application_name,
    leader_lock_key,
    record_leader_tick,
)
from tenant_schemas_celery.scheduler import (
    TenantAwarePersistentScheduler,
    TenantAwareScheduler,
    TenantAwareSchedulerMixin,
)
from tenant_schemas_celery.spread import spread_offset
from tenant_schemas_celery.task import TenantTask
from tests import beat_helpers
from tests.beat_helpers import drain, every_tenant, flush_stats, make_due, run_due, sql_tenants
from tests.conftest import BROKERS
from tests.project.celery import app as tests_app
from tests.project.customers.models import Client
from tests.project.runtime_conf import set_setting
from tests.readme_observer import runs_db
from tests.workers import ROOT, CeleryProcess

README = ROOT / "README.md"
TIMEOUT = 30
RUN_ID = uuid.uuid4().hex[:8]
QUEUE = f"tsc-readme-{RUN_ID}"  # the queue of the README's worker
SCRATCH_QUEUE = f"tsc-readme-scratch-{RUN_ID}"  # messages read back, never run
RUNS_KEY = f"tsc-tests:readme-runs:{RUN_ID}"
#: Task names the beat examples schedule (no such tasks exist): sent to the scratch queue.
SCRATCH_TASKS = re.compile(r"^(myapp|my_app)\.tasks\.")
#: Tasks that a test sends to the scratch queue, to read their messages back.
scratch_routed: set[str] = set()


# Reading the README ----------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A fenced code block of the README: its name, language, code (dedented) and line."""

    name: str | None
    language: str
    code: str
    line: int  # of the opening fence, 1-based

    def commands(self) -> list[list[str]]:
        """The block's shell commands, split into words; prompts (``$``) and comments dropped."""
        commands = []
        for text in self.code.splitlines():
            text = text.strip()
            text = text[1:] if text.startswith("$ ") else text
            for command in text.split("&&"):
                words = shlex.split(command, comments=True)
                if words:
                    commands.append(words)
        return commands


FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
MARKER = re.compile(r"^ *<!-- test: (?P<name>[a-z0-9-]+) -->$")


def readme_blocks(text: str) -> list[Block]:
    """Return the fenced code blocks of a Markdown text (CommonMark's fences, any indent).

    A block's lines lose the indentation of its opening fence (as in CommonMark), then
    their common indentation. Its name is that of a ``<!-- test: NAME -->`` comment on
    the line just before the fence.
    """
    lines = text.splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        body: list[str] = []
        end = index + 1
        while True:
            if end == len(lines):
                raise AssertionError(f"README.md:{index + 1}: code block never closed")
            closing = lines[end].strip()
            if closing.startswith(fence) and set(closing) == {fence[0]}:
                break
            line = lines[end]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
            end += 1
        marker = MARKER.match(lines[index - 1]) if index else None
        info = opening["info"].split()
        blocks.append(
            Block(
                name=marker["name"] if marker else None,
                language=info[0] if info else "",
                code=textwrap.dedent("\n".join(body)) + "\n",
                line=index + 1,
            )
        )
        index = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
EXERCISED: set[str] = set()


def exercises(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a test as exercising the README blocks ``names``."""
    EXERCISED.update(names)
    return lambda test: test


def block(name: str) -> Block:
    found = [b for b in BLOCKS if b.name == name]
    assert len(found) == 1, f"README.md has {len(found)} blocks named {name!r}"
    return found[0]


def run_python(code_block: Block, namespace: dict[str, Any] | None = None) -> Any:
    """Run a Python block in ``namespace``; return the value of its last expression, if any.

    Tracebacks point at README.md's lines.
    """
    tree = ast.parse(code_block.code)
    ast.increment_lineno(tree, code_block.line)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    namespace = {} if namespace is None else namespace
    exec(compile(tree, str(README), "exec"), namespace)
    if last is None:
        return None
    expression = ast.Expression(last.value)
    return eval(compile(expression, str(README), "eval"), namespace)


def celery_command(words: list[str]) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Parse a ``celery`` command line as Celery's CLI does, without running it.

    Returns the global options (``app`` is ``-A``), the sub-command and its options.
    """
    assert words[0] == "celery", words
    obj = CLIContext(app=tests_app, no_color=True, workdir=None)
    # Up to Celery 5.6, -A is converted while the line is parsed, by importing the app;
    # from 5.7 on it stays the string that the command imports later. Keep the string.
    (app_option,) = [param for param in celery_cli.params if param.name == "app"]
    app_type, app_option.type = app_option.type, click.UNPROCESSED
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # click's protected_args
            context = celery_cli.make_context("celery", words[1:], obj=obj)
            rest = [*getattr(context, "protected_args", ()), *context.args]
    finally:
        app_option.type = app_type
    name, command, arguments = celery_cli.resolve_command(context, rest)
    assert name is not None and command is not None, words
    sub = command.make_context(name, arguments, parent=context)
    return context.params, name, sub.params


def scheduler_of(words: list[str]) -> type:
    """The scheduler class a ``celery beat --scheduler=...`` command line names, imported."""
    _, name, options = celery_command(words)
    assert name == "beat"
    scheduler = symbol_by_name(options["scheduler"])  # as celery beat loads it
    assert isinstance(scheduler, type) and issubclass(scheduler, Scheduler), scheduler
    return scheduler


# The README's project --------------------------------------------------------------------


def _route(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
    if SCRATCH_TASKS.match(name) or name in scratch_routed:
        return {"queue": SCRATCH_QUEUE}
    return None


@dataclass
class Project:
    """The README's examples as a project: files on disk, imported in this process."""

    root: Path
    app: CeleryApp
    modules: dict[str, ModuleType]
    configured: dict[str, Any]  # the app's configuration before the tests changed it


APP_IMPORT = "from myproject.celery import app\n"


def project_files() -> dict[str, str]:
    """The temporary project's files: path -> text, made of README blocks (see the docstring)."""
    readiness = block("readiness-scheduler").code
    return {
        "myproject/__init__.py": "",
        path_of(block("usage-app")): block("usage-app").code,
        path_of(block("usage-settings")): block("usage-settings").code,
        "myproject/tasks.py": block("usage-tasks").code,
        "myproject/reports.py": APP_IMPORT + block("multiple-databases").code,
        "myproject/caching.py": APP_IMPORT + block("tenant-cache").code,
        "myproject/jobs.py": APP_IMPORT + block("dispatcher").code,
        "myproject/jobs_one_call.py": APP_IMPORT
        + "from myproject.jobs import reset_remaining_jobs_in_schema\n"
        + block("dispatcher-one-call").code,
        "tenants_app/__init__.py": "",
        path_of(block("readiness-scheduler")): readiness,
    }


def path_of(code_block: Block) -> str:
    """The file a block goes to, as its first line says (``# myproject/celery.py``)."""
    first = code_block.code.splitlines()[0]
    assert re.fullmatch(r"# [\w/]+\.py", first), f"README.md:{code_block.line + 1}: {first}"
    return first[2:]


#: The modules the worker imports (``-I``), next to the quickstart app (``-A``).
WORKER_MODULES = ("myproject.tasks", "myproject.reports", "myproject.jobs")


@pytest.fixture(scope="module")
def project(database: None, tmp_path_factory: Any) -> Iterator[Project]:
    root = tmp_path_factory.mktemp("readme-project")
    for path, text in project_files().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    previous_app = celery_state.get_current_app()
    sys.path.insert(0, str(root))
    try:
        from myproject.celery import app  # the quickstart

        configured = {key: app.conf[key] for key in ("broker_url", "result_backend")}
        # set_setting: up to Celery 5.6 a plain app.conf change is hidden by CELERY_* settings
        set_setting(app, "broker_url", BROKERS["redis"])  # the same, unless TSC_BROKER_URL
        set_setting(app, "task_default_queue", QUEUE)
        set_setting(app, "task_routes", (_route,))
        names = ("myproject.tasks", "myproject.reports", "myproject.caching", "myproject.jobs")
        modules = {name: importlib.import_module(name) for name in names}
        yield Project(root, app, modules, configured)
    finally:
        sys.path.remove(str(root))
        for name in list(sys.modules):
            if name.split(".")[0] in ("myproject", "tenants_app"):
                del sys.modules[name]
        previous_app.set_current()  # creating the quickstart app made it the current app
        for queue in (QUEUE, SCRATCH_QUEUE):
            beat_helpers.broker().delete(queue, f"_kombu.binding.{queue}")


@pytest.fixture(scope="module")
def readme_worker(project: Project) -> Iterator[CeleryProcess]:
    """``celery -A myproject.celery worker`` as the README writes it, plus test options."""
    (words,) = block("usage-worker").commands()
    options = ["-P", "solo", "-c", "1", "-n", f"tsc-readme-{RUN_ID}@%h", "-l", "INFO",
               "--without-gossip", "--without-mingle", "--without-heartbeat",
               "-I", ",".join(("tests.readme_observer", *WORKER_MODULES))]  # fmt: skip
    env = {
        "PYTHONPATH": os.pathsep.join((str(ROOT), str(project.root))),
        "DJANGO_SETTINGS_MODULE": "tests.readme_settings",
        # The Django settings CELERY_BROKER_URL and CELERY_RESULT_BACKEND (read by the
        # README's app, namespace='CELERY'), not the environment variables Celery would
        # read before them (empty: unset)
        "TSC_BROKER_URL": BROKERS["redis"],
        "TSC_RESULT_BACKEND": settings.CELERY_RESULT_BACKEND,
        "CELERY_BROKER_URL": "",
        "CELERY_RESULT_BACKEND": "",
        "TSC_README_RUNS": RUNS_KEY,
        "TSC_README_QUEUE": QUEUE,
    }
    process = CeleryProcess([*words[1:], *options], env, ready=" ready.").start()
    yield process
    process.stop()
    runs_db().delete(RUNS_KEY)


def recorded_runs(done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """The runs the README's worker recorded, once ``done(runs)`` (or after ``TIMEOUT``).

    A run is recorded by a ``task_postrun`` receiver, after its result is stored.
    """
    deadline = time.monotonic() + TIMEOUT
    while True:
        recorded = [json.loads(raw) for raw in runs_db().lrange(RUNS_KEY, 0, -1)]
        if done(recorded) or time.monotonic() > deadline:
            return recorded
        time.sleep(0.05)


def runs_of_task(task: str, count: int) -> list[dict[str, Any]]:
    """Wait for ``count`` recorded runs of ``task``; return its runs."""
    return [
        run
        for run in recorded_runs(lambda runs: sum(r["task"] == task for r in runs) >= count)
        if run["task"] == task
    ]


def run_of(task_id: str) -> dict[str, Any]:
    """The recorded run of task ``task_id``."""
    (run,) = [
        run
        for run in recorded_runs(lambda runs: any(r["id"] == task_id for r in runs))
        if run["id"] == task_id
    ]
    return run


def printed_by(worker: CeleryProcess, task_id: str) -> list[str]:
    """What task ``task_id`` printed: the worker logs a task's standard output as warnings."""
    lines = worker.log().splitlines()
    start = next(i for i, line in enumerate(lines) if f"[{task_id}] received" in line)
    end = next(i for i, line in enumerate(lines) if f"[{task_id}] succeeded" in line)
    marker = "WARNING/MainProcess] "
    return [line.split(marker, 1)[1] for line in lines[start:end] if marker in line]


def send_in(schema_name: str) -> Any:
    """Run the README's send example (``my_task.delay()``) in ``schema_name``."""
    with schema_context(schema_name):
        return run_python(block("usage-send"))


@contextlib.contextmanager
def beat_schedule_of(app: CeleryApp) -> Iterator[None]:
    previous = app.conf.beat_schedule
    try:
        yield
    finally:
        app.conf.beat_schedule = previous


# Coverage of the README ------------------------------------------------------------------


def test_every_block_is_named_and_exercised() -> None:
    unnamed = [f"README.md:{b.line}" for b in BLOCKS if b.name is None]
    assert not unnamed, f"code blocks without a <!-- test: NAME --> line before: {unnamed}"
    names = [b.name for b in BLOCKS]
    assert len(names) == len(set(names)), "two blocks have the same name"
    assert set(names) - EXERCISED == set(), "README blocks that no test here exercises"
    assert EXERCISED - set(names) == set(), "tests exercise blocks the README no longer has"
    assert {b.language for b in BLOCKS} == {"python", "bash"}


def test_blocks_are_read_from_the_markdown() -> None:
    text = (
        "Intro\n\n<!-- test: a -->\n```python\n   x = 1\n   y = 2\n```\n\n"
        "1. item\n\n    <!-- test: b -->\n    ```bash\n    $ celery  # c\n    ```\n"
        "```\n```\n"
    )
    a, b, anonymous = readme_blocks(text)
    assert (a.name, a.language, a.code, a.line) == ("a", "python", "x = 1\ny = 2\n", 4)
    assert (b.name, b.language, b.commands()) == ("b", "bash", [["celery"]])
    assert (anonymous.name, anonymous.code) == (None, "\n")
    assert run_python(a) is None
    assert run_python(Block("c", "python", "x = 1\nx + 1\n", 1)) == 2


#: Where the README's links to repository files point: PyPI shows the README without the files.
REPOSITORY = "https://github.com/tenant-schemas-celery/tenant-schemas-celery"
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def test_links_are_absolute_or_anchors() -> None:
    targets = LINK.findall(README.read_text(encoding="utf-8"))
    assert targets, "no link found: is LINK still Markdown's syntax?"
    relative = [t for t in targets if not t.startswith(("https://", "http://", "#"))]
    assert relative == [], "relative links are dead on PyPI: use absolute URLs"
    files = [t for t in targets if t.startswith(f"{REPOSITORY}/blob/main/")]
    assert files, "the README links to repository files"
    for target in files:
        path = target.removeprefix(f"{REPOSITORY}/blob/main/").split("#")[0]
        assert (ROOT / path).is_file(), f"{target}: no {path} in the repository"
    urls = metadata.metadata("tenant-schemas-celery").get_all("Project-URL") or []
    assert urls, "the package has no Project-URL (reinstall it: pip install -e .)"
    assert all(url.split(", ", 1)[1].startswith(REPOSITORY) for url in urls), urls


# Installation ----------------------------------------------------------------------------


@exercises("install")
def test_install_line_names_the_package_a_broker_client_and_a_driver() -> None:
    (words,) = block("install").commands()
    assert words[:2] == ["pip", "install"]
    package, broker, driver = (Requirement(word) for word in words[2:])
    assert metadata.metadata(package.name)["Name"] == "tenant-schemas-celery"  # this project
    required = {canonicalize_name(Requirement(r).name) for r in metadata.requires(package.name)}
    # django-tenants is a requirement: installed with the package, not named again
    assert "django-tenants" in required
    # Celery with the extra of its Redis transport, which pulls what kombu's transport imports
    assert broker.name == "celery" and "celery" in required
    assert broker.extras == {"redis"}
    assert "redis" in (metadata.metadata("celery").get_all("Provides-Extra") or [])
    # A PostgreSQL driver that Django's backend (and so django-tenants') uses
    assert (driver.name, sorted(driver.extras)) in [
        ("psycopg", ["binary"]),
        ("psycopg2-binary", []),
    ]
    # The extras the text names are the package's
    section = README.read_text(encoding="utf-8").split("\nInstallation\n", 1)[1]
    section = section.split("\nUsage\n", 1)[0]
    named = set(re.findall(r"tenant-schemas-celery\[(\w+)\]", section))
    assert named == {"beat"}
    assert named <= set(metadata.metadata(package.name).get_all("Provides-Extra") or [])
    assert extra_requirements("beat") == {"django-celery-beat"}


# Usage: the quickstart, its settings, its tasks, its worker, sending -----------------------


@exercises("usage-app")
@pytest.mark.integration
def test_quickstart_app_is_a_tenant_aware_app_configured_from_django(
    project: Project, readme_worker: CeleryProcess
) -> None:
    app = project.app
    assert isinstance(app, CeleryApp)
    assert app.main == "myproject"  # CeleryApp('myproject')
    # config_from_object('django.conf:settings', namespace='CELERY'): the configuration is
    # the Django settings named CELERY_*, the broker and result backend included
    assert app.conf["TENANT_MODEL"] == settings.TENANT_MODEL
    assert project.configured == {
        "broker_url": settings.CELERY_BROKER_URL,
        "result_backend": settings.CELERY_RESULT_BACKEND,
    }
    # The worker too, from its Django settings (no CELERY_BROKER_URL in its environment)
    banner = readme_worker.log()
    assert re.search(r"\.> app: +myproject:0x", banner), banner
    shown = app.connection_for_write(BROKERS["redis"]).as_uri()  # as the banner shows it
    assert re.search(rf"\.> transport: +{re.escape(shown)}\n", banner), banner
    # autodiscover_tasks(lambda: settings.INSTALLED_APPS): the worker imported the tasks
    # module of an installed app (nothing else imports it there), so its shared task is listed
    assert "  . tests.project.notes.tasks.shared_whereami\n" in banner


@exercises("usage-app", "usage-settings")
def test_quickstart_app_reads_the_celery_settings_of_myproject(project: Project) -> None:
    # The README's project as a user has it: DJANGO_SETTINGS_MODULE not set (the app sets
    # 'myproject.settings'), no Celery variable in the environment
    app_file, settings_file = path_of(block("usage-app")), path_of(block("usage-settings"))
    assert (app_file, settings_file) == ("myproject/celery.py", "myproject/settings.py")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CELERY_") and k != "DJANGO_SETTINGS_MODULE"}  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join((str(project.root), str(ROOT)))
    show = (
        "import json; from myproject.celery import app; import django.conf; "
        "print(json.dumps([app.main, app.conf.broker_url, app.conf.result_backend, "
        "django.conf.settings.SETTINGS_MODULE]))"
    )
    output = subprocess.run(
        [sys.executable, "-c", show], cwd=project.root, env=env, capture_output=True,
        text=True, check=True,
    ).stdout  # fmt: skip
    written = runpy.run_path(str(project.root / settings_file))
    assert json.loads(output) == [
        "myproject",
        written["CELERY_BROKER_URL"],
        written["CELERY_RESULT_BACKEND"],
        "myproject.settings",
    ]


@exercises("usage-worker")
def test_worker_command_line_is_celerys(project: Project) -> None:
    (words,) = block("usage-worker").commands()
    options, name, _ = celery_command(words)
    assert name == "worker"
    assert options["app"] == "myproject.celery"
    assert (project.root / "myproject" / "celery.py").read_text() == block("usage-app").code


@exercises("usage-tasks", "usage-send")
@pytest.mark.integration
def test_my_task_runs_in_the_schema_it_was_sent_from(
    project: Project, readme_worker: CeleryProcess, tenants: Any
) -> None:
    my_task = project.modules["myproject.tasks"].my_task
    assert isinstance(my_task, TenantTask)
    # When the README's send example runs in each schema
    sent = {schema_name: send_in(schema_name) for schema_name in ("tenant1", "tenant2", "public")}
    # Then the worker ran each in that schema, and the body printed it
    for schema_name, result in sent.items():
        assert result.get(timeout=TIMEOUT) is None
        run = run_of(result.id)
        assert run["task"] == "myproject.tasks.my_task"
        assert run["schemas"]["default"] == schema_name
        assert printed_by(readme_worker, result.id) == [schema_name], readme_worker.log()


@exercises("usage-tasks")
@pytest.mark.integration
def test_shared_task_with_tenant_task_base_runs_in_its_tenant(
    project: Project, readme_worker: CeleryProcess, tenants: Any
) -> None:
    my_shared_task = project.modules["myproject.tasks"].my_shared_task
    assert isinstance(my_shared_task, TenantTask)
    assert my_shared_task._get_app() is project.app
    with schema_context("tenant2"):
        result = my_shared_task.delay()
    assert result.get(timeout=TIMEOUT) is None
    assert run_of(result.id)["schemas"]["default"] == "tenant2"
    assert printed_by(readme_worker, result.id) == ["foo"]


# Options ---------------------------------------------------------------------------------


@exercises("multiple-databases")
@pytest.mark.integration
def test_tenant_databases_switches_the_listed_aliases_only(
    project: Project, readme_worker: CeleryProcess, tenants: Any
) -> None:
    build_report = project.modules["myproject.reports"].build_report
    assert build_report.tenant_databases == ("default", "reporting")  # aliases of the worker
    with schema_context("tenant1"):
        result = build_report.delay()
    assert result.get(timeout=TIMEOUT) is None
    assert run_of(result.id)["schemas"] == {
        "default": "tenant1",
        "reporting": "tenant1",
        "other": "public",
        "untouched": "public",
    }


@exercises("tenant-cache")
def test_tenant_cache_seconds_reuses_the_tenant(project: Project, tenants: Any) -> None:
    some_task = project.modules["myproject.caching"].some_task
    assert some_task.tenant_cache_seconds == 30
    lookups = []
    with schema_context("tenant1"):
        for _ in range(2):
            with CaptureQueriesContext(connection) as queries:
                some_task.apply().get()
            lookups.append(sum('"customers_client"' in q["sql"] for q in queries))
    assert lookups == [1, 0]


# Celery beat: dispatcher pattern ---------------------------------------------------------


@exercises("dispatcher")
@pytest.mark.integration
def test_dispatcher_sends_the_task_in_every_tenant(
    project: Project, readme_worker: CeleryProcess, tenants: Any
) -> None:
    jobs = project.modules["myproject.jobs"]
    expected = sorted(
        Client.objects.exclude(schema_name="public").values_list("schema_name", flat=True)
    )
    # Beat would send the dispatch task from public
    result = jobs.reset_remaining_jobs_in_all_schemas.delay()
    assert result.get(timeout=TIMEOUT) is None
    assert run_of(result.id)["schemas"]["default"] == "public"
    per_schema = runs_of_task("myproject.jobs.reset_remaining_jobs_in_schema", len(expected))
    assert sorted(run["schemas"]["default"] for run in per_schema) == expected
    assert {run["state"] for run in per_schema} == {"SUCCESS"}


@exercises("dispatcher-one-call")
def test_delay_for_tenants_dispatcher_spreads_over_ready_tenants(
    project: Project, tenants: Any
) -> None:
    module = importlib.import_module("myproject.jobs_one_call")
    inner = "myproject.jobs.reset_remaining_jobs_in_schema"
    scratch_routed.add(inner)
    try:
        before = timezone.now()
        module.reset_remaining_jobs_in_all_schemas.apply().get()
        after = timezone.now()
    finally:
        scratch_routed.discard(inner)
    messages = drain(SCRATCH_QUEUE)
    assert {m["task"] for m in messages} == {inner}
    assert sorted(m["_schema_name"] for m in messages) == every_tenant()
    for message in messages:
        offset = timedelta(seconds=spread_offset(message["_schema_name"], 600))
        assert_between(datetime.fromisoformat(message["eta"]) - offset, before, after)


@exercises("dispatcher-skipped")
def test_delay_for_tenants_lists_and_logs_what_it_skipped(
    project: Project, tenants: Any, caplog: Any
) -> None:
    my_task = project.modules["myproject.tasks"].my_task
    scratch_routed.add(my_task.name)
    namespace: dict[str, Any] = {"my_task": my_task}
    try:
        with caplog.at_level("WARNING", logger="tenant_schemas_celery"):
            run_python(block("dispatcher-skipped"), namespace)
    finally:
        scratch_routed.discard(my_task.name)
    assert sorted(m["_schema_name"] for m in drain(SCRATCH_QUEUE)) == ["tenant1"]
    assert "'nope'" in caplog.text
    # Each `expression  # value` line shows what the expression gives ("..." elides)
    shown = [line.split("  # ", 1) for line in block("dispatcher-skipped").code.splitlines()]
    checked = [line for line in shown if len(line) == 2]
    assert len(checked) == 2
    for code, value in checked:
        actual = repr(eval(code, namespace))
        head, _, tail = value.partition("...")
        assert actual.startswith(head) and actual.endswith(tail), (code, actual)


def assert_between(moment: datetime, earliest: datetime, latest: datetime) -> None:
    rounding = timedelta(microseconds=1)  # timedelta(seconds=float) rounds to microseconds
    assert earliest - rounding <= moment <= latest + rounding, (earliest, moment, latest)


# Celery beat: schedulers -----------------------------------------------------------------


@exercises("custom-scheduler-beat", "beat-schedule")
@pytest.mark.parametrize("line", [0, 1])
def test_beat_schedule_with_each_scheduler(project: Project, line: int, tmp_path: Path) -> None:
    words = block("custom-scheduler-beat").commands()[line]
    scheduler_cls = scheduler_of(words)
    assert scheduler_cls is (TenantAwareScheduler, TenantAwarePersistentScheduler)[line]
    app = project.app
    with beat_schedule_of(app):
        run_python(block("beat-schedule"), {"app": app})
        scheduler = scheduler_cls(app=app, schedule_filename=str(tmp_path / "schedule"))
    try:
        names = {name for name in scheduler.schedule if not name.startswith("celery.")}
        assert names == {"my-task@public", "nightly-report@__all_tenants_only__"}
        make_due(scheduler)
        before = timezone.now()
        run_due(scheduler)
        after = timezone.now()
    finally:
        scheduler.close()
    messages = drain(SCRATCH_QUEUE)
    my_task = [m for m in messages if m["task"] == "myapp.tasks.my_task"]
    nightly = [m for m in messages if m["task"] == "myapp.tasks.nightly_report"]
    assert len(my_task) + len(nightly) == len(messages)
    assert [m["_schema_name"] for m in my_task] == ["public"]
    assert sorted(m["_schema_name"] for m in nightly) == every_tenant()
    for message in nightly:  # spread over 30 minutes; expires one hour after its own start
        eta = datetime.fromisoformat(message["eta"])
        offset = timedelta(seconds=spread_offset(message["_schema_name"], 1800))
        assert_between(eta - offset, before, after)
        expires = datetime.fromisoformat(message["expires"])
        assert_between(expires - timedelta(hours=1), eta, eta)


@exercises("tenant-timezone")
def test_tenant_timezone_runs_at_each_tenants_own_wall_clock_time(
    project: Project, beat_db: None
) -> None:
    app = project.app
    with beat_schedule_of(app):
        run_python(block("tenant-timezone"), {"app": app})
        scheduler = TenantAwareScheduler(app=app)
    entry = scheduler.schedule["nightly-cleanup@__all_tenants_only__"]
    assert entry.options["headers"]["_tenant_timezone"] == "timezone"
    clock = [datetime(2026, 1, 10, 12, tzinfo=dt_timezone.utc)]
    entry.schedule.nowfun = lambda: clock[0]
    entry.last_run_at = clock[0]
    with sql_tenants("tokyo_tenant", beat_tables=False):
        Client.objects.filter(schema_name="tokyo_tenant").update(timezone="Asia/Tokyo")
        clock[0] = datetime(2026, 1, 10, 17, tzinfo=dt_timezone.utc)  # 02:00 in Tokyo
        scheduler._heap = None
        run_due(scheduler)
        assert [m["_schema_name"] for m in drain(SCRATCH_QUEUE)] == ["tokyo_tenant"]
        clock[0] = datetime(2026, 1, 11, 2, tzinfo=dt_timezone.utc)  # 02:00 in UTC
        run_due(scheduler)
        others = sorted(set(every_tenant()) - {"tokyo_tenant"})
        assert sorted(m["_schema_name"] for m in drain(SCRATCH_QUEUE)) == others


@exercises("readiness-scheduler", "readiness-beat")
def test_readiness_subclass_sends_to_ready_tenants_only(project: Project, monkeypatch: Any) -> None:
    (words,) = block("readiness-beat").commands()
    scheduler_cls = scheduler_of(words)  # imports tenants_app/scheduler.py, the README's block
    assert scheduler_cls.__module__ == "tenants_app.scheduler"
    assert issubclass(scheduler_cls, TenantAwareScheduler)
    # Give the tenant model its `ready` flag: only tenant2 is ready
    base = TenantAwareSchedulerMixin.get_queryset
    ready = ExpressionWrapper(Q(schema_name="tenant2"), output_field=BooleanField())
    monkeypatch.setattr(
        TenantAwareSchedulerMixin,
        "get_queryset",
        classmethod(lambda cls: base().annotate(ready=ready)),
    )
    assert list(scheduler_cls.get_queryset().values_list("schema_name", flat=True)) == ["tenant2"]
    app = project.app
    with beat_schedule_of(app):
        app.conf.beat_schedule = {
            "all": {"task": "myapp.tasks.all", "schedule": 60},
            "listed": {"task": "myapp.tasks.listed", "schedule": 60,
                       "tenant_schemas": ["public", "tenant1", "tenant2"]},
        }  # fmt: skip
        scheduler = scheduler_cls(app=app)
    make_due(scheduler)
    run_due(scheduler)
    sent = sorted((m["task"], m["_schema_name"]) for m in drain(SCRATCH_QUEUE))
    assert sent == [
        ("myapp.tasks.all", "tenant2"),
        ("myapp.tasks.listed", "public"),
        ("myapp.tasks.listed", "tenant2"),
    ]


@exercises("db-scheduler-beat", "db-scheduler-rows")
def test_database_scheduler_runs_each_schemas_rows_there(project: Project, beat_db: None) -> None:
    (words,) = block("db-scheduler-beat").commands()
    scheduler_cls = scheduler_of(words)
    assert scheduler_cls is TenantAwareDatabaseScheduler
    with sql_tenants("tenant"):  # the example's tenant schema
        run_python(block("db-scheduler-rows"))
        flush_stats()
        app = project.app
        with beat_schedule_of(app):
            app.conf.beat_schedule = {}
            scheduler = scheduler_cls(app=app)
        try:
            names = {name for name in scheduler.schedule if not name.startswith("celery.")}
            assert names == {"my_task@public", "my_task@tenant"}
            make_due(scheduler)
            run_due(scheduler)
        finally:
            scheduler.close()
    messages = drain(SCRATCH_QUEUE)
    assert sorted((m["task"], m["_schema_name"]) for m in messages) == [
        ("my_app.tasks.my_task", "public"),
        ("my_app.tasks.my_task", "tenant"),
    ]


# Celery beat: liveness ------------------------------------------------------------------


def heartbeat_settings() -> dict[str, Any]:
    """The Django settings of the README's heartbeat example."""
    namespace: dict[str, Any] = {}
    run_python(block("beat-heartbeat-settings"), namespace)
    return {name: value for name, value in namespace.items() if name.startswith("CELERY_")}


@exercises("beat-heartbeat-settings")
@pytest.mark.parametrize("scheduler_class", [TenantAwareScheduler, TenantAwareDatabaseScheduler])
def test_heartbeat_settings_are_those_the_schedulers_read(scheduler_class: type) -> None:
    # Given an app configured from the README's Django settings
    values = heartbeat_settings()
    app = CeleryApp("readme-heartbeat", set_as_current=False)
    try:
        with override_settings(**values):
            app.config_from_object("django.conf:settings", namespace="CELERY")
            scheduler = scheduler_class(app=app, lazy=True)
            # Then beat touches that file, and sleeps at most that long between ticks
            path = values["CELERY_BEAT_TENANT_HEARTBEAT_FILE"]
            assert str(scheduler.heartbeat_file.path) == path
            assert scheduler.max_interval == values["CELERY_BEAT_MAX_LOOP_INTERVAL"]
    finally:
        app.close()


@exercises("beat-heartbeat-probe")
def test_heartbeat_probe_passes_while_the_file_is_younger_than_its_limit(tmp_path: Path) -> None:
    # Given the README's check, of the file its settings name, and its age limit
    code = block("beat-heartbeat-probe").code.strip()
    path = heartbeat_settings()["CELERY_BEAT_TENANT_HEARTBEAT_FILE"]
    match = re.fullmatch(r".* -lt (\d+)", code)
    assert match is not None and path in code, code
    limit = int(match[1])
    # (above the longest sleep, by a margin for the longest tick)
    assert limit >= heartbeat_settings()["CELERY_BEAT_MAX_LOOP_INTERVAL"] + 30
    heartbeat = tmp_path / "celery-beat.heartbeat"
    check = ["sh", "-c", code.replace(path, str(heartbeat))]

    def status(age: float | None) -> int:
        if age is not None:
            heartbeat.touch()
            then = time.time() - age
            os.utime(heartbeat, (then, then))
        return subprocess.run(check, capture_output=True).returncode

    # Then it fails without the file, passes while it is younger than the limit, then fails
    assert status(None) == 1
    assert [status(0), status(limit - 5), status(limit + 5), status(10**6)] == [0, 0, 1, 1]


@exercises("beat-ha-settings")
@pytest.mark.parametrize("scheduler_class", [TenantAwareScheduler, TenantAwareDatabaseScheduler])
def test_leader_election_settings_are_those_the_schedulers_read(scheduler_class: type) -> None:
    # Given an app configured from the README's Django settings
    namespace: dict[str, Any] = {}
    run_python(block("beat-ha-settings"), namespace)
    values = {name: value for name, value in namespace.items() if name.startswith("CELERY_")}
    app = CeleryApp("readme-ha", set_as_current=False)
    try:
        with override_settings(**values):
            app.config_from_object("django.conf:settings", namespace="CELERY")
            scheduler = scheduler_class(app=app, lazy=True)
            # Then its beat elects a leader by the lock of that key, with that failover time
            election = scheduler.leader_election
            assert election is not None
            assert election.timing.failover == values["CELERY_BEAT_TENANT_FAILOVER_SECONDS"]
            key = values["CELERY_BEAT_TENANT_LEADER_KEY"]
            assert election.lock == f"lock {key!r}, key {leader_lock_key(key)}"
    finally:
        app.close()


@exercises("beat-ha-status")
def test_leader_status_check_fails_without_a_leader_and_names_it(
    database: None, capsys: Any
) -> None:
    # Given nobody holds the lock of the README's key: the check fails
    with pytest.raises(SystemExit, match="no beat leads"):
        run_python(block("beat-ha-status"))
    # When a session takes it and records a tick (as a leader does)
    db = settings.DATABASES["default"]
    session = psycopg2.connect(
        dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"], host=db["HOST"],
        port=db["PORT"],
    )  # fmt: skip
    session.autocommit = True
    try:
        with session.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [leader_lock_key("proj")])
            record_leader_tick(cursor)
        # Then the check passes, naming the leader
        run_python(block("beat-ha-status"))
    finally:
        session.close()
    assert f"leader: {leader_application_name()}" in capsys.readouterr().out


# Demo, benchmark, running the tests --------------------------------------------------------


@exercises("demo")
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_runs_the_demo_script(tmp_path: Path) -> None:
    (words,) = block("demo").commands()
    assert words == ["make", "demo"]
    from tests.test_demo import DEMO  # the script tests/test_demo.py runs end to end

    def dry_run(venv: Path) -> list[str]:
        command = [*words, "--dry-run", f"VENV={venv}"]
        output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        return output.stdout.splitlines()

    with_venv = Path(sys.prefix)
    assert dry_run(with_venv)[-1] == f"{with_venv}/bin/python {DEMO.relative_to(ROOT)}"
    # "creates .venv and installs the project first if needed"
    fresh = tmp_path / "venv"
    installs = " ".join(dry_run(fresh))
    assert f"-m venv {fresh}" in installs
    match = re.search(r'pip install -e "\.\[(?P<extra>[\w-]+)\]"', installs)
    assert match is not None, installs
    # ... with only what the demo needs: the driver run.py imports and the Redis client
    # (BROKER_URL=redis://...), none of the test and lint tools of the dev extra
    assert "import psycopg2" in DEMO.read_text(encoding="utf-8")
    assert extra_requirements(match["extra"]) == {"celery[redis]", "psycopg2-binary"}


def extra_requirements(extra: str) -> set[str]:
    """The requirements (``name[extras]``) that the installed package's ``extra`` adds."""
    found = set()
    for text in metadata.requires("tenant-schemas-celery") or ():
        requirement = Requirement(text)
        if requirement.marker is not None and requirement.marker.evaluate({"extra": extra}):
            extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
            found.add(f"{canonicalize_name(requirement.name)}{extras}")
    return found


@exercises("demo-brokers")
def test_demo_broker_variables_are_the_demos(monkeypatch: Any) -> None:
    from tests import test_demo

    tested = {v["BROKER_URL"].split(":")[0] for v in test_demo.BROKERS.values() if v}
    schemes = []
    for words in block("demo-brokers").commands():
        *assignments, make, target = words
        assert [make, target] == block("demo").commands()[0]
        variables = dict(assignment.split("=", 1) for assignment in assignments)
        assert set(variables) == {"BROKER_URL"}
        monkeypatch.delenv("RESULT_BACKEND", raising=False)
        monkeypatch.setenv("BROKER_URL", variables["BROKER_URL"])
        demo_settings = runpy.run_path(str(ROOT / "examples" / "demo" / "settings.py"))
        assert demo_settings["CELERY_BROKER_URL"] == variables["BROKER_URL"]
        schemes.append(variables["BROKER_URL"].split(":")[0])
    assert sorted(schemes) == sorted(tested)  # each also runs end to end in test_demo.py


@exercises("bench-beat")
def test_bench_beat_command_line(monkeypatch: Any) -> None:
    (words,) = block("bench-beat").commands()
    assert words[:2] == ["python", "bench/beat.py"]
    spec = importlib.util.spec_from_file_location("readme_bench_beat", ROOT / words[1])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", words[1:])
    assert module.parse_args().tenants == [100, 1000, 10000]


@exercises("running-tests")
def test_running_the_tests_commands(request: Any) -> None:
    venv, activate, install, run = block("running-tests").commands()
    assert venv == ["python", "-m", "venv", ".venv"]
    assert activate == [".", ".venv/bin/activate"]
    # pip install -e ".[EXTRA]": the project at the root, with an extra it defines
    assert install[:3] == ["pip", "install", "-e"]
    match = re.fullmatch(r"\.\[(?P<extra>[\w-]+)\]", install[3])
    assert match is not None, install
    extras = metadata.metadata("tenant-schemas-celery").get_all("Provides-Extra") or []
    assert match["extra"] in extras
    assert run == ["python", "-m", "pytest"]
    # `python -m pytest` at the root collects this directory
    assert request.config.rootpath == ROOT
    assert request.config.getini("testpaths") == [Path(__file__).parent.name]


# How it works: on-commit sends, the canvas rule, hooks -----------------------------------


@exercises("on-commit")
def test_on_commit_example_sends_in_the_schema_of_the_call(tenants: Any) -> None:
    from django.db import transaction

    from tests.project.celery import app as tests_project_app
    from tests.project.notes.models import Note

    def note_here() -> None:
        Note.objects.create(text="on-commit")

    my_task = tests_project_app.task(shared=False, name="readme.note_here")(note_here)
    tests_project_app.conf.task_always_eager = True
    try:
        run_python(
            block("on-commit"),
            {"transaction": transaction, "schema_context": schema_context, "my_task": my_task},
        )
    finally:
        tests_project_app.conf.task_always_eager = False
    with schema_context("tenant1"):
        assert list(Note.objects.values_list("text", flat=True)) == ["on-commit"]
    assert not Note.objects.exists()


@pytest.fixture(scope="module")
def canvas_tenants(database: None) -> Iterator[None]:
    """The example's tenants t1, t2 and t3, dropped again afterwards."""
    from tests.conftest import create_tenant
    from tests.project.customers.models import Client

    made = [create_tenant(name) for name in ("t1", "t2", "t3")]
    yield
    for tenant in made:
        Client.objects.get(pk=tenant.pk).delete(force_drop=True)


@exercises("canvas-rule")
@pytest.mark.integration
def test_canvas_rule_example_runs_the_chord_body_in_public(canvas_tenants: None) -> None:
    from celery import chord

    from tests.conftest import use_broker
    from tests.project.notes import tasks
    from tests.workers import worker

    use_broker(BROKERS["redis"])
    process = worker(BROKERS["redis"]).start()
    try:
        namespace = {"chord": chord, "probe": tasks.whereami, "collect": tasks.collect}
        result = run_python(block("canvas-rule"), namespace)
        assert result.get(timeout=TIMEOUT) == {"results": ["t1", "t2", "t3"], "self": "public"}
    finally:
        process.stop()


@exercises("hooks")
def test_hooks_example_refuses_a_suspended_tenant(tenants: Any) -> None:
    from django.core.exceptions import ObjectDoesNotExist

    from tenant_schemas_celery.cache import tenant_cache
    from tenant_schemas_celery.exceptions import TenantNotFound
    from tenant_schemas_celery.task import TenantTask
    from tests.project.celery import app as tests_project_app

    def schema_here() -> str:
        return connection.schema_name

    namespace = {"TenantTask": TenantTask, "ObjectDoesNotExist": ObjectDoesNotExist}
    run_python(block("hooks"), namespace)
    active_only = tests_project_app.task(
        base=namespace["ActiveTenantTask"], shared=False, tenant_cache_seconds=30,
        name="readme.active_only",
    )(schema_here)  # fmt: skip
    for name, tenant in tenants.items():  # the cache holds them, with a suspended flag
        tenant.suspended = name == "tenant2"
        tenant_cache.set(name, tenant, 30)
    with schema_context("tenant1"):
        assert active_only.apply().get() == "tenant1"
    with schema_context("tenant2"):
        refused = active_only.apply()
    assert refused.state == "FAILURE"
    assert isinstance(refused.result, TenantNotFound)
