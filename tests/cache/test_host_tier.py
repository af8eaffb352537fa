"""RadixTree with a host tier: residency, offload / load bookkeeping and eviction across tiers."""

import numpy as np
import pytest

from pcjax.cache.page_pool import PagePool, PageState, PoolExhaustedError
from pcjax.cache.radix_tree import RadixTree
from tests.cache.tree_utils import cache_request, check, path_tokens, tier_contents


def make_tiered(page_size=1, device=3, host=3, **kw) -> RadixTree:
    return RadixTree(PagePool(device + 1), page_size, host_pool=PagePool(host + 1), **kw)


def checked(tree):
    check(tree)
    tree.host_pool.check_integrity()
    return tree


def insert_fresh(tree, tokens):
    pages = tree.pool.allocate(len(tokens) // tree.page_size)
    return pages, tree.insert(tokens, pages)


def test_the_worked_example_of_the_module_docstring():
    tree = make_tiered()
    insert_fresh(tree, "abc")
    assert tree.evict(1) == 1 and tree.drain_offloads() == [(3, 1)]
    assert tier_contents(tree) == {
        ("a",): (1, None),
        tuple("ab"): (2, None),
        tuple("abc"): (None, 1),
    }
    assert tree.evict(2) == 2 and tree.drain_offloads() == [(1, 2), (2, 3)]
    m = tree.match("abcd")
    assert (m.pages, m.num_tokens, m.node, m.host_slots) == ([], 0, tree.root, [2, 3, 1])
    assert path_tokens(m.host_node) == tuple("abc")
    tree.lock(m.host_node)
    assert tree.load(m.host_node) == [(2, 2), (3, 1), (1, 3)]
    assert tree.path_pages(m.host_node) == [2, 1, 3]
    tree.unlock(m.host_node)
    checked(tree)
    assert tree.evict(3) == 3 and tree.drain_offloads() == []
    assert tree.num_cached_pages == 0 and tree.num_host_pages == 3
    checked(tree)


def test_a_match_reports_the_device_part_then_the_host_part():
    tree = make_tiered(page_size=2, device=4, host=4)
    insert_fresh(tree, "abcdef")
    tree.evict(2)  # the tail "cdef" moves to the host
    m = tree.match("abcdefgh")
    assert m.pages == [1] and m.num_tokens == 2 and path_tokens(m.node) == tuple("ab")
    assert m.host_slots == [1, 2] and path_tokens(m.host_node) == tuple("abcdef")
    m = tree.match("abcdxx")  # ends inside the host node: it is split
    assert m.host_slots == [1] and path_tokens(m.host_node) == tuple("abcd")
    checked(tree)


def test_insert_gives_host_only_nodes_the_recomputed_pages():
    tree = make_tiered(device=4, host=4)
    insert_fresh(tree, "abc")
    tree.evict(3)
    tree.drain_offloads()
    new = tree.pool.allocate(4)  # a request that recomputed "abc" and one more token
    r = tree.insert("abcd", new)
    assert r.duplicate_pages == [] and r.num_existing_tokens == 3
    assert tier_contents(tree)[tuple("abc")] == (new[2], 3)  # both tiers now
    assert tree.path_pages(r.node) == new
    assert tree.drain_offloads() == []  # the host copy was there already
    checked(tree)


def test_write_through_copies_on_insert_and_eviction_then_copies_nothing():
    tree = make_tiered(write_through=True)
    pages, r = insert_fresh(tree, "abc")
    assert tree.drain_offloads() == list(zip(pages, [1, 2, 3], strict=True))
    assert r.node.host_slots == [1, 2, 3]
    assert tree.evict(3) == 3 and tree.drain_offloads() == []
    assert tree.match("abc").host_slots == [1, 2, 3]
    checked(tree)


def test_host_eviction_keeps_the_device_copy_of_a_node_on_both_tiers():
    tree = make_tiered(device=4, host=2, write_through=True)
    insert_fresh(tree, "ab")  # on both tiers, host full
    insert_fresh(tree, "x")  # needs a slot: the host tail of "ab" goes, its device copy stays
    contents = tier_contents(tree)
    assert contents[("a",)] == (1, 1) and contents[tuple("ab")] == (2, None)
    assert contents[("x",)] == (3, 2)
    checked(tree)


def test_a_full_host_of_locked_nodes_makes_eviction_drop_pages():
    tree = make_tiered(device=4, host=2, write_through=True)
    _, r = insert_fresh(tree, "ab")
    tree.lock(r.node)  # its host slots are pinned too
    tree.drain_offloads()
    insert_fresh(tree, "xy")  # no host room: stays on device only
    assert tier_contents(tree)[tuple("xy")] == (4, None)
    assert tree.evict(2) == 2 and tree.drain_offloads() == []
    assert tuple("xy") not in tier_contents(tree) and tree.num_host_pages == 2
    tree.unlock(r.node)
    checked(tree)


def test_dropping_a_device_node_drops_its_host_only_descendants():
    tree = make_tiered(device=3, host=1)
    insert_fresh(tree, "abc")
    tree.evict(1)  # "c" -> the only host slot
    tree.drain_offloads()
    assert tree.evict(2) == 2  # "ab" cannot fit the host; "c" would be unreachable without it
    assert tree.drain_offloads() == [] and tier_contents(tree) == {}
    assert tree.num_host_pages == 0 and tree.host_pool.num_free == 1
    checked(tree)


def test_load_needs_a_lock_and_free_pages():
    tree = make_tiered(device=2, host=2)
    insert_fresh(tree, "ab")
    tree.evict(2)
    tree.drain_offloads()
    m = tree.match("abc")
    with pytest.raises(ValueError, match="lock"):
        tree.load(m.host_node)
    with pytest.raises(ValueError, match="not on device"):
        tree.path_pages(m.host_node)
    tree.lock(m.host_node)
    tree.pool.allocate(1)
    with pytest.raises(PoolExhaustedError):
        tree.load(m.host_node)
    assert tree.num_cached_pages == 0  # unchanged
    checked(tree)


def test_reset_drops_both_tiers_but_keeps_locked_paths():
    tree = make_tiered(device=6, host=6, write_through=True)
    r = cache_request(tree, "abc")
    cache_request(tree, "xyz")
    tree.evict(3)
    tree.lock(r.node)
    tree.reset()
    assert tier_contents(tree).keys() == {("a",), tuple("ab"), tuple("abc")}
    tree.unlock(r.node)
    tree.reset()
    assert tree.num_cached_pages == tree.num_host_pages == 0
    assert tree.host_pool.num_free == tree.host_pool.capacity
    checked(tree)


def test_the_host_store_stays_within_capacity_and_frees_everything_under_churn():
    rng = np.random.default_rng(0)
    tree = make_tiered(page_size=2, device=12, host=7)
    for _ in range(300):
        tokens = rng.integers(0, 3, 2 * int(rng.integers(1, 6))).tolist()
        m = tree.match(tokens)
        tree.lock(m.host_node)
        node = m.host_node
        short = len(m.host_slots) - tree.pool.num_free
        if short <= 0 or tree.evict(short) == short:
            tree.load(m.host_node)
        else:
            tree.lock(m.node)
            tree.unlock(node)
            node = m.node
        need = len(tokens) // 2 - len(tree.path_pages(node))
        tree.evict(max(0, need - tree.pool.num_free))
        r = tree.insert(tokens, tree.path_pages(node) + tree.pool.allocate(need))
        tree.pool.free(r.duplicate_pages)
        tree.unlock(node)
        tree.drain_offloads()
        assert tree.host_pool.num_cached == tree.num_host_pages <= 7
        checked(tree)
    assert tree.num_host_pages > 0
    tree.reset()
    assert tree.host_pool.num_free == 7 and tree.pool.num_free == 12


def test_write_through_needs_a_host_tier():
    with pytest.raises(ValueError, match="host"):
        RadixTree(PagePool(4), 1, write_through=True)


def test_integrity_catches_a_broken_host_counter_and_a_device_node_under_a_host_one():
    tree = make_tiered()
    insert_fresh(tree, "ab")
    tree.evict(1)
    tree._num_host += 1
    with pytest.raises(AssertionError):
        tree.check_integrity()
    tree._num_host -= 1
    check(tree)
    parent = tree.match("ab").node  # "a", on device
    child = next(iter(parent.children.values()))  # "b", host only
    parent.pages, child.pages = [], parent.pages  # "b" on device under a host-only "a"
    with pytest.raises(AssertionError):
        tree.check_integrity()
    assert tree.pool.state[child.pages[0]] == PageState.CACHED


@pytest.mark.parametrize("policy", ["slru", "s3fifo", "gdsf", "deadline", "learned_hold"])
def test_stateful_policies_split_and_rank_host_only_nodes(policy):
    """A match ending inside a host-only node splits it: policies must size it by num_pages."""
    tree = make_tiered(page_size=2, device=4, host=4, policy=policy)
    insert_fresh(tree, "abcdef")
    assert tree.evict(3) == 3  # "abcdef" now lives on the host only
    tree.drain_offloads()
    m = tree.match("abcX")  # ends after "ab": splits the host-only node
    assert m.num_tokens == 0 and len(m.host_slots) == 1
    prefix, suffix = m.host_node, next(iter(m.host_node.children.values()))
    per_page_ids = policy in ("s3fifo", "deadline", "learned_hold")  # state follows the device
    if per_page_ids:
        assert len(prefix.policy_data[2]) == len(prefix.pages) == 0
        assert len(suffix.policy_data[2]) == len(suffix.pages) == 0
    checked(tree)
    tree.lock(m.host_node)
    tree.load(m.host_node)  # back on the device: the policy sees the pages again
    if per_page_ids:
        assert len(prefix.policy_data[2]) == prefix.num_pages == 1
    tree.unlock(m.host_node)
    checked(tree)
    insert_fresh(tree, "ghij")
    assert tree.evict(2) == 2
    checked(tree)
