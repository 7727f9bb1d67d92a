"""Each schema's entries and their merge into one schedule, in memory (fake rows and entries)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytest

from tenant_schemas_celery.schema_entries import (
    Conflict,
    SchemaEntries,
    SchemaState,
    merge,
    read_entries,
)

SIGNATURE = (1, 2, 3, 4)


@dataclass
class Row:
    name: str
    schema_name: str
    values: tuple[Any, ...] = (1,)


@dataclass
class Entry:
    name: str
    schema_name: str
    read_values: tuple[Any, ...]


class Factory:
    """Makes an entry of a row, counting the calls; a row whose values hold "bad" is refused."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def __call__(self, row: Row) -> Entry:
        self.made.append(row.name)
        if "bad" in row.values:
            raise ValueError("no schedule")
        return Entry(row.name, row.schema_name, row.values)


def values(row: Row) -> tuple[Any, ...]:
    return row.values


@pytest.fixture
def factory() -> Factory:
    return Factory()


def beat_errors(caplog: Any) -> list[str]:
    return [m for (logger, level, m) in caplog.record_tuples if level >= logging.ERROR]


# One schema read again --------------------------------------------------------------------


def test_a_row_read_again_unchanged_keeps_its_entry(factory: Factory) -> None:
    rows = [Row("same", "t1"), Row("edited", "t1")]
    entries, _ = read_entries("t1", rows, None, factory, values)
    previous = SchemaState(SIGNATURE, entries)
    again, rejected = read_entries(
        "t1", [Row("same", "t1"), Row("edited", "t1", (2,))], previous, factory, values
    )
    assert again["same"] is entries["same"]
    assert again["edited"] is not entries["edited"] and again["edited"].read_values == (2,)
    assert factory.made == ["same", "edited", "edited"]
    assert rejected == {}


def test_a_rejected_row_is_logged_once_while_unchanged(factory: Factory, caplog: Any) -> None:
    caplog.set_level(logging.ERROR, logger="celery.beat")
    bad = Row("job", "t1", ("bad",))
    entries, rejected = read_entries("t1", [bad], None, factory, values)
    assert (entries, rejected) == ({}, {"job": ("bad",)})
    assert beat_errors(caplog) == ["beat: Ignoring periodic task 'job' of schema 't1': no schedule"]
    # Read again unchanged: still rejected, no entry tried, nothing logged
    caplog.clear()
    again = read_entries("t1", [bad], SchemaState(SIGNATURE, entries, rejected), factory, values)
    assert again == ({}, {"job": ("bad",)})
    assert factory.made == ["job"] and beat_errors(caplog) == []
    # Fixed: an entry at last
    fixed, rejected = read_entries(
        "t1", [Row("job", "t1", (2,))], SchemaState(SIGNATURE, {}, rejected), factory, values
    )
    assert list(fixed) == ["job"] and rejected == {}


# The merge --------------------------------------------------------------------------------


def test_the_first_schema_wins_a_name_and_the_others_conflict() -> None:
    def state(schema_name: str, *names: str) -> SchemaState:
        return SchemaState(SIGNATURE, {n: Entry(n, schema_name, ()) for n in names})

    states = {
        "public": state("public", "a"),
        "t1": state("t1", "a", "b"),
        "t2": state("t2", "b", "c"),
    }
    schedule, conflicts = merge(states)
    assert {name: entry.schema_name for name, entry in schedule.items()} == {
        "a": "public",
        "b": "t1",
        "c": "t2",
    }
    assert conflicts == [Conflict("a", "public", "t1"), Conflict("b", "t1", "t2")]
    assert str(conflicts[0].error()) == (
        "duplicate periodic task name: 'a'. Previously seen in schema: 'public'."
    )
    assert merge({}) == ({}, [])


def test_schema_entries_log_each_conflict_of_a_merge(factory: Factory, caplog: Any) -> None:
    caplog.set_level(logging.ERROR, logger="celery.beat")
    schemas = SchemaEntries(factory, values)
    schemas.reload(
        {"t1": SIGNATURE, "t2": SIGNATURE},
        {"t1": [Row("dup", "t1")], "t2": [Row("dup", "t2"), Row("other", "t2")]},
    )
    schedule = schemas.merge()
    assert sorted(schedule) == ["dup", "other"] and schedule["dup"].schema_name == "t1"
    assert schemas.conflicts == [Conflict("dup", "t1", "t2")]
    assert caplog.record_tuples == [
        (
            "celery.beat",
            logging.ERROR,
            "beat: Duplicate periodic task name 'dup' in schemas 't1' and 't2': the task of "
            "'t1' is scheduled, the one of 't2' is not. Rename one of them.",
        )
    ]


# Reloads ----------------------------------------------------------------------------------


def test_a_reload_reads_some_schemas_keeps_the_others_and_drops_the_gone(
    factory: Factory,
) -> None:
    schemas = SchemaEntries(factory, values)
    schemas.reload(
        {"public": SIGNATURE, "t1": SIGNATURE, "t2": SIGNATURE},
        {"public": [], "t1": [Row("j1", "t1")], "t2": [Row("j2", "t2")]},
    )
    kept = schemas.states["t1"]
    # t2 changed, t3 came, and public went (say): t1 is not read
    edited = (1, 2, 3, 5)
    schemas.reload(
        {"t1": SIGNATURE, "t2": edited, "t3": SIGNATURE},
        {"t2": [Row("j2", "t2", (2,))], "t3": [Row("j3", "t3")]},
    )
    assert list(schemas.states) == ["t1", "t2", "t3"]
    assert schemas.states["t1"] is kept
    assert schemas.signatures() == {"t1": SIGNATURE, "t2": edited, "t3": SIGNATURE}
    assert schemas.states["t2"].entries["j2"].read_values == (2,)


def test_replace_and_add(factory: Factory) -> None:
    schemas = SchemaEntries(factory, values)
    schemas.reload({"public": SIGNATURE}, {"public": [Row("job", "public")]})
    old = schemas.states["public"].entries["job"]
    new = Entry("job", "public", (2,))
    schemas.replace(Entry("job", "public", (1,)), new)  # not the entry held: kept
    assert schemas.states["public"].entries["job"] is old
    schemas.replace(old, new)
    assert schemas.states["public"].entries["job"] is new
    schemas.add("public", {"static": Entry("static", "public", ())})
    schemas.add("unread", {"x": Entry("x", "unread", ())})  # a schema not read: ignored
    assert sorted(schemas.merge()) == ["job", "static"]
