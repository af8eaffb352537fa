"""The pool of device KV page ids, and who owns each page.

Page 0 is the null page: page tables are padded with it and it is never allocated, so a pool of
``num_pages`` pages hands out ids ``1 .. num_pages - 1``. Every other page is in one of three
states:

==========  ==========================================  ====================================
state       owner                                       enters by
==========  ==========================================  ====================================
FREE        nobody                                      `free` (IN_USE), `free_cached` (CACHED)
IN_USE      a running request                           `allocate` (FREE)
CACHED      the radix tree (a cached prefix)            `mark_cached` (IN_USE)
==========  ==========================================  ====================================

The state of every page lives in one byte array, seen from numpy as ``state`` (a view, no copy), so
`check_integrity` can compare it against the free list and the counters, while the per-page moves
of the hot path stay plain Python indexing. Host-only: plain Python and numpy, no jax.
"""

import enum
from collections.abc import Iterable
from typing import NoReturn

import numpy as np


class PageState(enum.IntEnum):
    """What a page is used for. Stored as int8 in `PagePool.state`."""

    FREE = 0
    IN_USE = 1
    CACHED = 2
    NULL = 3  # page 0 only


class PoolExhaustedError(RuntimeError):
    """`PagePool.allocate` was asked for more pages than are free."""


class PagePool:
    """Page ids of the device KV cache with a FREE / IN_USE / CACHED state each.

    Example (``num_pages=5``: page 0 is null, capacity 4)::

        pool = PagePool(5)
        a = pool.allocate(3)      # [1, 2, 3]   free 1, in_use 3
        pool.mark_cached(a[:2])   # tree owns 1, 2: in_use 1, cached 2
        pool.free(a[2:])          # 3 back:  free 2, in_use 0, cached 2
        pool.free_cached([2])     # evicted: free 3, cached 1

    Args:
      num_pages: pages in the device cache (NP), the null page included; at least 2.
      track_freed: remember every page freed since the last `drain_freed` call (debug mode: the
        engine NaN-fills them so a stale read shows up at once).
    """

    def __init__(self, num_pages: int, *, track_freed: bool = False):
        if not isinstance(num_pages, int) or num_pages < 2:
            raise ValueError(f"num_pages must be an int >= 2 (page 0 is null), got {num_pages!r}")
        self.num_pages = num_pages
        self._states = bytearray(num_pages)  # PageState per page; FREE == 0
        self._states[0] = PageState.NULL
        self.state = np.frombuffer(self._states, dtype=np.int8)  # i8[NP], a view of _states
        # A stack: allocate pops from the end, so a fresh pool hands out 1, 2, 3, ...
        self._free = list(range(num_pages - 1, 0, -1))
        self._num_cached = 0
        self._track_freed = track_freed
        self._freed: list[int] = []

    @property
    def capacity(self) -> int:
        """Pages that can ever be allocated (the null page excluded)."""
        return self.num_pages - 1

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return self._num_cached

    @property
    def num_in_use(self) -> int:
        return self.capacity - len(self._free) - self._num_cached

    def allocate(self, n: int) -> list[int]:
        """Takes ``n`` FREE pages and marks them IN_USE.

        Raises:
          PoolExhaustedError: fewer than ``n`` pages are free (callers check `num_free` first and
            evict from the tree when short).
        """
        if n < 0:
            raise ValueError(f"cannot allocate a negative number of pages ({n})")
        if n > len(self._free):
            raise PoolExhaustedError(f"asked for {n} pages, only {len(self._free)} are free")
        if n == 0:
            return []
        pages = self._free[-n:]
        del self._free[-n:]
        pages.reverse()
        states = self._states
        for page in pages:
            states[page] = PageState.IN_USE
        return pages

    def free(self, pages: Iterable[int]) -> None:
        """Returns IN_USE pages to the free list. Any other state is an error (nothing changes)."""
        self._release(self._move(pages, PageState.IN_USE, PageState.FREE, "free"))

    def mark_cached(self, pages: Iterable[int]) -> None:
        """Hands IN_USE pages over to the radix tree (IN_USE -> CACHED)."""
        self._num_cached += len(self._move(pages, PageState.IN_USE, PageState.CACHED, "cache"))

    def free_cached(self, pages: Iterable[int]) -> None:
        """Frees pages the radix tree evicted (CACHED -> FREE)."""
        pages = self._move(pages, PageState.CACHED, PageState.FREE, "evict")
        self._num_cached -= len(pages)
        self._release(pages)

    def drain_freed(self) -> list[int]:
        """Pages freed since the last call (always empty unless built with ``track_freed``)."""
        freed, self._freed = self._freed, []
        return freed

    def _release(self, pages: list[int]) -> None:
        self._free.extend(pages)
        if self._track_freed:
            self._freed.extend(pages)

    def _move(self, pages: Iterable[int], old: PageState, new: PageState, verb: str) -> list[int]:
        """Moves ``pages`` from state ``old`` to ``new``; returns them as a list of ints.

        Raises:
          ValueError: a page is listed twice, out of range or not in state ``old`` (then no page
            changes state).
        """
        pages = pages.tolist() if isinstance(pages, np.ndarray) else list(pages)
        states, n = self._states, self.num_pages
        for i, page in enumerate(pages):
            if 0 < page < n and states[page] == old:
                states[page] = new
                continue
            for done in pages[:i]:  # roll back: no page changes state on error
                states[done] = old
            self._refuse(pages, i, old, verb)
        return pages

    def _refuse(self, pages: list[int], i: int, old: PageState, verb: str) -> NoReturn:
        """Raises the ValueError for ``pages[i]``, the first page `_move` could not move."""
        page = pages[i]
        if page in pages[:i]:
            raise ValueError(f"cannot {verb} pages listed twice: {sorted(pages)}")
        if not 0 < page < self.num_pages:
            raise ValueError(f"cannot {verb} pages outside 1..{self.num_pages - 1}: {pages}")
        state = PageState(self._states[page]).name
        raise ValueError(f"cannot {verb} pages that are not {old.name}: {{{page}: {state!r}}}")

    def check_integrity(self) -> None:
        """Raises AssertionError unless the free list, the counters and the state array agree."""
        state = self.state
        assert state.shape == (self.num_pages,), state.shape
        assert state[0] == PageState.NULL, "page 0 must stay the null page"
        assert not (state[1:] == PageState.NULL).any(), "only page 0 may be NULL"
        free = set(self._free)
        assert len(free) == len(self._free), "free list holds a page twice"
        assert free == set(np.flatnonzero(state == PageState.FREE).tolist()), "free list != state"
        num_cached = int((state == PageState.CACHED).sum())
        num_in_use = int((state == PageState.IN_USE).sum())
        assert num_cached == self._num_cached, (num_cached, self._num_cached)
        assert num_in_use == self.num_in_use, (num_in_use, self.num_in_use)
        assert len(free) + num_cached + num_in_use == self.capacity
