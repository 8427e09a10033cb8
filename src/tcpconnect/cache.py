"""The one cache of the reader's hot path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Entries a cache keeps by default: a traced host repeats few processes,
# peers and cgroups, so this many rarely fill.
CACHE_SIZE = 4096


class BoundedCache(dict):
    """value = cache[key], made by `make` on a miss; emptied when it holds
    `size` entries, which is cheaper than LRU bookkeeping on every hit
    (cachetools' LRUCache costs a hit several dict operations; here a hit
    is one dict lookup, and the rows of a busy host are nearly all hits)."""

    def __init__(self, make: Callable[[Any], Any] | None = None, size: int = CACHE_SIZE) -> None:
        """Without `make`, values come only from put() and a miss is a
        KeyError (get() gives None)."""
        super().__init__()
        self._make = make
        self._size = size

    def __missing__(self, key: Any) -> Any:
        if self._make is None:
            raise KeyError(key)
        value = self._make(key)
        self.put(key, value)
        return value

    def put(self, key: Any, value: Any) -> None:
        """Keeps a value made elsewhere, within the same bound."""
        if key not in self and len(self) >= self._size:
            self.clear()
        self[key] = value
