"""Device-free replay of a trace through the engine's own `RadixTree` + `PagePool` + policy.

A key unit is one trace block: the tree runs with ``page_size=1`` and one page per block, so
``capacity_blocks`` pages hold ``capacity_blocks * block_tokens`` tokens.

Sequential semantics (the reference every reported number uses), per request in file order:

1. ``match`` the request's block ids: the hit is the longest resident prefix (``d`` blocks); the
   matched path is locked so the request cannot evict its own prefix.
2. Two-tier only: the host tier is asked for the blocks after ``d``; those it holds are host hits
   (loaded back: they enter the device tree like computed blocks).
3. The missed blocks are admitted: pages are evicted by the policy (leaf-only, tail pages first)
   when the pool is short, allocated and inserted. Online policies admit every block that fits;
   Belady admits only the prefix its bypass rule accepts (`pcjax.sim.belady`).
4. Everything is unlocked: the request is done.

Token hit rate = sum(min(hit_blocks * block_tokens, input_length)) / sum(input_length); block hit
rate = hit blocks / referenced blocks. The timed mode lives in `pcjax.sim.timed`.

Two-tier mode: the host tier is a second `RadixTree` + `PagePool` (its own policy, LRU by default)
fed through the device tree's ``evict_callback``: a device victim is written back with its whole
path (the host tree is keyed by full prefixes, so a host copy of a block carries copies of its
ancestors; ancestors that are device-resident take host room too). ``write_through`` instead
copies every request's blocks to the host on admission. A host match is not locked beyond the
request; host hits count separately (``host_hit_blocks``).
"""

import time
from typing import NamedTuple

from tqdm.auto import tqdm

from pcjax.cache.base import MatchResult, Node
from pcjax.cache.page_pool import PagePool
from pcjax.cache.policies import EvictionPolicy, make_policy
from pcjax.cache.radix_tree import RadixTree
from pcjax.sim.belady import ORACLES, BeladyOracle
from pcjax.sim.headroom import HoldOracle
from pcjax.sim.trace import Request, Trace

HINDSIGHT = "hindsight:"  # policy="hindsight:<classifier>": a class bound's hold times


class ReplayResult(NamedTuple):
    """Counters of one replay; rates are properties. Tier counts are 0 without a host tier."""

    trace: str
    policy: str
    capacity_blocks: int
    block_tokens: int
    num_requests: int
    total_blocks: int
    hit_blocks: int  # device + host
    total_tokens: int
    hit_tokens: int  # device + host
    host_hit_blocks: int
    host_hit_tokens: int
    evicted_blocks: int
    runtime_s: float
    duplicate_blocks: int = 0  # timed mode: blocks computed again while another request held them
    peak_in_flight: int = 0  # timed mode: most requests in flight at once

    @property
    def token_hit_rate(self) -> float:
        return self.hit_tokens / max(self.total_tokens, 1)

    @property
    def block_hit_rate(self) -> float:
        return self.hit_blocks / max(self.total_blocks, 1)

    @property
    def capacity_tokens(self) -> int:
        return self.capacity_blocks * self.block_tokens


class SimCache:
    """A device tier for replay: tree + pool with ``page_size=1`` and the given policy."""

    def __init__(self, capacity_blocks: int, policy: EvictionPolicy, *, evict_callback=None):
        self.pool = PagePool(capacity_blocks + 1)
        self.tree = RadixTree(self.pool, 1, policy, evict_callback=evict_callback)
        self.evicted = 0
        self.duplicates = 0  # blocks computed twice by requests in flight together (timed mode)

    def lookup(self, ids: tuple) -> MatchResult:
        """Matches ``ids`` and locks the matched path (unlock with `release`)."""
        m = self.tree.match(ids)
        self.tree.lock(m.node)
        return m

    def admit(self, ids: tuple, m: MatchResult, want: int) -> Node:
        """Caches up to ``want`` blocks after the match (fewer when locked pages leave no room),
        evicting by policy; returns the locked node ending the cached prefix (``m.node`` if none
        were admitted). The match's lock moves to the returned node."""
        return self.commit(ids, m, self.reserve(want))

    def reserve(self, want: int) -> list[int]:
        """Allocates up to ``want`` pages (as many as room allows), evicting when short."""
        tree, pool = self.tree, self.pool
        want = min(want, pool.num_free + tree.num_evictable_pages)
        if pool.num_free < want:
            self.evicted += tree.evict(want - pool.num_free)
        return pool.allocate(max(want, 0))

    def commit(self, ids: tuple, m: MatchResult, pages: list[int]) -> Node:
        """Inserts the blocks after the match into ``pages`` (duplicates are freed) and moves the
        match's lock to the node ending them; returns that node."""
        if not pages:
            return m.node
        tree, d = self.tree, len(m.pages)
        r = tree.insert(ids[: d + len(pages)], m.pages + pages)
        self.pool.free(r.duplicate_pages)
        self.duplicates += len(r.duplicate_pages)
        tree.lock(r.node)
        tree.unlock(m.node)
        return r.node

    def release(self, node: Node) -> None:
        self.tree.unlock(node)

    def check(self) -> None:
        self.tree.check_integrity()
        self.pool.check_integrity()


class HostTier:
    """The host tier of two-tier replay: a second tree that receives device victims."""

    def __init__(self, capacity_blocks: int, policy: str = "lru", tokens_per_unit: int = 1):
        self.cache = SimCache(capacity_blocks, make_policy(policy, tokens_per_unit=tokens_per_unit))
        self._held: Node | None = None

    def lookup(self, ids: tuple, device_hits: int) -> int:
        """Host hits after the ``device_hits`` device blocks; the host match stays locked until
        `done` (so write-backs made room for meanwhile cannot evict it)."""
        m = self.cache.lookup(ids)
        self._held = m.node
        return max(0, len(m.pages) - device_hits)

    def done(self) -> None:
        if self._held is not None:
            self.cache.release(self._held)
            self._held = None

    def store(self, ids: tuple) -> None:
        """Writes the prefix ``ids`` to the host (what it lacks of it, as room allows)."""
        m = self.cache.lookup(ids)
        self.cache.release(self.cache.admit(ids, m, len(ids) - len(m.pages)))

    def write_back(self, node: Node, start: int, pages: list[int]) -> None:
        """The device tree's evict callback: stores the victims' whole path."""
        del start, pages
        self.store(path_key(node))


def path_key(node: Node) -> tuple:
    """All key units from the root to the end of ``node``."""
    keys = []
    while node.parent is not None:
        keys.append(node.key)
        node = node.parent
    return tuple(k for key in reversed(keys) for k in key)


def replay(
    trace: Trace,
    capacity_blocks: int,
    policy: str | EvictionPolicy | BeladyOracle | HoldOracle,
    *,
    host_capacity_blocks: int = 0,
    host_policy: str = "lru",
    write_through: bool = False,
    check_every: int = 0,
    progress: bool = False,
) -> ReplayResult:
    """Replays ``trace`` sequentially (see the module docstring) and counts hits.

    Args:
      policy: an engine policy name or object, "belady" (the offline bound with bypass),
        "oracle_lru" (LRU admitting only blocks that are used again) or "hindsight:<classifier>"
        (the hold times of that class bound, `pcjax.sim.headroom`), or an oracle object.
      host_capacity_blocks: > 0 adds the host tier (two-tier mode).
      check_every: check tree and pool integrity every that many requests (0: never).
    """
    policy, oracle = resolve_policy(policy, trace, capacity_blocks)
    host = None
    if host_capacity_blocks > 0:
        host = HostTier(host_capacity_blocks, host_policy, trace.block_tokens)
    callback = host.write_back if host is not None and not write_through else None
    cache = SimCache(capacity_blocks, policy, evict_callback=callback)
    tally = Tally(trace.block_tokens)
    start = time.perf_counter()
    requests = tqdm(trace.requests, disable=not progress, leave=False, desc=policy.name)
    for i, r in enumerate(requests):
        _one_request(cache, host, oracle, i, r, tally, write_through)
        if check_every and (i + 1) % check_every == 0:
            cache.check()
            if host is not None:
                host.cache.check()
    seconds = time.perf_counter() - start
    return tally.result(trace, policy.name, capacity_blocks, cache.evicted, seconds)


def resolve_policy(
    policy, trace: Trace, capacity_blocks: int | None = None
) -> tuple[EvictionPolicy, BeladyOracle | HoldOracle | None]:
    """A policy object for ``policy`` (a name, a policy object or an oracle), and its oracle for
    the replay-only "belady", "oracle_lru" (`pcjax.sim.belady`) and "hindsight:<classifier>"
    (the hold times of a class bound at ``capacity_blocks``, `pcjax.sim.headroom`), None
    otherwise.

    Token-aware policies (GDSF) are told that one key unit is ``trace.block_tokens`` tokens.
    """
    if isinstance(policy, (BeladyOracle, HoldOracle)):
        return policy.policy, policy
    if isinstance(policy, str) and policy in ORACLES:
        oracle = ORACLES[policy](trace)
        return oracle.policy, oracle
    if isinstance(policy, str) and policy.startswith(HINDSIGHT):
        if capacity_blocks is None:
            raise ValueError(f"{policy} needs the capacity: sequential replay only")
        oracle = HoldOracle(trace, policy.removeprefix(HINDSIGHT), capacity_blocks)
        return oracle.policy, oracle
    if isinstance(policy, str):
        return make_policy(policy, tokens_per_unit=trace.block_tokens), None
    return policy, None


def _one_request(cache, host, oracle, i: int, r: Request, tally, write_through: bool) -> None:
    ids = r.block_ids
    if oracle is not None:
        oracle.advance(i)
    m = cache.lookup(ids)
    d = len(m.pages)
    h = host.lookup(ids, d) if host is not None else 0
    want = len(ids) - d
    if oracle is not None:
        want = oracle.admit_count(cache.tree, ids, d)
    node = cache.admit(ids, m, want)
    if host is not None:
        if write_through:
            host.store(ids)
        host.done()
    cache.release(node)
    tally.add(r, d, h)


class Tally:
    """Hit counters of a replay (device hits and host hits per request)."""

    def __init__(self, block_tokens: int):
        self.bt = block_tokens
        self.n = self.blocks = self.hits = self.tokens = self.hit_tokens = 0
        self.host_hits = self.host_hit_tokens = 0

    def add(self, r: Request, device_hits: int, host_hits: int) -> None:
        device_tokens = min(device_hits * self.bt, r.input_length)
        all_tokens = min((device_hits + host_hits) * self.bt, r.input_length)
        self.n += 1
        self.blocks += len(r.block_ids)
        self.hits += device_hits + host_hits
        self.tokens += r.input_length
        self.hit_tokens += all_tokens
        self.host_hits += host_hits
        self.host_hit_tokens += all_tokens - device_tokens

    def result(self, trace: Trace, policy: str, capacity: int, evicted: int, seconds: float, **kw):
        return ReplayResult(
            trace.name,
            policy,
            capacity,
            self.bt,
            self.n,
            self.blocks,
            self.hits,
            self.tokens,
            self.hit_tokens,
            self.host_hits,
            self.host_hit_tokens,
            evicted,
            seconds,
            **kw,
        )
