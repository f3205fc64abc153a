"""A bounded, thread-safe LRU mapping with hit and miss counts."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator, MutableMapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(MutableMapping[K, V], Generic[K, V]):
    """At most ``maxsize`` entries; inserting past it evicts the least recently used.

    A lookup is ``key in cache`` or ``cache.get(key)``: both count a hit or a miss and refresh a
    hit's recency, so what a caller just checked survives the inserts that follow (the
    ``ICGPipeline`` feature cache checks every item of a batch, then inserts the missing ones,
    then reads them all: with ``maxsize`` at least the batch's item count, nothing it needs is
    evicted in between).

    Args:
        maxsize: the largest number of entries; 0 stores nothing.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError(f"maxsize: expected >= 0, got {maxsize}")
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)  # type: ignore[arg-type]
                self.hits += 1
                return True
            self.misses += 1
            return False

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        """The value of ``key`` (counted as a hit, made most recent), else ``default``."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return default

    def __getitem__(self, key: K) -> V:
        with self._lock:
            self._data.move_to_end(key)
            return self._data[key]

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            if self.maxsize == 0:
                return
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __delitem__(self, key: K) -> None:
        with self._lock:
            del self._data[key]

    def __iter__(self) -> Iterator[K]:
        with self._lock:
            return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
