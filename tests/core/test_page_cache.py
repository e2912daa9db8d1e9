"""The API's cache of finished jobs' structure pages: least recently used out, bounded."""

from __future__ import annotations

from app.page_cache import PageCache


def test_least_recently_used_pages_leave_first_and_the_size_stays_bounded() -> None:
    cache = PageCache(max_bytes=100)
    for k in "abcd":
        cache.put(k, b"x" * 20)
    assert cache.get("a") == b"x" * 20  # a is now the most recently used
    cache.put("e", b"y" * 25)  # 105 bytes: the least recently used (b) goes
    assert cache.get("b") is None and cache.get("a") is not None
    assert cache.size <= 100 and len(cache) == 4
    assert (cache.hits, cache.misses) == (2, 1)


def test_a_page_too_large_for_a_quarter_of_the_cache_is_not_kept() -> None:
    cache = PageCache(max_bytes=100)
    cache.put("small", b"s" * 10)
    cache.put("big", b"b" * 26)
    assert cache.get("big") is None and cache.get("small") == b"s" * 10


def test_replacing_a_page_counts_its_size_once() -> None:
    cache = PageCache(max_bytes=100)
    cache.put("a", b"1" * 20)
    cache.put("a", b"2" * 10)
    assert cache.size == 10 and cache.get("a") == b"2" * 10
