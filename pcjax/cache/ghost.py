"""Page identities that outlive eviction: prefix hashes, a ghost of recently evicted pages, and a
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

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pcjax.cache.base import Node

_SLACK = 8  # a ghost purges its runs when they outnumber its window (in pages) this many times


class Ghost:
    """Recently evicted pages, by prefix hash: a page is a ghost until ``scale`` times the most
    pages ever cached were evicted (and remembered) after it.

    Kept per evicted *run* of pages (one `evicted` call), keyed by the run's first page, so that
    neither evicting a leaf nor caching one costs per-page work in Python. That is exact for the
    one question asked (`cached`: was a new leaf's first page a ghost?): a new leaf starts where
    the cached path ends, which is the first page of the run whose eviction made it the end, or
    a page inside a run whose head was cached again -- and caching a run's head files the rest
    of the run under its own first page. The window counts pages evicted, not ghosts left (a
    page cached again still counts until it leaves the window). Runs that left the window are
    purged in bulk once the entries outnumber it ``_SLACK`` times.

    Args:
      scale: the window, as a multiple of the most pages the cache ever held.
    """

    def __init__(self, scale: float = 1.0):
        self._runs: dict[int, tuple[int, list[int]]] = {}  # first page -> (stamp, run's pages)
        self._evictions = 0  # pages remembered so far; a run's stamp is the count before it
        self._cached = 0
        self._size = 1
        self._scale = scale

    def __len__(self) -> int:
        """Ghost pages in the window (a scan: for tests and reports)."""
        oldest = self._evictions - self._size * self._scale
        return sum(len(run) for stamp, run in self._runs.values() if stamp >= oldest)

    def cached(self, ids: list[int]) -> bool:
        """The pages ``ids`` of a new leaf were cached; returns whether its first page was a
        ghost (it stops being one; the rest of its run stays one)."""
        entry = self._runs.pop(ids[0], None)
        self._cached += len(ids)
        if self._cached > self._size:
            self._size = self._cached
        if entry is None or entry[0] < self._evictions - self._size * self._scale:
            return False
        stamp, run = entry
        rest = _diverge(ids, run)
        if rest < len(run):
            self._runs[run[rest]] = (stamp, run[rest:])
        return True

    def evicted(self, ids: list[int], *, remember: bool = True) -> None:
        """The pages ``ids`` (a run: consecutive pages of one leaf) were evicted; they become
        ghosts if ``remember``."""
        self._cached -= len(ids)
        if remember and ids:
            self._runs[ids[0]] = (self._evictions, ids)
            self._evictions += len(ids)
            window = self._size * self._scale
            if len(self._runs) > _SLACK * window + 64:
                oldest = self._evictions - window
                runs = self._runs.items()
                self._runs = {page: entry for page, entry in runs if entry[0] >= oldest}


def _diverge(ids: list[int], run: list[int]) -> int:
    """Pages at the start of ``run`` that ``ids`` repeats."""
    if ids[: len(run)] == run:
        return len(run)
    return next((i for i, (a, b) in enumerate(zip(ids, run, strict=False)) if a != b), len(ids))


def share_point(page_id: int) -> float:
    """A page's fixed point in [0, 1): a policy that keeps a share ``s`` of some leaves keeps
    those whose first page falls below ``s``, the same ones every time."""
    return (page_id % 65521) / 65521


def prefix_page_ids(node: "Node") -> list[int]:
    """A hash of every page's whole prefix, chained from the parent's last page (the parent's
    ``policy_data[2]`` holds its own)."""
    parent = node.parent.policy_data if node.parent is not None else None
    h = parent[2][-1] if parent else 0
    key, P = node.key, len(node.key) // node.num_pages
    if P == 1:
        return [h := hash((h, unit)) for unit in key]
    return [h := hash((h, key[i : i + P])) for i in range(0, len(key), P)]
