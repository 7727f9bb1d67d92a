"""The entries of each schema, and how they merge into one schedule.

``TenantAwareDatabaseScheduler`` keeps one ``SchemaState`` per schema (public, then the
tenants by name): its change signature, the entries of its enabled rows, and the rows
that could not be made entries. A reload reads only some schemas again; there, a row
read again unchanged keeps its entry (no entry is built again for it), and a rejected
row read again unchanged stays rejected without being logged again.

The merge puts every schema's entries into one schedule. Names must be unique across
schemas: for a name held by several, the first schema's entry is scheduled and each
other one is a ``Conflict``.

Pure logic: rows and entries are whatever the entry factory takes and makes (the
scheduler's are ``PeriodicTask`` rows and ``TenantAwareModelEntry`` objects).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .change_check import Signature
from .scheduler import logger

__all__ = [
    "Conflict",
    "SchemaEntries",
    "SchemaEntry",
    "SchemaState",
    "merge",
    "read_entries",
]


class SchemaEntry(Protocol):
    """What the merge needs of an entry: its name, schema, and the values it was made from."""

    name: str
    schema_name: str
    read_values: Any


class Row(Protocol):
    """What the merge needs of a row: its name (the entry's)."""

    name: str


@dataclass
class SchemaState:
    """What the scheduler knows of one schema: its change signature, its entries, and the
    values of its rows that could not be made entries (logged once)."""

    signature: Signature
    entries: dict[str, Any]
    rejected: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Conflict:
    """Two schemas hold a periodic task of the same name; the first one's is scheduled."""

    name: str
    first_schema: str
    second_schema: str

    def error(self) -> ValueError:
        """Return the ``ValueError`` that ``TenantAwareDatabaseScheduler.schedule`` raises."""
        return ValueError(
            f"duplicate periodic task name: {self.name!r}. "
            f"Previously seen in schema: {self.first_schema!r}."
        )

    def log(self) -> None:
        """Log the conflict as an error on Celery's beat logger."""
        logger.error(
            "beat: Duplicate periodic task name %r in schemas %r and %r: the task of %r "
            "is scheduled, the one of %r is not. Rename one of them.",
            self.name,
            self.first_schema,
            self.second_schema,
            self.first_schema,
            self.second_schema,
        )


def read_entries(
    schema_name: str,
    rows: Iterable[Any],
    previous: SchemaState | None,
    make_entry: Callable[[Any], Any],
    values: Callable[[Any], Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the entries of the ``rows`` of ``schema_name``, and the values of those rejected.

    Parameters:
        previous(SchemaState | None): the schema's state before this read.
        make_entry(Callable): makes a row's entry (whose ``read_values`` are the row's
            ``values``); any exception rejects the row, logged as an error.
        values(Callable): a row's values, compared with those of the previous read.

    A row read again unchanged keeps its entry; a rejected row read again unchanged
    stays rejected, without being logged again.
    """
    known = previous.entries if previous is not None else {}
    was_rejected = previous.rejected if previous is not None else {}
    entries: dict[str, Any] = {}
    rejected: dict[str, Any] = {}
    for row in rows:
        row_values = values(row)
        kept = known.get(row.name)
        if kept is not None and kept.read_values == row_values:
            entries[row.name] = kept
        elif was_rejected.get(row.name) == row_values:
            rejected[row.name] = row_values
        else:
            try:
                entries[row.name] = make_entry(row)
            except Exception as exc:
                rejected[row.name] = row_values
                logger.error(
                    "beat: Ignoring periodic task %r of schema %r: %s",
                    row.name,
                    schema_name,
                    exc,
                    exc_info=True,
                )
    return entries, rejected


def merge(states: Mapping[str, SchemaState]) -> tuple[dict[str, Any], list[Conflict]]:
    """Return the schedule (name to entry) of every schema's entries, and the conflicts.

    The schemas are taken in the order of ``states``: for a name held by several, the
    first one's entry is scheduled.
    """
    schedule: dict[str, Any] = {}
    seen: dict[str, str] = {}
    conflicts: list[Conflict] = []
    for schema_name, state in states.items():
        for name, entry in state.entries.items():
            first = seen.setdefault(name, schema_name)
            if first == schema_name:
                schedule[name] = entry
            else:
                conflicts.append(Conflict(name, first, schema_name))
    return schedule, conflicts


class SchemaEntries:
    """The state of every schema in schedule order, and the conflicts of their last merge.

    Parameters:
        make_entry(Callable): makes a row's entry (see ``read_entries``).
        values(Callable): a row's values, to tell a row read again unchanged.

    Attributes:
        states(dict[str, SchemaState]): by schema, in schedule order (public, then the
            tenants by name).
        conflicts(list[Conflict]): the duplicate names found by the last ``merge()``.
    """

    def __init__(self, make_entry: Callable[[Any], Any], values: Callable[[Any], Any]) -> None:
        self.make_entry = make_entry
        self.values = values
        self.states: dict[str, SchemaState] = {}
        self.conflicts: list[Conflict] = []

    def signatures(self) -> dict[str, Signature]:
        """Return each schema's signature, as of its last read."""
        return {name: state.signature for name, state in self.states.items()}

    def reload(
        self, signatures: Mapping[str, Signature], rows: Mapping[str, Sequence[Row]]
    ) -> None:
        """Take the ``rows`` read again (by schema); keep the other schemas' entries.

        ``signatures`` lists every schema still there, in schedule order: the states
        follow it, and those of schemas not in it are dropped.
        """
        self.install(signatures, self.read(signatures, rows))

    def read(
        self, signatures: Mapping[str, Signature], rows: Mapping[str, Sequence[Row]]
    ) -> dict[str, SchemaState]:
        """Return the new state of each schema of ``rows``, without installing them.

        It only reads the current states (rows read again unchanged keep their entries):
        a thread other than the beat loop's may call it.
        """
        states = {}
        for name, schema_rows in rows.items():
            entries, rejected = read_entries(
                name, schema_rows, self.states.get(name), self.make_entry, self.values
            )
            states[name] = SchemaState(signatures[name], entries, rejected)
        return states

    def install(
        self, signatures: Mapping[str, Signature], states: Mapping[str, SchemaState]
    ) -> None:
        """Take the schemas' new ``states``; keep the other schemas' own, in the order of
        ``signatures``, and drop those of schemas not in it."""
        merged = {**self.states, **states}
        self.states = {name: merged[name] for name in signatures if name in merged}

    def add(self, schema_name: str, entries: Mapping[str, Any]) -> None:
        """Add ``entries`` to the schema's own, if the schema was read."""
        state = self.states.get(schema_name)
        if state is not None:
            state.entries.update(entries)

    def replace(self, old: SchemaEntry, new: SchemaEntry) -> None:
        """Keep ``new`` (``old`` advanced to its next run) in place of ``old``."""
        state = self.states.get(new.schema_name)
        if state is not None and state.entries.get(new.name) is old:
            state.entries[new.name] = new

    def merge(self) -> dict[str, Any]:
        """Return the merged schedule (see ``merge``); log each conflict, keep them."""
        schedule, self.conflicts = merge(self.states)
        for conflict in self.conflicts:
            conflict.log()
        return schedule
