import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pcjax.cache.page_pool import PagePool, PageState, PoolExhaustedError


def counts(pool):
    return pool.num_free, pool.num_in_use, pool.num_cached


def test_fresh_pool_hands_out_ascending_ids_never_the_null_page():
    pool = PagePool(5)
    assert pool.capacity == 4 and counts(pool) == (4, 0, 0)
    assert pool.allocate(4) == [1, 2, 3, 4]
    assert counts(pool) == (0, 4, 0)
    assert pool.state[0] == PageState.NULL
    pool.check_integrity()


def test_docstring_walkthrough():
    pool = PagePool(5)
    a = pool.allocate(3)
    pool.mark_cached(a[:2])
    assert counts(pool) == (1, 1, 2)
    pool.free(a[2:])
    assert counts(pool) == (2, 0, 2)
    pool.free_cached([2])
    assert counts(pool) == (3, 0, 1)
    assert pool.state.tolist() == [PageState.NULL, PageState.CACHED, 0, 0, 0]
    pool.check_integrity()


def test_allocate_more_than_free_raises_and_changes_nothing():
    pool = PagePool(4)
    pool.allocate(2)
    with pytest.raises(PoolExhaustedError, match="only 1 are free"):
        pool.allocate(2)
    assert counts(pool) == (1, 2, 0)
    assert pool.allocate(0) == []
    with pytest.raises(ValueError):
        pool.allocate(-1)
    pool.check_integrity()


@pytest.mark.parametrize(
    "op, pages, message",
    [
        ("free", [3], "not IN_USE"),  # a FREE page
        ("free", [2], "not IN_USE"),  # a CACHED page
        ("free", [0], "outside"),  # the null page
        ("free", [5], "outside"),
        ("free", [1, 1], "twice"),
        ("mark_cached", [2], "not IN_USE"),
        ("free_cached", [1], "not CACHED"),  # an IN_USE page
        ("free_cached", [3], "not CACHED"),  # a FREE page
    ],
)
def test_wrong_state_transitions_raise_and_change_nothing(op, pages, message):
    pool = PagePool(5)
    pool.allocate(2)  # page 1 IN_USE, page 2 CACHED, pages 3 and 4 FREE
    pool.mark_cached([2])
    before = pool.state.copy()
    with pytest.raises(ValueError, match=message):
        getattr(pool, op)(pages)
    np.testing.assert_array_equal(pool.state, before)
    pool.check_integrity()


def test_numpy_page_arrays_are_accepted():
    pool = PagePool(6)
    pages = np.asarray(pool.allocate(3), dtype=np.int32)
    pool.mark_cached(pages[:1])
    pool.free(pages[1:])
    assert counts(pool) == (4, 0, 1)
    pool.check_integrity()


def test_drain_freed_reports_pages_freed_since_last_call_only_when_tracking():
    pool = PagePool(6, track_freed=True)
    a = pool.allocate(4)
    pool.mark_cached(a[:2])
    pool.free(a[2:])
    pool.free_cached([a[0]])
    assert sorted(pool.drain_freed()) == [1, 3, 4]
    assert pool.drain_freed() == []
    untracked = PagePool(6)
    untracked.free(untracked.allocate(2))
    assert untracked.drain_freed() == []


def test_integrity_catches_a_corrupted_free_list():
    pool = PagePool(5)
    pool.allocate(1)
    pool._free.append(1)  # page 1 is IN_USE but now also on the free list
    with pytest.raises(AssertionError):
        pool.check_integrity()


@pytest.mark.parametrize("num_pages", [0, 1, 2.5])
def test_bad_sizes_are_rejected(num_pages):
    with pytest.raises(ValueError):
        PagePool(num_pages)


class PoolMachine(RuleBasedStateMachine):
    """Random operation sequences against a dict model page -> state."""

    @initialize(num_pages=st.integers(2, 12))
    def setup(self, num_pages):
        self.pool = PagePool(num_pages, track_freed=True)
        self.model = {p: PageState.FREE for p in range(1, num_pages)}
        self.freed = []

    def _pick(self, data, state, *, min_size=0):
        pages = sorted(p for p, s in self.model.items() if s == state)
        return data.draw(st.lists(st.sampled_from(pages), unique=True, min_size=min_size))

    @rule(n=st.integers(0, 12))
    def allocate(self, n):
        free = sum(s == PageState.FREE for s in self.model.values())
        if n > free:
            with pytest.raises(PoolExhaustedError):
                self.pool.allocate(n)
            return
        pages = self.pool.allocate(n)
        assert len(set(pages)) == n
        for p in pages:
            assert self.model[p] == PageState.FREE
            self.model[p] = PageState.IN_USE

    def _move(self, data, op, old, new):
        if old not in self.model.values():
            return
        pages = self._pick(data, old)
        getattr(self.pool, op)(pages)
        for p in pages:
            self.model[p] = new
        if new == PageState.FREE:
            self.freed += pages

    @rule(data=st.data())
    def free(self, data):
        self._move(data, "free", PageState.IN_USE, PageState.FREE)

    @rule(data=st.data())
    def mark_cached(self, data):
        self._move(data, "mark_cached", PageState.IN_USE, PageState.CACHED)

    @rule(data=st.data())
    def free_cached(self, data):
        self._move(data, "free_cached", PageState.CACHED, PageState.FREE)

    @rule(data=st.data(), op=st.sampled_from(["free", "mark_cached", "free_cached"]))
    def wrong_state(self, data, op):
        wrong = PageState.CACHED if op != "free_cached" else PageState.IN_USE
        others = [p for p, s in self.model.items() if s in (wrong, PageState.FREE)]
        if not others:
            return
        page = data.draw(st.sampled_from(sorted(others)))
        with pytest.raises(ValueError):
            getattr(self.pool, op)([page])

    @rule()
    def drain(self):
        assert sorted(self.pool.drain_freed()) == sorted(self.freed)
        self.freed = []

    @invariant()
    def agrees_with_model(self):
        self.pool.check_integrity()
        assert self.pool.state[1:].tolist() == [self.model[p] for p in sorted(self.model)]
        values = list(self.model.values())
        assert self.pool.num_free == values.count(PageState.FREE)
        assert self.pool.num_in_use == values.count(PageState.IN_USE)
        assert self.pool.num_cached == values.count(PageState.CACHED)


PoolMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestPoolMachine = PoolMachine.TestCase
