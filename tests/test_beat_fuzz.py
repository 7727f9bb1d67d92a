"""Fuzzed beat options and fan-out arguments: refused up front, never sent or spliced raw.

``tenant_schemas`` and ``tenant_spread_seconds`` of a ``beat_schedule`` entry, for
``TenantAwareScheduler``, ``TenantAwarePersistentScheduler`` and
``TenantAwareDatabaseScheduler`` (which installs the entries as public rows); the headers
of a stored row, their stored form; ``tenants=`` and ``spread_seconds=`` of
``TenantTask.apply_async_for_tenants``. Properties:

* a bad option is refused when the schedule is built: beat logs an error naming the entry
  and the option, skips that entry and keeps the others; the fan-out helper raises
  before sending anything;
* an accepted entry is sent at its due time without any error, once to each schema it
  names that exists (public included), or once to every tenant;
* no message carries a ``_schema_name`` that is not an existing schema (or public);
* the SQL text beat sends is the same whatever the options: no value is spliced in;
* tenants with any schema name django-tenants accepts (``%`` included) are read, sent to
  and saved by the database scheduler.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from django.db import connection
from django_tenants.utils import schema_context
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenant_schemas_celery.beat_sql import update_row
from tenant_schemas_celery.db_scheduler import TenantAwareDatabaseScheduler
from tenant_schemas_celery.exceptions import InvalidSchemaName, TenantConfigurationError
from tenant_schemas_celery.resolution import validate_schema_name
from tenant_schemas_celery.scheduler import TenantAwarePersistentScheduler, TenantAwareScheduler
from tenant_schemas_celery.spread import MAX_SPREAD_SECONDS
from tests.beat_helpers import (
    TASK,
    add_task,
    beat_schedule,
    clear_beat_tables,
    drain,
    every_tenant,
    make_due,
    run_due,
    sql_tenants,
)
from tests.project.celery import app
from tests.project.customers.models import Client
from tests.project.notes import tasks

pytestmark = pytest.mark.usefixtures("beat_db")

#: Django's savepoint names hold a counter: not a value of ours.
SAVEPOINT_ID = re.compile(r'"s\d+_x\d+"')
#: An option left out of the entry (or argument not passed).
ABSENT = SimpleNamespace(name="ABSENT")
#: Valid schema names that no schema has (``%`` would matter if spliced into SQL).
GHOSTS = ["ghost", "Tenant1", " tenant1", "tenant1 ", "ténant", "テナント", "a%sb", "a%(x)s",
          "$1", "x" * 63, "é" * 31]  # fmt: skip
#: Names the validator refuses, and SQL fragments.
HOSTILE = ['x"; DROP SCHEMA public; --', "tenant1; SELECT 1", "tenant1\x00", "public'--",
           "a\\b", "tenant1\n", "tenant1\r", "pg_catalog", "PG_toast", "", "x" * 64, "é" * 32,
           "\ud800", "public' OR '1'='1"]  # fmt: skip
NAMES = st.one_of(
    st.sampled_from(["public", "tenant1", "tenant2", *GHOSTS, *HOSTILE]), st.text(max_size=70)
)
ITEMS = st.one_of(
    NAMES, NAMES, st.integers(), st.none(), st.floats(), st.booleans(), st.binary(max_size=5),
    st.lists(NAMES, max_size=2), st.tuples(NAMES),
)  # fmt: skip
TENANT_SCHEMAS = st.one_of(
    st.just(ABSENT),
    st.none(),
    NAMES,  # a string instead of a list: one name
    st.lists(ITEMS, max_size=5),
    st.lists(st.sampled_from(["public", "tenant1", "tenant2", "ghost"]), max_size=6),
    st.tuples(NAMES, NAMES),
    st.frozensets(NAMES, max_size=3),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.binary(max_size=5),
    st.dictionaries(NAMES, NAMES, max_size=2),
)
ODD_SPREADS = [10**400, 1e308, math.inf, -math.inf, math.nan, "300", -0.0, 5e-324, Decimal(5),
               MAX_SPREAD_SECONDS, MAX_SPREAD_SECONDS + 1]  # fmt: skip
SPREADS = st.one_of(
    st.just(ABSENT),
    st.none(),
    st.booleans(),
    st.integers(-5, 600),
    st.integers(),
    st.floats(0, 600),
    st.floats(),  # NaN, infinities, negatives
    st.text(max_size=5),
    st.sampled_from(ODD_SPREADS),
)
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Refused(Exception):
    """The option (args[0]) is bad: the entry must be refused."""


def expected_targets(tenant_schemas: Any, spread: Any, prefix: str = "tenant_") -> Any:
    """The schemas a good entry names, in order (None: every tenant); ``Refused`` if bad."""
    if (
        spread is not ABSENT
        and spread is not None
        and not (
            isinstance(spread, (int, float))
            and not isinstance(spread, bool)
            and 0 <= spread <= MAX_SPREAD_SECONDS
        )
    ):
        raise Refused(f"{prefix}spread_seconds")
    if tenant_schemas is ABSENT or tenant_schemas is None:
        return None
    items = [tenant_schemas] if isinstance(tenant_schemas, str) else tenant_schemas
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise Refused("tenant_schemas")
    try:
        return list(dict.fromkeys(validate_schema_name(item) for item in items))
    except InvalidSchemaName:
        raise Refused("tenant_schemas") from None


def entry(queue: str, label: str, tenant_schemas: Any = ABSENT, spread: Any = ABSENT) -> Any:
    fields = {"task": TASK, "schedule": 3600, "args": [label], "options": {"queue": queue}}
    if tenant_schemas is not ABSENT:
        fields["tenant_schemas"] = tenant_schemas
    if spread is not ABSENT:
        fields["tenant_spread_seconds"] = spread
    return fields


def strings(value: Any) -> Iterator[str]:
    """Every string in ``value`` (nested in lists, sets, dicts)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from strings(item)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def beat_log() -> Iterator[list[logging.LogRecord]]:
    """The warnings and errors beat logs in the block."""
    handler = _Records()
    logger = logging.getLogger("celery.beat")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


@contextmanager
def sql() -> Iterator[list[str]]:
    """The SQL text of every statement sent in the block (``SET search_path`` included)."""
    sent: list[str] = []

    def record(execute: Any, text: str, params: Any, many: bool, context: Any) -> Any:
        sent.append(text)
        return execute(text, params, many, context)

    with connection.execute_wrapper(record):
        yield sent


def _normalized(text: str) -> str:
    return SAVEPOINT_ID.sub('"savepoint"', text)


def existing() -> set[str]:
    return {"public", *every_tenant()}


# The schedulers ---------------------------------------------------------------------------------

Starter = Callable[[dict[str, Any]], Any]


def in_memory(schedule: dict[str, Any]) -> Any:
    with beat_schedule(schedule):
        return TenantAwareScheduler(app=app)


@contextmanager
def persistent() -> Iterator[Starter]:
    """Start ``TenantAwarePersistentScheduler``s on one schedule file (restarts)."""
    with tempfile.TemporaryDirectory() as directory:
        filename = str(Path(directory) / "schedule")

        def start(schedule: dict[str, Any]) -> Any:
            with beat_schedule(schedule):
                return TenantAwarePersistentScheduler(app=app, schedule_filename=filename)

        yield start


def database(schedule: dict[str, Any]) -> Any:
    """A ``TenantAwareDatabaseScheduler`` whose settings hold ``schedule`` (installed as rows)."""
    with beat_schedule(schedule):
        return TenantAwareDatabaseScheduler(app=app)


def names(scheduler: Any) -> list[str]:
    schedule = getattr(scheduler, "_schedule", None) or scheduler.schedule
    return sorted(name for name in schedule if not name.startswith("celery."))


def run_once(
    start: Starter, queue: str, schedule: dict[str, Any], clear: bool = True
) -> dict[str, Any]:
    """Start a scheduler with ``schedule``, send every entry once; return what happened.

    With ``clear``, the public schema's django-celery-beat rows (of the last run) are
    deleted first.
    """
    if clear:
        clear_beat_tables("public")
    with beat_log() as records, sql() as statements:
        scheduler = start(schedule)
        try:
            entries = names(scheduler)
            make_due(scheduler)
            run_due(scheduler)
        finally:
            scheduler.close()
    # (the database scheduler's celery.backend_cleanup row goes to the default queue)
    messages = drain(queue) + drain(app.conf.task_default_queue)
    sent: dict[str, list[str]] = {}
    for message in messages:
        label = message["args"][0] if message["args"] else message["task"]
        sent.setdefault(label, []).append(message["_schema_name"])
    statements = [_normalized(text) for text in statements]
    return {"entries": entries, "records": records, "statements": statements, "sent": sent}


_baselines: dict[str, set[str]] = {}


def baseline(kind: str, start: Starter, queue: str) -> set[str]:
    """The SQL text of a run with well-formed options (computed once per scheduler)."""
    if kind not in _baselines:
        schedule = {
            "fuzzed": entry(queue, "fuzzed", ["tenant2", "ghost"], 10),
            "all": entry(queue, "all"),
            "good": entry(queue, "good", ["tenant1"]),
        }
        _baselines[kind] = set(run_once(start, queue, schedule)["statements"])
    return _baselines[kind]


def check_schedule(kind: str, start: Starter, queue: str, tenant_schemas: Any, spread: Any) -> None:
    """Run a fuzzed entry next to a good one, and check the properties of the module."""
    base = baseline(kind, start, queue)
    schedule = {
        "fuzzed": entry(queue, "fuzzed", tenant_schemas, spread),
        "good": entry(queue, "good", ["tenant1"]),
    }
    try:
        targets = expected_targets(tenant_schemas, spread)
        refused = None
    except Refused as exc:
        refused = exc.args[0]
    ran = run_once(start, queue, schedule)
    errors = [r.getMessage() for r in ran["records"] if r.levelno >= logging.ERROR]
    live = existing()
    # The good entry always runs, once, in its schema; every message goes to a live schema
    assert ran["sent"].get("good") == ["tenant1"], ran
    assert all(schema in live for schemas in ran["sent"].values() for schema in schemas)
    if refused:
        # A bad entry is logged as an error naming the entry and the option, and skipped
        assert len(errors) == 1, errors
        assert errors[0].startswith("beat: Ignoring schedule entry 'fuzzed': "), errors
        assert refused in errors[0], errors
        assert ran["entries"] == ["good@tenant1"]
        assert "fuzzed" not in ran["sent"]
    else:
        # A good one gets no error at all, and runs once in each of its existing schemas
        assert errors == []
        suffixes = ["__all_tenants_only__"] if targets is None else targets
        assert ran["entries"] == sorted(["good@tenant1", *(f"fuzzed@{s}" for s in suffixes)])
        wanted = every_tenant() if targets is None else [s for s in targets if s in live]
        assert sorted(ran["sent"].get("fuzzed", [])) == sorted(wanted)
    # No statement text depends on the options (values are parameters, or not sent at all)
    assert set(ran["statements"]) <= base, set(ran["statements"]) - base
    base_text = "\n".join(base)
    quoted = {
        form
        for value in strings(tenant_schemas)
        if value and value not in live
        for form in (f'"{value}"', f"'{value}'")
        if form not in base_text  # e.g. '.': beat's own SQL holds it
    }
    assert not any(form in text for form in quoted for text in ran["statements"])


@FUZZ
@given(tenant_schemas=TENANT_SCHEMAS, spread=SPREADS)
def test_fuzzed_options_in_memory_scheduler(beat_queue: str, tenant_schemas: Any, spread: Any):
    check_schedule("memory", in_memory, beat_queue, tenant_schemas, spread)


@FUZZ
@given(first=st.tuples(TENANT_SCHEMAS, SPREADS), second=st.tuples(TENANT_SCHEMAS, SPREADS))
def test_fuzzed_options_persistent_scheduler_across_a_restart(
    beat_queue: str, first: tuple[Any, Any], second: tuple[Any, Any]
) -> None:
    # The second start merges its config into the entries the first one stored
    with persistent() as start:
        check_schedule("persistent", start, beat_queue, *first)
        check_schedule("persistent", start, beat_queue, *second)


@FUZZ
@given(tenant_schemas=TENANT_SCHEMAS, spread=SPREADS)
def test_fuzzed_options_database_scheduler(beat_queue: str, tenant_schemas: Any, spread: Any):
    check_schedule("database", database, beat_queue, tenant_schemas, spread)


#: Header values of a stored row: anything JSON holds (NaN and infinities included).
JSON_VALUES = st.one_of(
    st.just(ABSENT), st.none(), NAMES, st.booleans(), st.integers(), st.floats(),
    st.sampled_from([1e308, 10**30, -1, "300", "false", " TRUE", "no"]),
    st.lists(NAMES, max_size=2),
    st.dictionaries(st.text(max_size=3), NAMES, max_size=1),
)  # fmt: skip


def expected_row_targets(schema_name: str, headers: dict[str, Any]) -> Any:
    """Where a stored row is sent (None: every tenant), as the README says; or ``Refused``."""
    expected_targets(ABSENT, headers.get("_tenant_spread_seconds", ABSENT), prefix="_tenant_")
    if schema_name != "public":
        return [schema_name]
    every = headers.get("_all_tenants_only")
    if isinstance(every, str) and every.strip().lower() in ("true", "false"):
        every = every.strip().lower() == "true"
    elif not (every is None or isinstance(every, bool)):
        raise Refused("_all_tenants_only")
    if every:
        return None
    target = headers.get("_schema_name")  # null: no header, public
    if target is None:
        return ["public"]
    try:
        return [validate_schema_name(target)]
    except InvalidSchemaName:
        raise Refused("_schema_name") from None


@FUZZ
@given(
    schema_name=st.sampled_from(["public", "tenant1"]),
    target=JSON_VALUES,
    every=JSON_VALUES,
    spread=JSON_VALUES,
)
def test_fuzzed_row_headers_database_scheduler(
    beat_queue: str, schema_name: str, target: Any, every: Any, spread: Any
) -> None:
    # A row's headers are the stored form of the options: same properties
    values = {"_schema_name": target, "_all_tenants_only": every, "_tenant_spread_seconds": spread}
    headers = {key: value for key, value in values.items() if value is not ABSENT}
    clear_beat_tables("public", "tenant1")
    add_task(
        schema_name, "row", queue=beat_queue, args=json.dumps(["row"]), headers=json.dumps(headers)
    )
    try:
        targets = expected_row_targets(schema_name, headers)
        refused = None
    except Refused as exc:
        refused = exc.args[0]
    ran = run_once(database, beat_queue, {}, clear=False)
    errors = [r.getMessage() for r in ran["records"] if r.levelno >= logging.ERROR]
    live = existing()
    assert all(schema in live for schemas in ran["sent"].values() for schema in schemas)
    if refused:
        assert len(errors) == 1, errors
        assert errors[0].startswith(
            f"beat: Ignoring periodic task 'row' of schema '{schema_name}': "
        )
        assert ran["entries"] == [] and "row" not in ran["sent"]
    else:
        assert errors == []
        wanted = every_tenant() if targets is None else [s for s in targets if s in live]
        assert sorted(ran["sent"].get("row", [])) == sorted(wanted)


#: Schema names django-tenants accepts, ``%`` included (SQL run with parameters doubles it).
TENANT_NAMES = (
    st.one_of(
        st.sampled_from(["%", "a%sb", "%(x)s", "50%", "Tenant One", "ünï", "$1", "a.b", "x-y"]),
        st.text(
            st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\"'\\;"),
            min_size=1,
            max_size=20,
        ),
    )
    .map(lambda name: f"fz{name}")  # never an existing schema
    .filter(lambda name: len(name.encode()) <= 63)
)


@settings(FUZZ, max_examples=25)
@given(names=st.lists(TENANT_NAMES, min_size=1, max_size=3, unique=True))
def test_tenant_schema_names_database_scheduler(beat_queue: str, names: list[str]) -> None:
    # Tenants with odd (valid) schema names, a row each: read, sent and saved in each schema
    with sql_tenants(*names):
        rows = {
            name: add_task(name, f"job@{name}", queue=beat_queue, args=json.dumps([name]))
            for name in names
        }
        ran = run_once(database, beat_queue, {})
        for name, row in rows.items():
            update_row(name, row.pk, {"enabled": False}, signal_change=True)
            with schema_context(name):
                row.refresh_from_db()
            assert (row.total_run_count, row.enabled) == (1, False)
    assert [r.getMessage() for r in ran["records"] if r.levelno >= logging.ERROR] == []
    assert ran["entries"] == sorted(f"job@{name}" for name in names)
    assert {name: ran["sent"].get(name) for name in names} == {name: [name] for name in names}


# The fan-out helper ----------------------------------------------------------------------------

#: Tenant objects: only their ``schema_name`` is used.
TENANTS = st.sampled_from(
    [
        Client(schema_name="tenant1", name="T1"),
        Client(schema_name="ghost", name="GHOST"),
        Client(schema_name="x'; DROP SCHEMA public; --", name="HOSTILE"),
        SimpleNamespace(schema_name=5),
        SimpleNamespace(schema_name=None),
    ]
)
TENANT_ARGS = st.one_of(
    st.just(ABSENT),
    st.none(),
    NAMES,
    TENANTS,  # one tenant instead of a list
    st.lists(st.one_of(ITEMS, TENANTS), max_size=5),
    st.lists(st.sampled_from(["public", "tenant1", "tenant2", "ghost"]), max_size=6),
    st.tuples(NAMES, TENANTS),
    st.frozensets(NAMES, max_size=3),
    st.dictionaries(NAMES, NAMES, max_size=2),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.binary(max_size=5),
)


def expected_tenants(tenants: Any, spread: Any) -> Any:
    """The schemas ``apply_async_for_tenants`` sends to (None: every tenant); or ``Refused``."""
    expected_targets(ABSENT, spread, prefix="")
    if tenants is ABSENT or tenants is None:
        return None
    if isinstance(tenants, str) or hasattr(tenants, "schema_name"):
        tenants = [tenants]
    if isinstance(tenants, (bytes, bytearray)) or not isinstance(tenants, Iterable):
        raise Refused("tenants")
    try:
        return list(
            dict.fromkeys(
                validate_schema_name(getattr(tenant, "schema_name", tenant)) for tenant in tenants
            )
        )
    except InvalidSchemaName:
        raise Refused("tenants") from None


@FUZZ
@given(tenants=TENANT_ARGS, spread=SPREADS)
def test_fuzzed_fan_out_arguments(beat_queue: str, tenants: Any, spread: Any) -> None:
    arguments = {"queue": beat_queue}
    if tenants is not ABSENT:
        arguments["tenants"] = tenants
    if spread is not ABSENT:
        arguments["spread_seconds"] = spread
    try:
        targets = expected_tenants(tenants, spread)
        refused = None
    except Refused as exc:
        refused = exc.args[0]
    live = existing()
    with sql() as statements:
        if refused:
            # A bad argument raises a clear error before anything is sent
            with pytest.raises((TenantConfigurationError, InvalidSchemaName)) as raised:
                tasks.whereami.apply_async_for_tenants(**arguments)
            if isinstance(raised.value, TenantConfigurationError):
                assert refused in str(raised.value)
        else:
            results = tasks.whereami.apply_async_for_tenants(**arguments)
    sent = [message["_schema_name"] for message in drain(beat_queue)]
    if refused:
        assert sent == []
        assert statements == []
        return
    wanted = every_tenant() if targets is None else [s for s in targets if s in live]
    assert sorted(results) == sorted(sent) == sorted(wanted)
    assert all(schema in live for schema in sent)
    # One statement reads the tenants (the names wanted are compared in Python)
    assert len([text for text in statements if not text.startswith("SET search_path")]) == 1
    assert not any(
        f'"{value}"' in text or f"'{value}'" in text
        for value in strings(tenants)
        if value and value not in live and value not in TENANT_IDENTIFIERS
        for text in statements
    )


#: Names the tenant query itself quotes (a fuzzed "schema_name" is found there, not spliced).
TENANT_IDENTIFIERS = {
    *(field.column for field in Client._meta.concrete_fields),
    Client._meta.db_table,
    "public",
}
