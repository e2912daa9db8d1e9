"""Serialized structure pages of finished jobs, kept in memory per API process.

A finished job's structures never change again (ranks, flags and scores are written once, at
the end), so a page of one is the same bytes for every reader until the job is purged. Lab
clients page through and re-read such jobs; this skips the two queries and the JSON encoding
of about 220 KiB per 100 structures. Each request still checks the job's owner and state in
the database, so a purged job is a 404 at once and a page is never served to another key.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable


class PageCache:
    """A least-recently-used map of page key to JSON bytes, bounded by total size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._pages: OrderedDict[Hashable, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            page = self._pages.get(key)
            if page is None:
                self.misses += 1
                return None
            self._pages.move_to_end(key)
            self.hits += 1
            return page

    def put(self, key: Hashable, page: bytes) -> None:
        if len(page) > self.max_bytes // 4:
            return  # one page must not push out most of the others
        with self._lock:
            old = self._pages.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._pages[key] = page
            self._size += len(page)
            while self._size > self.max_bytes:
                _, dropped = self._pages.popitem(last=False)
                self._size -= len(dropped)

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._pages)
