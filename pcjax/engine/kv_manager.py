"""Request-level page bookkeeping over the page pool and the prefix cache (host only, no jax).

The scheduler decides *which* requests run; this module gives them pages:

* `admit` matches the request's tokens in the prefix cache, locks the matched path and adopts its
  pages as the request's leading (shared) pages. A part of the match that lives in the host tier
  is loaded back into freshly allocated pages first, if pages can be had (else it is recomputed).
* `grow` allocates the pages that the next ``n`` tokens need, evicting cached pages by policy when
  the pool runs short.
* `cache_computed` hands the request's full, computed pages to the cache (duplicates freed) and
  moves the lock to the end of the now-cached path.
* `release` gives everything back when a request finishes or is preempted.
* `flush` issues the page copies the cache queued (offloads of evicted pages), through the
  engine's ``transfer``; it runs before every load and once per step after scheduling, so the
  copies of one step's victims go out as one batch, before anything overwrites those pages.

Worked example of `cache_computed` (P = 4, the request matched 1 page at admission)::

    tokens:    a b c d | e f g h | i j k l | m n      (14 computed tokens: 3 full pages + tail)
    req.pages: [ 7       12        13        14 ]     7 is shared (the tree's), 12-14 are own
    insert(tokens[:12], [7, 12, 13]):
       the tree already holds "abcd efgh" as pages 7, 9 (another request cached "efgh" meanwhile)
       -> duplicate_pages = [12]   (13 is taken by the tree)
    path_pages(node("ijkl")) -> [7, 9, 13]; req.pages = [7, 9, 13, 14]; free 12
    num_shared_pages = 3; the lock moves from node("abcd") to node("ijkl"); 14 stays own.
"""

import dataclasses

from pcjax.engine.request import Request


@dataclasses.dataclass(frozen=True)
class SaltedToken:
    """A request's first token tagged with its cache salt: the radix tree compares keys token by
    token, so a salted prompt shares no prefix with another salt's or with unsalted prompts."""

    salt: str
    token: int


def cache_key(req: Request, tokens: list[int]) -> list:
    """``tokens`` as the prefix cache sees them: the first one salted if the request has a salt."""
    if req.cache_salt is None or not tokens:
        return tokens
    return [SaltedToken(req.cache_salt, tokens[0]), *tokens[1:]]


class KVManager:
    """Gives requests pages from `pool`, sharing cached prefixes through `cache`.

    Args:
      pool: the `PagePool`.
      cache: a `RadixTree`, or a `NullCache` when prefix caching is off.
      page_size: P.
      caching: whether `cache` keeps pages (False for the `NullCache`): computed pages are then
        never handed over and stay the request's own until it is released.
    """

    def __init__(self, pool, cache, page_size: int, *, caching: bool, transfer=None):
        self.pool = pool
        self.cache = cache
        self.page_size = page_size
        self.caching = caching
        self.transfer = transfer  # (offloads, loads) -> None: copies pages; set by the engine
        self.hit_tokens = 0
        self.host_hit_tokens = 0  # tokens loaded back from the host tier
        self.queried_tokens = 0
        self.evicted_pages = 0

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def num_reclaimable_pages(self) -> int:
        """Pages that could be handed out now: free ones plus unlocked cached ones."""
        return self.pool.num_free + self.cache.num_evictable_pages

    def admit(self, req: Request):
        """Adopts the longest cached prefix of the request's tokens (leaving >= 1 to compute).

        The match is not recorded yet (no clock tick, no hit counts): a request that does not fit
        is released and tried again next step. Returns the deepest matched node; pass it to
        `record_hit` when the request is admitted, so each admission counts once, as in replay.
        """
        tokens = cache_key(req, req.all_token_ids)
        match = self.cache.match(tokens, max_tokens=len(tokens) - 1, record=False)
        self.cache.lock(match.node)
        node = self._load(match) if match.host_slots else match.node
        req.cache_node = node
        req.pages = list(match.pages) if node is match.node else self.cache.path_pages(node)
        req.num_shared_pages = len(req.pages)
        req.num_computed_tokens = len(req.pages) * self.page_size
        return match.host_node

    def _load(self, match) -> object:
        """Loads the host part of ``match`` (``match.node`` is locked) into new device pages if
        they can be had; returns the node that stays locked: ``host_node`` or ``node``."""
        self.cache.lock(match.host_node)
        if not self._reserve(len(match.host_slots)):
            self.cache.unlock(match.host_node)
            return match.node
        self.cache.unlock(match.node)  # the lock on host_node covers it
        loads = self.cache.load(match.host_node)
        self.flush(loads)
        self.host_hit_tokens += len(loads) * self.page_size
        return match.host_node

    def flush(self, loads: list[tuple[int, int]] = ()) -> None:
        """Issues the cache's queued offloads, then ``loads`` (host slot, device page)."""
        offloads = self.cache.drain_offloads()
        if self.transfer is not None:
            self.transfer(offloads, list(loads))
        elif offloads or loads:
            raise RuntimeError("the cache queued page copies but no transfer is set")

    def cached_prefix_tokens(self, req: Request) -> int:
        """Tokens `admit` would find cached now (both tiers), without touching the cache."""
        tokens = cache_key(req, req.all_token_ids)
        return self.cache.peek(tokens, max_tokens=len(tokens) - 1)

    def record_hit(self, req: Request, matched) -> None:
        """Records the admitted request's match in the cache (``matched``: what `admit` returned;
        the request's locked node instead if a host-tier eviction dropped it meanwhile) and counts
        its prompt hit in the stats, once per request."""
        tokens = cache_key(req, req.all_token_ids)
        node = matched if matched.parent is not None else req.cache_node
        self.cache.record_access(node, tokens, max_tokens=len(tokens) - 1)  # as `admit` matched
        if req.num_cached_tokens is None:
            req.num_cached_tokens = min(req.num_computed_tokens, len(req.prompt_token_ids))
            self.queried_tokens += len(req.prompt_token_ids)
            self.hit_tokens += req.num_cached_tokens

    def grow(self, req: Request, num_new_tokens: int) -> bool:
        """Allocates pages for the request's next tokens; False (nothing changed) if short."""
        needed = self.pages_for(req.num_computed_tokens + num_new_tokens) - len(req.pages)
        if needed <= 0:
            return True
        if not self._reserve(needed):
            return False
        req.pages.extend(self.pool.allocate(needed))
        return True

    def _reserve(self, num_pages: int) -> bool:
        shortfall = num_pages - self.pool.num_free
        if shortfall > 0:
            self.evicted_pages += self.cache.evict(shortfall)
        return self.pool.num_free >= num_pages

    def cache_computed(self, req: Request) -> None:
        """Puts the request's full computed pages into the prefix cache (see the module example)."""
        num_full = req.num_computed_tokens // self.page_size
        if not self.caching or num_full <= req.num_shared_pages:
            return
        tokens = cache_key(req, req.all_token_ids[: num_full * self.page_size])
        inserted = self.cache.insert(tokens, req.pages[:num_full])
        self.cache.lock(inserted.node)
        self.cache.unlock(req.cache_node)
        req.cache_node = inserted.node
        req.pages[:num_full] = self.cache.path_pages(inserted.node)
        req.num_shared_pages = num_full
        self.pool.free(inserted.duplicate_pages)

    def reset_cache(self) -> int:
        """Drops every cached page no request holds (both tiers); returns the device pages
        dropped. The caller flushes (debug NaN fills) when the cache is still in use."""
        before = self.cache.num_cached_pages
        self.cache.reset()
        return before - self.cache.num_cached_pages

    def stats(self) -> dict:
        """Prefix-cache and page counters, and the transfer's (see `Engine.stats`)."""
        pool, cache = self.pool, self.cache
        return {
            "prefix_cache_queried_tokens": self.queried_tokens,
            "prefix_cache_hit_tokens": self.hit_tokens,
            "prefix_cache_hit_rate": self.hit_tokens / self.queried_tokens
            if self.queried_tokens
            else 0.0,
            "prefix_cache_host_hit_tokens": self.host_hit_tokens,
            "evicted_pages": self.evicted_pages,
            "num_pages": pool.num_pages,
            "free_pages": pool.num_free,
            "cached_pages": cache.num_cached_pages,
            "in_use_pages": pool.num_in_use,
            # pages running requests hold (own and locked cached ones), of the usable pages
            "kv_cache_usage": 1 - self.num_reclaimable_pages() / pool.capacity,
            **(self.transfer.stats() if self.transfer is not None else {}),
        }

    def check_integrity(self, running) -> None:
        """Asserts page accounting: pool and cache consistent, and the own pages of ``running``
        (the requests holding pages here) exactly the pool's in-use pages."""
        self.pool.check_integrity()
        self.cache.check_integrity()
        own = [p for r in running for p in r.own_pages]
        assert len(own) == len(set(own)) == self.pool.num_in_use, "in-use pages leaked"

    def release(self, req: Request) -> None:
        """Returns the request's pages: computed full pages go to the cache, the rest are freed."""
        self.cache_computed(req)
        self.pool.free(req.own_pages)
        self.cache.unlock(req.cache_node)
        req.pages = []
        req.num_shared_pages = 0
        req.cache_node = None
        req.num_computed_tokens = 0
