"""Page identities that outlive eviction: prefix hashes, a FIFO ghost of evicted pages, and a
fixed per-page share point. Used by the policies that remember what they evicted (S3-FIFO,
``deadline``, ``learned_hold``).

A page's identity is a hash of its whole prefix, chained from its parent node's last page, so
the same prefix cached again (after eviction) gets the same ids whatever the tree's shape.

Example::

    ghost = Ghost()
    ghost.cached([11, 12])   # False: a new leaf with pages 11, 12 (none was a ghost)
    ghost.evicted([12])      # page 12 evicted: it is a ghost now
    ghost.cached([12, 13])   # True: the new leaf's first page came back

Host-only: plain Python, no jax.
"""

import math
from collections import OrderedDict, deque
from itertools import repeat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pcjax.cache.base import Node


def trim_oldest(entries: OrderedDict, limit: float) -> None:
    """Drops the oldest entries of ``entries`` until at most ``limit`` remain, in a loop that
    stays in C (the bounded histories of the policies that remember evicted pages)."""
    excess = len(entries) - math.floor(limit)
    if excess > 0:
        deque(map(entries.popitem, repeat(False, excess)), maxlen=0)


class Ghost:
    """Recently evicted pages, by prefix hash, FIFO-bounded by ``scale`` times the most pages
    ever cached.

    Args:
      scale: the bound, as a multiple of the most pages the cache ever held.
    """

    def __init__(self, scale: float = 1.0):
        self._ids: OrderedDict[int, None] = OrderedDict()
        self._cached = 0
        self._size = 1
        self._scale = scale

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, page_id: int) -> bool:
        return page_id in self._ids

    def cached(self, ids: list[int]) -> bool:
        """The pages ``ids`` of a new leaf were cached (they stop being ghosts); returns whether
        its first page was a ghost."""
        returned = ids[0] in self._ids
        for page_id in ids:
            self._ids.pop(page_id, None)
        self._cached += len(ids)
        self._size = max(self._size, self._cached)
        return returned

    def evicted(self, ids: list[int], *, remember: bool = True) -> None:
        """The pages ``ids`` were evicted; they become ghosts if ``remember`` (a page that is one
        already keeps its place in the FIFO). The oldest ghosts beyond the bound are forgotten."""
        self._cached -= len(ids)
        if remember:
            self._ids.update(dict.fromkeys(ids))
            trim_oldest(self._ids, self._size * self._scale)


def share_point(page_id: int) -> float:
    """A page's fixed point in [0, 1): a policy that keeps a share ``s`` of some leaves keeps
    those whose first page falls below ``s``, the same ones every time."""
    return (page_id % 65521) / 65521


def prefix_page_ids(node: "Node") -> list[int]:
    """A hash of every page's whole prefix, chained from the parent's last page (the parent's
    ``policy_data[2]`` holds its own)."""
    parent = node.parent.policy_data if node.parent is not None else None
    h = parent[2][-1] if parent else 0
    P = len(node.key) // node.num_pages
    ids = []
    for i in range(0, len(node.key), P):
        h = hash((h, node.key[i : i + P]))
        ids.append(h)
    return ids
