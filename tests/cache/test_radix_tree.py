"""Unit tests of RadixTree: the worked examples of its docstrings and every method's edge cases.

Tokens are written as strings ("abcd" is the key ("a", "b", "c", "d")) to keep examples readable.
"""

import numpy as np
import pytest

from pcjax.cache.page_pool import PageState
from tests.cache.tree_utils import cache_request, check, contents, make_tree, path_tokens


def insert_fresh(tree, tokens):
    """Inserts ``tokens`` with freshly allocated pages (no match first)."""
    pages = tree.pool.allocate(len(tokens) // tree.page_size)
    result = tree.insert(tokens, pages)
    check(tree)
    return pages, result


def test_empty_tree_matches_nothing_and_returns_the_root():
    tree = make_tree(2)
    m = tree.match("abcd")
    assert m.pages == [] and m.num_tokens == 0 and m.node is tree.root
    tree.lock(m.node)  # locking the root is allowed and pins nothing
    tree.unlock(m.node)
    check(tree)


def test_insert_then_match_full_and_partial_prefixes():
    tree = make_tree(2)
    pages, r = insert_fresh(tree, "abcdef")
    assert r.num_existing_tokens == 0 and r.duplicate_pages == [] and r.node.pages == pages
    assert tree.match("abcdef").pages == pages
    assert tree.match("abcdefgh").pages == pages
    assert tree.match("abcdeX").pages == pages[:2]  # the page "eX" does not match
    assert tree.match("aX").num_tokens == 0
    assert tree.num_cached_pages == 3 == tree.pool.num_cached
    check(tree)


def test_max_tokens_is_rounded_down_to_whole_pages():
    tree = make_tree(4)
    pages, _ = insert_fresh(tree, "abcdefghijkl")
    assert tree.match("abcdefghijkl", max_tokens=9).num_tokens == 8
    assert tree.match("abcdefghijkl", max_tokens=7).pages == pages[:1]
    assert tree.match("abcdefghijkl", max_tokens=0).num_tokens == 0
    with pytest.raises(ValueError, match="max_tokens"):
        tree.match("abcd", max_tokens=-1)
    check(tree)


@pytest.mark.parametrize("page_size", [1, 3, 4])
def test_engine_limit_leaves_at_least_one_prompt_token(page_size):
    tree = make_tree(page_size)
    prompt = "abcdefghijkl"  # 12 tokens: whole pages for every page size here
    insert_fresh(tree, prompt)
    m = tree.match(prompt, max_tokens=len(prompt) - 1)
    assert m.num_tokens == 12 - page_size  # the last page is recomputed
    assert len(prompt) - m.num_tokens >= 1


def test_partial_match_splits_the_node_at_a_page_boundary():
    """The module docstring example: the old node object becomes the deeper half."""
    tree = make_tree(2)
    pages, r = insert_fresh(tree, "abcdef")
    old = r.node
    m = tree.match("abcdxy")
    assert m.pages == pages[:2] and m.num_tokens == 4
    assert m.node.key == tuple("abcd") and m.node.pages == pages[:2]
    assert old.key == tuple("ef") and old.pages == pages[2:] and old.parent is m.node
    assert path_tokens(old) == tuple("abcdef")  # a handle keeps ending at the same token
    assert list(tree.root.children.values()) == [m.node]
    check(tree)


def test_match_ending_inside_a_page_stops_at_the_previous_page():
    tree = make_tree(2)
    pages, _ = insert_fresh(tree, "abcd")
    m = tree.match("abcX")
    assert m.pages == pages[:1] and m.node.key == tuple("ab")
    check(tree)


def test_insert_diverging_inside_a_node_adds_a_sibling_leaf():
    tree = make_tree(2)
    first, _ = insert_fresh(tree, "abcdef")
    m = tree.match("abcdxy", max_tokens=4)
    tree.lock(m.node)
    new = tree.pool.allocate(1)
    r = tree.insert("abcdxy", m.pages + new)
    tree.unlock(m.node)
    check(tree)
    assert r.num_existing_tokens == 4 and r.duplicate_pages == []
    assert r.node.key == tuple("xy") and r.node.parent is m.node
    assert sorted(c.key for c in m.node.children.values()) == [tuple("ef"), tuple("xy")]
    assert contents(tree)[tuple("abcdxy")] == new[0]
    assert contents(tree)[tuple("abcdef")] == first[2]


def test_insert_worked_example_with_duplicates():
    """The `insert` docstring example, page ids and all."""
    tree = make_tree(1, capacity=8)
    assert insert_fresh(tree, "a")[0] == [1]
    m_a = tree.match("abcd", max_tokens=3)
    m_b = tree.match("abcde", max_tokens=4)
    assert m_a.pages == m_b.pages == [1]
    tree.lock(m_a.node)
    tree.lock(m_b.node)
    fresh = tree.pool.allocate(7)  # [2 .. 8]
    a_pages, b_pages = [fresh[0], *fresh[5:]], fresh[1:5]
    assert (a_pages, b_pages) == ([2, 7, 8], [3, 4, 5, 6])
    r_a = tree.insert("abcd", m_a.pages + a_pages)
    assert r_a == (1, [], r_a.node)
    r_b = tree.insert("abcde", m_b.pages + b_pages)
    assert r_b.num_existing_tokens == 4 and r_b.duplicate_pages == [3, 4, 5]
    assert r_b.node.key == ("e",) and r_b.node.pages == [6]
    assert tree.path_pages(r_b.node) == [1, 2, 7, 8, 6]
    assert all(tree.pool.state[p] == PageState.IN_USE for p in [3, 4, 5])  # still the caller's
    tree.pool.free(r_b.duplicate_pages)
    tree.unlock(m_a.node)
    tree.unlock(m_b.node)
    check(tree)
    assert tree.pool.num_in_use == 0 and tree.num_cached_pages == 5


def test_inserting_the_trees_own_pages_takes_and_duplicates_nothing():
    tree = make_tree(2)
    pages, _ = insert_fresh(tree, "abcd")
    before = (tree.pool.num_free, tree.pool.num_cached)
    r = tree.insert("abcd", pages)
    assert r.num_existing_tokens == 4 and r.duplicate_pages == [] and r.node.pages == pages
    assert (tree.pool.num_free, tree.pool.num_cached) == before
    r = tree.insert("ab", pages[:1])  # a shorter key splits and ends at the split node
    assert r.node.key == tuple("ab") and r.duplicate_pages == []
    check(tree)


@pytest.mark.parametrize(
    "tokens, pages, message",
    [("abc", [1], "len"), ("ab", [1, 2], "len"), ("abcd", [1, 1], "twice")],
)
def test_insert_rejects_bad_arguments(tokens, pages, message):
    tree = make_tree(2)
    tree.pool.allocate(2)
    with pytest.raises(ValueError, match=message):
        tree.insert(tokens, pages)
    check(tree)


def test_insert_of_a_page_not_in_use_raises_and_keeps_the_contents():
    tree = make_tree(2)
    pages, _ = insert_fresh(tree, "abcd")
    before = contents(tree)
    with pytest.raises(ValueError, match="not IN_USE"):
        tree.insert("abxy", [pages[0], 7])  # page 7 is FREE
    assert contents(tree) == before  # a split happened, the contents did not change
    check(tree)


def test_lock_protects_the_path_from_eviction_until_unlock():
    tree = make_tree(2)
    _, r1 = insert_fresh(tree, "abcd")
    insert_fresh(tree, "abxy")
    tree.lock(r1.node)  # pins "ab" and "cd"
    assert tree.num_locked_pages == 2 and tree.num_evictable_pages == 1
    assert tree.evict(10) == 1
    check(tree)
    assert set(contents(tree)) == {tuple("ab"), tuple("abcd")}
    tree.unlock(r1.node)
    assert tree.num_locked_pages == 0 and tree.num_evictable_pages == 2
    assert tree.evict(10) == 2 and tree.num_cached_pages == 0
    check(tree)


def test_lock_counts_nest_and_unlock_below_zero_raises():
    tree = make_tree(1)
    _, r = insert_fresh(tree, "ab")
    tree.lock(r.node)
    tree.lock(r.node)
    tree.unlock(r.node)
    assert tree.evict(5) == 0  # still locked once
    tree.unlock(r.node)
    with pytest.raises(ValueError, match="unlocked"):
        tree.unlock(r.node)
    check(tree)


def test_handles_of_evicted_nodes_are_rejected():
    tree = make_tree(1)
    _, r = insert_fresh(tree, "ab")
    assert tree.evict(2) == 2
    for op in (tree.lock, tree.unlock, tree.path_pages):
        with pytest.raises(ValueError, match="not in the tree"):
            op(r.node)


def test_a_locked_handle_survives_a_split_above_it():
    tree = make_tree(2)
    _, r = insert_fresh(tree, "abcdef")
    tree.lock(r.node)
    tree.match("abxx")  # splits "abcdef" into "ab" -> "cdef"
    tree.match("abcdyy")  # and again: "ab" -> "cd" -> "ef"
    assert path_tokens(r.node) == tuple("abcdef") and r.node.key == tuple("ef")
    assert tree.num_locked_pages == 3 and tree.evict(3) == 0
    tree.unlock(r.node)
    check(tree)
    assert tree.num_evictable_pages == 3


def test_eviction_trims_the_tail_of_a_long_leaf():
    tree = make_tree(2)
    pages, r = insert_fresh(tree, "abcdef")
    assert tree.evict(1) == 1
    assert r.node.pages == pages[:2] and r.node.key == tuple("abcd")  # same node, shorter
    assert tree.pool.state[pages[2]] == PageState.FREE
    assert tree.match("abcdef").pages == pages[:2]
    check(tree)


def test_a_parent_becomes_an_evictable_leaf_when_its_last_child_goes():
    tree = make_tree(1)
    insert_fresh(tree, "ab")
    _, rx = insert_fresh(tree, "ax")  # "a" now has children "b" and "x"
    parent = rx.node.parent
    assert parent.key == ("a",) and not parent.evictable
    assert tree.evict(1) == 1  # LRU: "b" goes first
    assert not parent.evictable
    assert tree.evict(1) == 1  # then "x": its parent "a" is a leaf now
    assert parent.evictable and tree.num_evictable_pages == 1
    check(tree)
    assert tree.evict(1) == 1 and tree.num_cached_pages == 0
    check(tree)


def test_evict_frees_at_most_what_is_unlocked():
    tree = make_tree(2)
    insert_fresh(tree, "abcd")
    assert tree.evict(0) == 0
    assert tree.evict(5) == 2 and tree.evict(5) == 0
    check(tree)


def test_evict_callback_sees_the_victims_before_they_are_freed():
    calls = []

    def callback(node, start, pages):
        assert all(tree.pool.state[p] == PageState.CACHED for p in pages)
        calls.append((path_tokens(node), start, list(pages)))

    tree = make_tree(1, evict_callback=callback)
    pages, _ = insert_fresh(tree, "abc")
    tree.evict(1)
    tree.evict(5)
    assert calls == [(tuple("abc"), 2, pages[2:]), (tuple("ab"), 0, pages[:2])]
    check(tree)


def test_reset_drops_everything_unlocked_without_calling_back():
    calls = []
    tree = make_tree(2, evict_callback=lambda *args: calls.append(args))
    r = cache_request(tree, "abcd")
    cache_request(tree, "xyzw")
    cache_request(tree, "abef")
    tree.lock(r.node)
    tree.reset()
    check(tree)
    assert set(contents(tree)) == {tuple("ab"), tuple("abcd")} and calls == []
    tree.unlock(r.node)
    tree.reset()
    assert tree.num_cached_pages == 0 and tree.pool.num_free == tree.pool.capacity
    check(tree)


def test_match_records_an_access_on_the_matched_path():
    tree = make_tree(1)
    _, r = insert_fresh(tree, "abc")
    clock = tree.clock
    m = tree.match("abX")  # splits "abc" into "ab" -> "c"
    assert tree.clock == clock + 1
    assert m.node.last_access == tree.clock and m.node.hits == 1
    assert r.node.last_access == clock and r.node.hits == 0  # below the match: untouched
    tree.match("abc")
    assert (m.node.hits, r.node.hits) == (2, 1)
    check(tree)


def test_numpy_tokens_and_pages_are_accepted():
    tree = make_tree(2)
    tokens = np.arange(6, dtype=np.int32)
    pages = np.asarray(tree.pool.allocate(3))
    r = tree.insert(tokens, pages)
    assert r.node.pages == pages.tolist()
    assert tree.match(list(range(6))).pages == pages.tolist()
    assert tree.match(np.arange(4, dtype=np.int64)).num_tokens == 4
    check(tree)


def test_path_pages_is_the_page_table_of_a_handle():
    tree = make_tree(1)
    first = cache_request(tree, "abc")
    second = cache_request(tree, "abxy")
    assert tree.path_pages(first.node) == [1, 2, 3]
    assert tree.path_pages(second.node) == [1, 2, 4, 5]
    assert tree.path_pages(tree.root) == []


def test_integrity_catches_a_broken_counter_and_a_stray_page():
    tree = make_tree(1)
    _, r = insert_fresh(tree, "ab")
    tree._num_locked += 1
    with pytest.raises(AssertionError):
        tree.check_integrity()
    tree._num_locked -= 1
    r.node.pages.append(9)  # page count no longer matches the key
    with pytest.raises(AssertionError):
        tree.check_integrity()


@pytest.mark.parametrize("page_size", [0, -1, 1.5])
def test_bad_page_sizes_are_rejected(page_size):
    with pytest.raises(ValueError, match="page_size"):
        make_tree(page_size)
