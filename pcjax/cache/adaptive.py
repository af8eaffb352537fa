"""``adaptive`` (ours): an online policy selector over miniature shadow caches.

No single policy wins everywhere: on the Mooncake conversation trace ``deadline`` and
``learned_hold`` beat LRU by 3-4 points, while on agentic coding sessions ``learned_hold`` loses
up to 4.7 points to it. This policy runs every candidate (``lru``, ``deadline``,
``learned_hold`` by default) on a *miniature simulation* (SHARDS, Waldspurger et al., ATC'17) and
lets the real cache follow the one that did best recently.

* **Sampling.** A lookup is sampled when a hash of its *trunk* (`trunk_pages`: its path in the
  live tree down to the first node that branches, a shared system or tool prompt, plus one page;
  the first page where nothing on its path branches) falls below the rate ``R = min(1,
  shadow_pages / pool pages)``. A prefix path is thus sampled as a whole (spatial sampling): the
  turns of a conversation, the calls of an agent session are in or out together. Each shadow
  holds at most ``shadow_pages`` pages whatever the cache's size: its capacity is the live pool's
  size scaled by ``R``, so it evicts once the live cache would, not while that one still fills.
* **Shadows.** Each candidate runs its own fresh policy object in its own `RadixTree` over the
  sampled lookups, replayed as in `pcjax.sim.replay` (match, evict down to the capacity, insert
  the rest), on the live tree's clock (a shadow's clock is moved up to it at every sampled
  lookup): what a shadow learns in clock ticks (a lag, a hold time) is in the live cache's ticks,
  and as SHARDS scales the room with the sample, a shadow's lifetimes are those of the live
  cache. An unsampled lookup costs a short walk and one hash.
* **Evidence.** Per sampled lookup, every shadow's hit pages (`Evidence`: decayed sums with
  half-life ``half_life`` sampled lookups, and their second moments, so two candidates compare
  *paired*, on the same lookups). A candidate's *lead* over another is its decayed hits minus the
  other's over the decayed referenced pages; ``z`` is that difference in standard errors.
* **Choice, with hysteresis.** Every ``decide_every`` sampled lookups, once ``min_lookups`` were
  sampled: the best candidate takes over if it leads the active one by more than ``margin`` and
  ``z_switch`` standard errors; otherwise the active one goes back to LRU when LRU leads it by
  ``z_keep`` standard errors; otherwise nothing changes.
* **The start, and too little evidence.** ``deadline`` starts (``start``): without evidence it is
  the better prior (robustness sweep: never below LRU but on agentic 1M, -0.82; up to 1.9 points
  above it where the shadows cannot tell, synthetic 3M/10M). Where the lookups fall into a few
  coarse sampling units (agentic traces: five long sessions, none of which may hash in), the
  shadows may never gather ``min_lookups``: once ``patience`` times the lookups in which that
  many were expected have passed without them, LRU takes over (the safe choice) until the
  evidence comes in.
* **The live cache** runs only the active candidate: its hooks and key are bound straight onto
  this object (no per-call dispatch). A switch hands the live tree to a fresh instance of the
  winner that first *adopts* what the winner's shadow learned (`EvictionPolicy.adopt`:
  ``deadline`` its lag, frontier and kept share; ``learned_hold`` its history, its curves with
  their counts over ``R`` and its hold times), so it plays the winner from the first lookup
  instead of after a warm-up (a fresh ``learned_hold``, switched to after 3119 of 5000 system
  prompt requests at 1M tokens, hit about as LRU till the end); then every node's
  ``policy_data`` is rebuilt top-down by its ``on_insert`` and the evictable leaves are
  re-pushed with the new keys, once per switch.

Evidence (token hit rate, robustness sweep of ``configs/eviction.py``: 2 Mooncake traces and 7
generators x 0.5M-10M tokens, 36 cells; ``experiments/compare_eviction.py``): at worst 0.02
points below LRU and 0.33 below the best of its candidates (synthetic 1M), 47.7% of Belady on
conversation 3M. Starting with LRU instead: 1.55 and 1.49 below the best candidate on synthetic
3M and 10M, where the shadows see about 200 lookups and cannot tell. Without adoption, with the
high-water-mark capacity and the cached-path trunk: 6 cells more than 0.5 below the best
candidate (system prompts 1M: 1.95). The cached-path trunk (where nothing branched) grew turn by
turn, so each turn was sampled anew: on synthetic at 3M, LRU over the sampled requests (as a
shadow) hit 0.09 against 0.32 live, 0.29 with the first-page trunk.

The tree calls `on_lookup` from `RadixTree.match` with the key it looks up; that is the only
extra hook. Host-only: plain Python, no jax.

Example::

    tree = RadixTree(PagePool(1025), 1, make_policy("adaptive", tokens_per_unit=512))
    # ... matches and inserts as usual; tree.policy.active_name says whom it follows
"""

from typing import TYPE_CHECKING, Any

from pcjax.cache.page_pool import PagePool
from pcjax.cache.policies import EvictionPolicy

if TYPE_CHECKING:
    from pcjax.cache.base import Node
    from pcjax.cache.radix_tree import RadixTree

_HOOKS = ("key", "on_insert", "on_access", "on_split", "on_evict")
_GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1


def sample_point(key: tuple) -> float:
    """A key's fixed point in [0, 1) (a mixed hash; equal keys, equal points)."""
    return ((hash(key) * _GOLDEN) & _MASK) / (1 << 64)


def trunk_pages(tree: "RadixTree", key: tuple, most: int) -> int:
    """Pages of ``key``'s *trunk*: its path in ``tree`` down to the first node that branches
    (shared by many prefixes: a system or tool prompt), plus one page: the first page that is
    the prefix's own. At most ``most`` pages, at least one. A conversation's turns, or an agent
    session's calls, share their trunk, so sampling by it keeps them together.

    Example (``P = 1``): the tree holds "s" with children "ab" and "cd"; the key "sabx" -> trunk
    "sa" (2 pages). Where no node on the key's cached path branches, nothing is shared: the
    trunk is the first page (not the cached path, which grows turn by turn: each turn of a
    conversation would be sampled anew, and the shadows would lose its reuse).
    """
    P, node, pos = tree.page_size, tree.root, 0
    while pos < len(key):
        child = node.children.get(key[pos : pos + P])
        if child is None:
            break
        pos += len(child.key)
        if len(child.children) > 1:
            return max(1, min(len(key) // P, pos // P + 1, most))
        node = child
    return 1


class ShadowCache:
    """A miniature cache: one candidate policy on its own tree, replaying sampled lookups.

    Args:
      policy: the candidate (a fresh object, used by this shadow only).
      page_size: tokens per page of the keys it is given.
      max_pages: the most pages it may ever hold (its pool's size).
    """

    def __init__(self, policy: EvictionPolicy, page_size: int, max_pages: int):
        from pcjax.cache.radix_tree import RadixTree  # it imports this package's policies

        self.pool = PagePool(max_pages + 1)
        self.tree = RadixTree(self.pool, page_size, policy)
        self.page_size = page_size

    def reference(self, key: tuple, capacity: int, clock: int) -> int:
        """Looks ``key`` (page aligned) up at the live ``clock`` (the shadow's own clock is moved
        up to it first, never back), caches what it lacks within ``capacity`` pages (evicting by
        its policy) and returns the pages it hit."""
        tree, pool, P = self.tree, self.pool, self.page_size
        tree.clock = max(tree.clock, clock)
        m = tree.match(key)
        hit = len(m.pages)
        want = len(key) // P - hit
        if want > 0:
            tree.lock(m.node)
            room = min(capacity, pool.capacity) - tree.num_locked_pages
            want = min(want, max(room, 0))
            excess = tree.num_cached_pages + want - min(capacity, pool.capacity)
            if excess > 0:
                tree.evict(excess)
            pages = pool.allocate(min(want, pool.num_free))
            if pages:
                r = tree.insert(key[: (hit + len(pages)) * P], m.pages + pages)
                pool.free(r.duplicate_pages)
            tree.unlock(m.node)
        return hit


class AdaptivePolicy(EvictionPolicy):
    """Follows the candidate whose shadow cache hit most recently (see the module docstring).

    Args:
      candidates: policy names (`make_policy`); "lru" is always among them (the fallback).
      tokens_per_unit: tokens per key unit (the trace's block size in replay, 1 in the engine).
      shadow_pages: the most pages one shadow holds; sets the sampling rate.
      sample_depth_tokens: the trunk whose hash decides the sampling.
      half_life: of the scores, in sampled lookups.
      margin: lead over LRU (a share of the referenced pages) needed to leave LRU.
      decide_every: sampled lookups between decisions.
      min_lookups: sampled lookups before the first decision.
      start: the candidate followed before any decision (default: deadline if among the
        candidates, else LRU).
      patience: the live lookups, in units of ``min_lookups / rate`` (those in which
        ``min_lookups`` samples are expected), after which a start other than LRU gives way to
        LRU if fewer than ``min_lookups`` were sampled.
    """

    name = "adaptive"
    token_aware = True

    def __init__(
        self,
        candidates: tuple[str, ...] = ("lru", "deadline", "learned_hold"),
        *,
        tokens_per_unit: int = 1,
        shadow_pages: int = 1024,
        sample_depth_tokens: int = 65536,
        half_life: float = 500.0,
        margin: float = 0.005,
        decide_every: int = 32,
        min_lookups: int = 100,
        z_switch: float = 1.0,
        z_keep: float = 1.0,
        start: str | None = None,
        patience: float = 2.0,
    ):
        self.candidates = tuple(dict.fromkeys(("lru", *candidates)))
        if start is None:
            start = "deadline" if "deadline" in self.candidates else "lru"
        if start not in self.candidates:
            raise ValueError(f"start {start!r} is not among the candidates {self.candidates}")
        self.tokens_per_unit = tokens_per_unit
        self.shadow_pages = shadow_pages
        self.sample_depth_tokens = sample_depth_tokens
        self.margin = margin
        self.z_switch = z_switch
        self.z_keep = z_keep
        self.decide_every = decide_every
        self.min_lookups = min_lookups
        self.shadows: list[ShadowCache] | None = None  # made at the first lookup
        self.evidence = Evidence(len(self.candidates), half_life)
        self.sampled = 0
        self.lookups = 0
        self.patience = patience * min_lookups
        self.pool_pages = 0  # the live tree's pool size, in pages (an upper bound of the cache)
        self.switches = 0
        self._follow(start, None)

    @property
    def rate(self) -> float:
        """The sampling rate: each shadow holds ``shadow_pages`` of a cache this size."""
        return min(1.0, self.shadow_pages / max(self.pool_pages, 1))

    def _fresh(self, name: str) -> EvictionPolicy:
        from pcjax.cache.policies import make_policy

        return make_policy(name, tokens_per_unit=self.tokens_per_unit)

    def _follow(self, name: str, tree: "RadixTree | None") -> None:
        """Hands the live tree to a fresh ``name`` that adopts what its shadow learned: binds its
        hooks here, rebuilds every node's policy data top-down and re-pushes the evictable leaves
        with their new keys."""
        self.active_name = name
        self.active = self._fresh(name)
        if self.shadows is not None:
            learned = self.shadows[self.candidates.index(name)].tree.policy
            self.active.adopt(learned, self.rate)
        for hook in _HOOKS:
            setattr(self, hook, getattr(self.active, hook))
        if tree is None:
            return
        self.switches += 1
        nodes, i = list(tree.root.children.values()), 0
        while i < len(nodes):  # breadth first: parents first (page ids chain from the parent)
            nodes.extend(nodes[i].children.values())
            i += 1
        for node in nodes:
            node.policy_data = None
        for node in nodes:
            if node.pages:
                self.active.on_insert(node, node.last_access)
        tree._evictable.rekey_all()

    def key(self, node: "Node") -> Any:  # replaced by the active candidate's (`_follow`)
        raise AssertionError("unbound")

    def on_lookup(self, tree: "RadixTree", key: tuple) -> None:
        """``tree.match`` is looking ``key`` (page aligned) up: feeds the shadows if sampled."""
        self.pool_pages = tree.pool.capacity
        P = tree.page_size
        pages = len(key) // P
        if pages == 0:
            return
        self.lookups += 1
        too_coarse = self.sampled < self.min_lookups and self.lookups * self.rate >= self.patience
        if too_coarse and self.active_name != "lru":  # no evidence in sight: LRU is safe
            self._follow("lru", tree)
        most = max(self.sample_depth_tokens // (P * self.tokens_per_unit), 1)
        if sample_point(key[: trunk_pages(tree, key, most) * P]) >= self.rate:
            return
        if self.shadows is None:
            size = 2 * self.shadow_pages
            self.shadows = [ShadowCache(self._fresh(c), P, size) for c in self.candidates]
        capacity = max(1, round(self.rate * self.pool_pages))
        hits = [shadow.reference(key, capacity, tree.clock) for shadow in self.shadows]
        self.evidence.add(hits, pages)
        self.sampled += 1
        if self.sampled >= self.min_lookups and self.sampled % self.decide_every == 0:
            choice = self.choose()
            if choice != self.active_name:
                self._follow(choice, tree)

    def leads(self) -> dict[str, float]:
        """Each candidate's decayed hits minus LRU's, over the decayed referenced pages."""
        return {c: self.evidence.lead(i, 0) for i, c in enumerate(self.candidates)}

    def choose(self) -> str:
        """The candidate to follow now (the rule in the module docstring)."""
        ev, names = self.evidence, self.candidates
        me = names.index(self.active_name)
        best = max(range(len(names)), key=lambda i: ev.lead(i, me))
        if best != me and ev.lead(best, me) > self.margin and ev.z(best, me) > self.z_switch:
            return names[best]
        if me != 0 and ev.z(0, me) > self.z_keep:
            return "lru"  # the active one is likely worse than LRU: back to the fallback
        return self.active_name


class Evidence:
    """Decayed per-candidate hit sums of the sampled lookups, with the second moments needed
    for a paired z-score between any two candidates (the same lookups in both shadows).

    Args:
      num: candidates.
      half_life: in sampled lookups.
    """

    def __init__(self, num: int, half_life: float):
        self.decay = 0.5 ** (1.0 / half_life)
        self.n = 0.0  # decayed lookups
        self.referenced = 0.0  # decayed pages referenced
        self.sums = [0.0] * num
        self.products = [[0.0] * num for _ in range(num)]

    def add(self, hits: list[int], pages: int) -> None:
        d = self.decay
        self.n = self.n * d + 1
        self.referenced = self.referenced * d + pages
        for i, h in enumerate(hits):
            self.sums[i] = self.sums[i] * d + h
            row = self.products[i]
            for j, g in enumerate(hits):
                row[j] = row[j] * d + h * g

    def lead(self, a: int, b: int) -> float:
        """``a``'s hits minus ``b``'s, as a share of the referenced pages."""
        return (self.sums[a] - self.sums[b]) / max(self.referenced, 1e-9)

    def z(self, a: int, b: int) -> float:
        """How many standard errors ``a``'s mean hits per lookup lie above ``b``'s."""
        if self.n <= 1:
            return 0.0
        p = self.products
        mean = (self.sums[a] - self.sums[b]) / self.n
        var = (p[a][a] - 2 * p[a][b] + p[b][b]) / self.n - mean * mean
        if var <= 0:
            return 0.0 if mean == 0 else float("inf") * mean
        return mean / (var / self.n) ** 0.5
