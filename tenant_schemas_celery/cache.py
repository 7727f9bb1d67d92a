"""A small thread-safe TTL cache, and the process-wide cache of tenant objects."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any, NamedTuple

#: Default bound on the number of entries of a ``SimpleCache``.
DEFAULT_MAX_ENTRIES = 10_000


class _Entry(NamedTuple):
    value: Any
    stored_at: float
    expires_at: float


class SimpleCache:
    """A bounded, thread-safe key/value cache whose entries expire.

    Parameters:
        storage(MutableMapping | None): the mapping holding the entries; pass the
            same mapping to several instances to share them. A new dict by default.
        max_entries(int): the bound; when it is reached, expired entries are dropped
            first, then the oldest ones. Defaults to 10,000.

    Example:
        >>> cache = SimpleCache()
        >>> cache.set("tenant1", "object", expire_seconds=30)
        >>> cache.get("tenant1")
        'object'
        >>> cache.get("other", "missing")
        'missing'
    """

    def __init__(
        self,
        storage: MutableMapping[Any, Any] | None = None,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries!r}")
        self.storage: MutableMapping[Any, Any] = {} if storage is None else storage
        self.max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, key: Any, default: Any = None, max_age: float | None = None) -> Any:
        """Return the value stored under ``key``, or ``default`` if absent or expired.

        Parameters:
            max_age(float | None): also treat the entry as absent when it was
                stored more than ``max_age`` seconds ago.
        """
        entry = self.storage.get(key)
        if entry is None:
            return default
        now = time.monotonic()
        if now >= entry.expires_at or (max_age is not None and now - entry.stored_at >= max_age):
            return default
        return entry.value

    def set(self, key: Any, value: Any, expire_seconds: float) -> None:
        """Store ``value`` under ``key`` for ``expire_seconds`` seconds."""
        now = time.monotonic()
        with self._lock:
            self.storage.pop(key, None)
            if len(self.storage) >= self.max_entries:
                self._make_room(now)
            self.storage[key] = _Entry(value, now, now + expire_seconds)

    def delete(self, key: Any) -> None:
        """Drop the entry stored under ``key``, if any."""
        with self._lock:
            self.storage.pop(key, None)

    def discard_where(self, predicate: Callable[[Any], bool]) -> int:
        """Drop every entry whose value satisfies ``predicate``; return how many."""
        with self._lock:
            doomed = [key for key, entry in self.storage.items() if predicate(entry.value)]
            for key in doomed:
                del self.storage[key]
        return len(doomed)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self.storage.clear()

    def __len__(self) -> int:
        return len(self.storage)

    def _make_room(self, now: float) -> None:
        expired = [key for key, entry in self.storage.items() if entry.expires_at <= now]
        for key in expired:
            del self.storage[key]
        while len(self.storage) >= self.max_entries:
            del self.storage[next(iter(self.storage))]


#: The tenant objects shared by every task of this process, keyed by schema name.
tenant_cache = SimpleCache()
