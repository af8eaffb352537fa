"""Belady's MIN with bypass under the leaf-only constraint: the offline upper bound of replay.

It needs the future, so it exists only here (never in `make_policy` or the engine's list), with
``oracle_lru`` (`OracleAdmission`): LRU that admits only blocks with a future use.

Next use: ``next_use[i][j]`` is the index of the first request after ``i`` whose prompt holds
block ``requests[i].block_ids[j]`` (`NEVER` if none), precomputed in one backward pass. Before
request ``i`` is replayed, `BeladyOracle.advance` records those values for its blocks, so at any
moment ``next_of[b]`` is the next use of block ``b`` strictly after the current request.

Why leaf-only costs Belady nothing here: ids are prefix-chained, so every request that uses a
block also uses its parent, hence next uses never decrease from a parent to a child, and the block
used furthest in the future always sits at the tail of some leaf. The policy keys a leaf by minus
the next use of its tail page, so the tree's tail trimming evicts exactly Belady's victim.

Key contract: ``next_of[b]`` changes only in `advance` for the blocks of the request about to be
matched. A resident ``b`` is then matched by that request (its whole path is resident, the tree
being prefix-closed), so its node is touched and re-pushed before anything is evicted.

Bypass (`admit_count`): the missed blocks ``m_1 .. m_k`` of a request are considered in order; a
block is admitted into a free page, or in place of the resident leaf tail used furthest in the
future if that one is used strictly later than the block. The first block that is never used
again, or that would be its own victim, ends the admission: the blocks after it are used no
sooner (prefix chaining), so they would be bypassed too.
"""

from typing import TYPE_CHECKING

from pcjax.cache.policies import EvictionPolicy, LRUPolicy

if TYPE_CHECKING:
    from pcjax.cache.base import Node
    from pcjax.cache.radix_tree import RadixTree
    from pcjax.sim.trace import Trace

NEVER = 1 << 62  # the next use of a block that is never used again


class BeladyPolicy(EvictionPolicy):
    """Evicts the leaf whose tail block is used furthest in the future (``page_size=1`` only)."""

    name = "belady"

    def __init__(self, next_of: list[int]):
        self.next_of = next_of  # block id -> next use after the current request

    def key(self, node: "Node") -> int:
        return -self.next_of[node.key[-1]]


def next_uses(trace: "Trace") -> list[list[int]]:
    """``next_use[i][j]``: the first request after ``i`` that holds block ``j`` of request ``i``."""
    later: dict[int, int] = {}
    out: list[list[int]] = [[]] * len(trace.requests)
    for i in range(len(trace.requests) - 1, -1, -1):
        ids = trace.requests[i].block_ids
        out[i] = [later.get(b, NEVER) for b in ids]
        for b in ids:
            later[b] = i
    return out


class BeladyOracle:
    """The future of a trace, fed to a `BeladyPolicy` one request at a time."""

    def __init__(self, trace: "Trace"):
        self.requests = trace.requests
        self.next_use = next_uses(trace)
        num_ids = 1 + max((max(r.block_ids, default=-1) for r in trace.requests), default=-1)
        self.next_of = [NEVER] * num_ids
        self.policy = BeladyPolicy(self.next_of)

    def advance(self, i: int) -> None:
        """Request ``i`` is next: its blocks' next uses move past it."""
        next_of = self.next_of
        for b, n in zip(self.requests[i].block_ids, self.next_use[i], strict=True):
            next_of[b] = n

    def admit_count(self, tree: "RadixTree", ids: tuple, d: int) -> int:
        """How many blocks after the ``d`` matched ones to cache (see the module docstring).

        Evicts the victims of the admitted blocks from ``tree`` (the match must be locked); the
        caller allocates and inserts the admitted blocks at once.
        """
        next_of, pool, free, admitted = self.next_of, tree.pool, tree.pool.num_free, 0
        for b in ids[d:]:
            n = next_of[b]
            if n == NEVER:
                break
            if free > 0:
                free -= 1
            elif _furthest_next_use(tree) > n:
                tree.evict(1)
            else:
                break
            admitted += 1
        assert pool.num_free >= admitted
        return admitted


class OracleAdmission(BeladyOracle):
    """LRU eviction with Belady's foreknowledge used for admission only ("oracle_lru").

    It caches exactly the missed blocks that are ever used again (what a perfect dead-block
    predictor would admit) and evicts by recency. Not a bound, a yardstick: how far an online
    policy could get by predicting *whether* a block returns, without knowing *when*.
    """

    def __init__(self, trace: "Trace"):
        super().__init__(trace)
        self.policy = LRUPolicy()

    def admit_count(self, tree: "RadixTree", ids: tuple, d: int) -> int:
        next_of, admitted = self.next_of, 0
        for b in ids[d:]:
            if next_of[b] == NEVER:
                break
            admitted += 1
        return admitted


ORACLES = {"belady": BeladyOracle, "oracle_lru": OracleAdmission}


def _furthest_next_use(tree: "RadixTree") -> int:
    """The next use of the tail block of the first victim (-1 when nothing is evictable).

    The tree has no peek, so this pops the top of its evictable set and pushes it straight back
    (a net no-op on the set). It reaches into ``tree._evictable``: replay-only code, kept here.
    """
    leaves = tree._evictable
    node = leaves.pop()
    if node is None:
        return -1
    leaves.push(node)
    return tree.policy.next_of[node.key[-1]]
