"""``SimpleCache``: TTL, per-reader max age, bound, sharing and thread safety."""

from __future__ import annotations

import threading

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


def test_concurrent_writers_keep_the_bound():
    cache = SimpleCache(max_entries=50)

    def write(offset: int) -> None:
        for i in range(2000):
            cache.set((offset, i), i, 60)
            cache.get((offset, i - 1))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) <= 50
