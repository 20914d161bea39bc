"""A bounded LRU cache of decoded (and optionally downscaled) reference images for IQARAG.

The same bank references recur across queries (neighbouring queries retrieve the same hot items), so the IQARAG
scorer keeps their decoded RGB images — already downscaled when ``reference_max_side`` is set — instead of
opening, decoding and resizing the file again for every prompt. The cache is bounded both by the number of
entries and by the pixel bytes they hold (``width · height · 3``); the least recently used entries are evicted
first. Thread-safe (the HTTP service scores batches from several threads).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from lmmiqa.errors import ConfigError


@dataclass(frozen=True)
class CacheStats:
    """Counters of an :class:`ImageLRU`."""

    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int

    def to_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions, "entries": self.entries,
                "bytes": self.bytes}


def image_bytes(img: Any) -> int:
    """Approximate memory of an RGB PIL image (``width · height · bands``)."""
    w, h = img.size
    return int(w) * int(h) * len(img.getbands())


class ImageLRU:
    """LRU of images keyed by any hashable key, bounded by entry count and bytes.

    Args:
        max_items: most entries kept (0 disables the cache: every lookup loads).
        max_bytes: most pixel bytes kept; an image larger than this on its own is returned but not kept.
    """

    def __init__(self, max_items: int = 512, max_bytes: int = 512 * 1024 * 1024) -> None:
        if int(max_items) < 0 or int(max_bytes) < 0:
            raise ConfigError("cache limits must be >= 0")
        self.max_items = int(max_items)
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def get_or_load(self, key: Hashable, load: Callable[[], Any]) -> Any:
        """The cached image for ``key``, or ``load()`` (then cached when it fits). Exceptions of ``load`` propagate
        and nothing is cached."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self._hits += 1
                return self._data[key][0]
            self._misses += 1
        img = load()  # outside the lock: decoding is slow and other threads may hit meanwhile
        self.put(key, img)
        return img

    def put(self, key: Hashable, img: Any) -> None:
        """Insert (or refresh) an entry, evicting the least recently used ones to stay within bounds."""
        size = image_bytes(img)
        if self.max_items == 0 or size > self.max_bytes:
            return
        with self._lock:
            if key in self._data:
                self._bytes -= self._data.pop(key)[1]
            self._data[key] = (img, size)
            self._bytes += size
            while self._data and (len(self._data) > self.max_items or self._bytes > self.max_bytes):
                _, (_, old) = self._data.popitem(last=False)
                self._bytes -= old
                self._evictions += 1

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        with self._lock:
            self._data.clear()
            self._bytes = 0

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._evictions, len(self._data), self._bytes)
