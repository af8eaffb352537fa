"""The ghost of evicted pages: runs filed by their first page, a window of evictions."""

from pcjax.cache.ghost import Ghost


def test_a_new_leaf_at_a_runs_first_page_is_a_return():
    ghost = Ghost()
    assert not ghost.cached([1, 2, 3])
    ghost.evicted([2, 3])  # the leaf's tail: the cached path now ends at page 1
    assert len(ghost) == 2
    assert ghost.cached([2, 3, 4])  # the next turn starts where the path ended
    assert len(ghost) == 0


def test_caching_a_runs_head_files_the_rest_under_its_own_first_page():
    ghost = Ghost(scale=4.0)
    ghost.cached([1, 2, 3, 4])
    ghost.evicted([2, 3, 4])
    assert ghost.cached([2])  # a shorter prefix comes back: pages 3, 4 stay ghosts
    assert ghost.cached([3, 9])  # diverges after page 3: page 4 stays a ghost
    assert ghost.cached([4])
    assert not ghost.cached([5])


def test_the_window_counts_pages_evicted_since():
    ghost = Ghost(scale=1.0)  # the cache held 2 pages at most: a window of 2 evictions
    ghost.cached([1])
    ghost.cached([2])
    ghost.evicted([1])
    ghost.evicted([2])
    ghost.cached([3])
    ghost.evicted([3])  # page 1 left the window
    assert not ghost.cached([1])
    assert ghost.cached([2])


def test_forgotten_runs_are_purged_in_bulk():
    ghost = Ghost(scale=1.0)
    ghost.cached([0])
    for page in range(1, 200):
        ghost.evicted([page - 1])
        ghost.cached([page])
    assert len(ghost._runs) <= 8 * 1 + 64 + 1
    assert len(ghost) == 1
