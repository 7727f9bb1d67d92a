"""``SimpleCache``: TTL, per-reader max age, bound, sharing and thread safety."""

from __future__ import annotations

import threading
import time

import pytest

from tenant_schemas_celery import cache as cache_module
from tenant_schemas_celery.cache import SimpleCache


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(cache_module.time, "monotonic", lambda: now[0])
    return now


def test_get_set_and_expiry(clock):
    cache = SimpleCache()
    cache.set("a", 1, expire_seconds=10)
    assert cache.get("a") == 1
    clock[0] += 9.9
    assert cache.get("a") == 1
    clock[0] += 0.1
    assert cache.get("a") is None
    assert cache.get("a", "dflt") == "dflt"


def test_reader_max_age_is_honoured(clock):
    cache = SimpleCache()
    cache.set("a", 1, expire_seconds=300)
    clock[0] += 20
    assert cache.get("a", max_age=30) == 1
    assert cache.get("a", max_age=10) is None


def test_bound_drops_expired_then_oldest(clock):
    cache = SimpleCache(max_entries=3)
    cache.set("short", 0, expire_seconds=1)
    cache.set("b", 1, expire_seconds=100)
    cache.set("c", 2, expire_seconds=100)
    clock[0] += 2
    cache.set("d", 3, expire_seconds=100)  # evicts the expired entry only
    assert (cache.get("b"), cache.get("c"), cache.get("d")) == (1, 2, 3)
    cache.set("e", 4, expire_seconds=100)  # evicts the oldest
    assert cache.get("b") is None
    assert len(cache) == 3


def test_shared_storage_delete_discard_clear():
    storage: dict = {}
    first, second = SimpleCache(storage), SimpleCache(storage)
    first.set("a", 1, 30)
    first.set("b", 2, 30)
    assert second.get("a") == 1
    second.delete("a")
    assert first.get("a") is None
    assert first.discard_where(lambda value: value == 2) == 1
    first.set("c", 3, 30)
    first.clear()
    assert len(second) == 0


def test_invalid_bound_is_refused():
    with pytest.raises(ValueError, match="max_entries"):
        SimpleCache(max_entries=0)


class SlowStorage(dict):
    """A dict slow to report its size: concurrent writers all read it before any of them writes."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.slow = False

    def __len__(self) -> int:
        size = super().__len__()
        if self.slow:
            time.sleep(0.01)
        return size

    def __setitem__(self, key: object, value: object) -> None:
        super().__setitem__(key, value)
        self.largest = max(self.largest, super().__len__())


def test_concurrent_writers_never_exceed_the_bound():
    # Given a cache one entry short of its bound
    storage = SlowStorage()
    cache = SimpleCache(storage, max_entries=10)
    for i in range(9):
        cache.set(i, i, 60)
    # When eight threads each store a new entry at the same moment
    storage.slow = True
    start = threading.Barrier(8)
    errors: list[Exception] = []

    def write(key: str) -> None:
        start.wait()
        try:
            cache.set(key, key, 60)
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f"new{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then the bound held at every moment, and the newest entries are the ones kept
    assert errors == []
    assert storage.largest == len(cache) == 10
    assert all(cache.get(f"new{n}") == f"new{n}" for n in range(8))
