"""ChangeCheck: when the database scheduler looks for changes, in memory with a fake clock."""

from __future__ import annotations

import pytest

from tenant_schemas_celery.change_check import ChangeCheck, PendingReload, stale_schemas

SIGNATURE = (1, 2, 3, 4)
EDITED = (1, 2, 4, 4)


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def check(clock: Clock) -> ChangeCheck:
    """A check whose schedule was fully read at the clock's start."""
    check = ChangeCheck(clock)
    check.begin_full_read()
    check.reloaded(PendingReload.every_schema("d0", {"public": SIGNATURE}))
    return check


def checks_in_tick(check: ChangeCheck, delay: float, tries: int = 3) -> int:
    """Run a tick that tries ``tries`` checks and returns ``delay``; return the checks due."""
    due: list[bool] = []

    def run() -> float:
        due.extend(check.check_due() for _ in range(tries))
        return delay

    assert check.tick(5.0, run) == delay
    return sum(due)


# Checks per tick --------------------------------------------------------------------------


def test_outside_a_tick_every_read_checks(check: ChangeCheck, clock: Clock) -> None:
    assert check.check_due() and check.check_due()
    clock.now += 1
    assert check.check_due()
    assert check.last_check == clock.now


def test_a_tick_after_a_sleep_checks_once(check: ChangeCheck) -> None:
    assert checks_in_tick(check, delay=10) == 1
    assert checks_in_tick(check, delay=10) == 1


def test_a_burst_of_due_entries_checks_every_check_interval(
    check: ChangeCheck, clock: Clock
) -> None:
    # Given a tick that sent (delay 0: beat ticks again without sleeping)
    assert checks_in_tick(check, delay=0) == 1
    # Then the next ticks of the burst do not check until check_interval has passed
    clock.now += 4.9
    assert checks_in_tick(check, delay=0) == 0
    clock.now += 0.1
    assert checks_in_tick(check, delay=0) == 1
    # And the first tick after a sleep checks whatever the time
    assert checks_in_tick(check, delay=10) == 0  # the burst's last tick: no check due
    assert checks_in_tick(check, delay=10) == 1


def test_a_tick_that_raises_ends_the_tick(check: ChangeCheck) -> None:
    def run() -> float:
        assert check.check_due()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        check.tick(5.0, run)
    assert check.check_due() and check.check_due()  # outside a tick again


# Full reads -------------------------------------------------------------------------------


def test_a_full_read_is_due_every_full_read_interval(check: ChangeCheck, clock: Clock) -> None:
    check.pending = PendingReload({"public": EDITED}, frozenset({"public"}), "d1")
    clock.now += 299
    check.check_due()
    assert not check.full_read_due(300)
    assert check.pending is not None
    clock.now += 1
    check.check_due()
    assert check.full_read_due(300)
    assert check.pending is None  # the full read replaces it


def test_only_a_full_read_restarts_the_interval(check: ChangeCheck, clock: Clock) -> None:
    start = check.last_full_read
    clock.now += 100
    check.check_due()
    check.reloaded(PendingReload({"public": EDITED}, frozenset({"public"}), "d1"))
    assert check.last_full_read == start
    check.begin_full_read()
    check.reloaded(PendingReload.every_schema("d2", {"public": EDITED}))
    assert check.last_full_read == clock.now


def test_force_full_read(check: ChangeCheck) -> None:
    check.check_due()
    assert not check.full_read_due(300)
    check.force_full_read()
    assert check.full_read_due(300)


# What a check found -----------------------------------------------------------------------


def test_no_change_records_the_digest(check: ChangeCheck) -> None:
    assert not check.changes_found("d1", {"public": SIGNATURE}, {"public": SIGNATURE})
    assert (check.digest, check.pending) == ("d1", None)


def test_changes_are_pending_until_reloaded(check: ChangeCheck) -> None:
    signatures = {"public": EDITED, "new": SIGNATURE}
    assert check.changes_found("d1", signatures, {"public": SIGNATURE, "gone": SIGNATURE})
    assert check.digest == "d0"  # the schedule does not reflect d1 yet
    pending = check.take_pending()
    assert pending == PendingReload(signatures, frozenset({"public", "new", "gone"}), "d1")
    assert pending.reading == ["public", "new"]  # a schema gone is not read
    assert check.take_pending() is None
    check.reloaded(pending)
    assert check.digest == "d1"


def test_a_failed_read_makes_the_next_tick_check(check: ChangeCheck, clock: Clock) -> None:
    assert checks_in_tick(check, delay=0) == 1
    check.read_failed()
    assert check.last_check == -float("inf")
    assert checks_in_tick(check, delay=0) == 1  # in the burst, yet due


def test_a_full_reload_reads_every_schema_in_order() -> None:
    reload = PendingReload.every_schema("d", {"public": SIGNATURE, "b": SIGNATURE, "a": EDITED})
    assert reload.full and reload.reading == ["public", "b", "a"]


def test_stale_schemas() -> None:
    known = {"public": SIGNATURE, "a": SIGNATURE, "gone": SIGNATURE}
    found = {"public": SIGNATURE, "a": EDITED, "new": SIGNATURE}
    assert stale_schemas(found, known) == {"a", "new", "gone"}
    assert stale_schemas(known, known) == frozenset()
