import pytest

from pcjax.cache.null_cache import NullCache
from pcjax.cache.page_pool import PagePool


def test_null_cache_holds_nothing_and_returns_every_page_as_a_duplicate():
    pool, cache = PagePool(9), NullCache(2)
    m = cache.match("abcd", max_tokens=3)
    assert m.pages == [] and m.num_tokens == 0 and m.node is cache.root
    cache.lock(m.node)
    pages = pool.allocate(2)
    r = cache.insert("abcd", pages)
    assert r.num_existing_tokens == 0 and r.duplicate_pages == pages and r.node is cache.root
    pool.free(r.duplicate_pages)  # the engine's usual step returns every page
    cache.unlock(m.node)
    assert pool.num_free == pool.capacity and cache.path_pages(r.node) == []
    assert cache.match("abcd").num_tokens == 0
    assert cache.evict(10) == 0
    assert (cache.num_cached_pages, cache.num_evictable_pages, cache.num_locked_pages) == (0, 0, 0)
    cache.reset()
    cache.check_integrity()
    pool.check_integrity()


def test_null_cache_checks_arguments_like_the_tree():
    cache = NullCache(2)
    with pytest.raises(ValueError, match="len"):
        cache.insert("abc", [1])
    with pytest.raises(ValueError, match="max_tokens"):
        cache.match("ab", max_tokens=-1)
    with pytest.raises(ValueError, match="handle"):
        cache.lock(NullCache(2).root)
    with pytest.raises(ValueError, match="page_size"):
        NullCache(0)
