"""Randomised isolation runs: random task mixes over many tenants, checked for misrouting.

Used by ``tests/test_isolation.py`` (short, seeded) and ``bench/soak.py`` (long).
Every probe run records the schema it saw and the marker rows it could see; a run is
misrouted if either is not its sender's, and lost if an expected run never recorded.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from celery import chain, chord, group
from django_tenants.utils import schema_context

from tests.project.notes.models import Note
from tests.project.notes.tasks import PROBES_KEY, events, probe, probe_collect

RUNNING_KINDS = ["ok", "ok", "ok", "exc", "retry", "reject", "eager", "chain", "group", "chord"]
FAILING_KINDS = ["deleted", "malformed"]
SOFT_LIMIT = 1.0  # seconds, for the "soft" kind only (its body sleeps 10 s)
MALFORMED = [123, "", "x" * 64, 'x"; DROP SCHEMA public; --', "pg_toast", ["a"], False]


@dataclass
class Run:
    sent: int = 0
    expected: dict[str, str] = field(default_factory=dict)  # token -> schema it must run in
    expected_records: Counter[str] = field(default_factory=Counter)
    must_fail: list[Any] = field(default_factory=list)  # results that must fail, body unrun
    forbidden: set[str] = field(default_factory=set)  # tokens whose body must never run
    kinds: dict[str, str] = field(default_factory=dict)  # token -> kind it was sent as
    prefix: str = ""  # of every token: records of an earlier run's late tasks are not ours


@dataclass
class Summary:
    sent: int
    run: int
    misrouted: int
    lost: int
    unexpected: int
    duration: float
    problems: list[str] = field(default_factory=list)  # "lost|misrouted token kind schema"

    def line(self) -> str:
        return (
            f"sent={self.sent} run={self.run} misrouted={self.misrouted} lost={self.lost} "
            f"unexpected={self.unexpected} duration={self.duration:.1f}s"
        )


def prepare(schemas: list[str]) -> None:
    """Give each schema exactly one marker row, and clear probe rows and records."""
    for schema_name in schemas:
        with schema_context(schema_name):
            Note.objects.all().delete()
            Note.objects.create(text=f"marker:{schema_name}")
    events().delete(PROBES_KEY)


def send_random(
    rng: random.Random, steps: int, schemas: list[str], deleted: str, soft: bool = False,
    prefix: str = "",
) -> Run:  # fmt: skip
    """Send ``steps`` random probes (and canvases) from random schemas, tokens ``prefix...``."""
    run = Run(prefix=prefix)
    kinds = RUNNING_KINDS + FAILING_KINDS + (["soft"] if soft else [])
    for step in range(steps):
        kind, schema_name = rng.choice(kinds), rng.choice(schemas)
        token = f"{prefix}t{step}"
        with schema_context(schema_name):
            _send_one(run, rng, kind, schema_name, token, schemas, deleted)
    return run


def _send_one(
    run: Run, rng: random.Random, kind: str, schema_name: str, token: str,
    schemas: list[str], deleted: str,
) -> None:  # fmt: skip
    run.sent += 1
    if kind in ("deleted", "malformed"):
        header = deleted if kind == "deleted" else rng.choice(MALFORMED)
        run.must_fail.append(probe.apply_async((token,), headers={"_schema_name": header}))
        run.forbidden.add(token)
        return
    if kind in ("chain", "group", "chord"):
        tokens = [f"{token}.{i}" for i in range(3)]
        if kind == "chain":
            chain(*(probe.si(t) for t in tokens)).delay()
        elif kind == "group":
            group(probe.si(t) for t in tokens).delay()
        else:
            tokens.append(f"{token}.body")
            chord(probe.si(t) for t in tokens[:3])(probe_collect.s(tokens[3]))
        for t in tokens:
            _expect(run, t, schema_name, kind=kind)
        return
    inner = rng.choice(schemas)
    probe.apply_async((token, kind, inner), soft_time_limit=SOFT_LIMIT if kind == "soft" else None)
    _expect(run, token, schema_name, 2 if kind == "retry" else 1, kind)
    if kind == "eager":
        _expect(run, f"{token}:inner", inner, kind=kind)
        _expect(run, f"{token}:after", schema_name, kind=kind)


def _expect(run: Run, token: str, schema_name: str, records: int = 1, kind: str = "") -> None:
    run.expected[token] = schema_name
    run.expected_records[token] = records
    run.kinds[token] = kind


def collect(run: Run, timeout: float, started: float) -> Summary:
    """Wait for every expected record (or the timeout) and compare with what ran."""
    deadline = time.monotonic() + timeout
    records: dict[str, list[dict]] = defaultdict(list)
    while True:
        records.clear()
        for raw in events().lrange(PROBES_KEY, 0, -1):
            record = json.loads(raw)
            if record["token"].startswith(run.prefix):
                records[record["token"]].append(record)
        done = all(len(records[t]) >= n for t, n in run.expected_records.items())
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for result in run.must_fail:
        result.wait(timeout=max(1.0, deadline - time.monotonic()), propagate=False)
    misrouted = sum(
        1
        for token, schema_name in run.expected.items()
        for record in records[token]
        if record["schema"] != schema_name or record["visible"] != [f"marker:{schema_name}"]
    )
    misrouted += sum(len(records[t]) for t in run.forbidden)
    lost = sum(1 for t, n in run.expected_records.items() if len(records[t]) < n)
    unexpected = sum(
        1 for token in records if token not in run.expected and token not in run.forbidden
    )
    problems = [
        f"lost {token} {run.kinds.get(token)} {schema_name}"
        for token, schema_name in run.expected.items()
        if len(records[token]) < run.expected_records[token]
    ] + [
        f"misrouted {token} {run.kinds.get(token)} {schema_name}: {record}"
        for token, schema_name in run.expected.items()
        for record in records[token]
        if record["schema"] != schema_name or record["visible"] != [f"marker:{schema_name}"]
    ]
    return Summary(
        sent=run.sent,
        run=sum(len(v) for v in records.values()),
        misrouted=misrouted,
        lost=lost,
        unexpected=unexpected,
        duration=time.monotonic() - started,
        problems=problems,
    )


def probe_rows_outside_their_schema(run: Run, schemas: list[str]) -> list[str]:
    """Probe rows written in a schema other than the one their token was sent for."""
    wrong = []
    for schema_name in schemas:
        with schema_context(schema_name):
            for text in Note.objects.filter(text__startswith="probe:").values_list(
                "text", flat=True
            ):
                token = text.removeprefix("probe:")
                if token.startswith(run.prefix) and run.expected.get(token) != schema_name:
                    wrong.append(f"{schema_name}:{token}")
    return wrong
