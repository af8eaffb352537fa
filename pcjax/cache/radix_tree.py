"""The radix tree of cached prefixes: token sequences -> device pages and host slots. No jax.

Keys are page aligned: a node holds a run of whole pages, ``P`` tokens per page, and children are
found by their first page of tokens. The tree owns its pages in the device `PagePool` (state
CACHED) and, with a host tier, its slots in a second `PagePool` of host slots.

Example (``P = 2``; letters are tokens, numbers page ids)::

    insert("abcdef", [1, 2, 3])          match("abcdxy") ends inside node [1 2 3] after 2 pages,
                                         so the node is split at that page boundary:
    root                                 root
     └─ "abcdef" [1 2 3]                  └─ "abcd" [1 2]         <- new node: match().node
                                               └─ "ef" [3]        <- the old node object

Splitting keeps the old node object as the deeper half, so a lock handle taken earlier still ends
at the same token. A handle stays valid while it is locked; an unlocked one may be evicted.

Two tiers. Each node is on device (``pages``), on host (``host_slots``) or both, for all its pages.
Device residency along any path is a prefix of the path (a device node's parent is on device), so
`match` finds a device part followed by a host part. Eviction is leaf-only per tier: a tier's
evictable leaves are its unlocked resident nodes with no child resident in that tier, picked by the
policy's key from a heap kept incrementally (`EvictableLeaves`), and trimmed page-granularly from
the tail (splitting the node when only its tail changes tier). Worked example (``P = 1``, write
back, device pages 1-3, host slots 1-3; pairs are (from -> to) copies)::

    insert("abc", [1 2 3])  root ─ "abc" dev[1 2 3]
    evict(1)                root ─ "ab" dev[1 2] ─ "c" host[1]        queues offload (3 -> 1)
    evict(2)                root ─ "ab" host[2 3] ─ "c" host[1]       queues (1 -> 2) (2 -> 3)
    match("abcd")           device part [], host part: slots [2 3 1], host_node "c"
    lock("c"); load("c")    root ─ "ab" dev[2 1] host[2 3] ─ "c" dev[3] host[1]
                            returns loads (2 -> 2) (3 -> 1) (1 -> 3), host slot -> device page
    evict(3)                drops the device copies only: the host holds them all already

Evicted device pages go to the host as queued ``(device page, host slot)`` copies (see `tiers`);
whoever moves the bytes takes them with `drain_offloads` and must issue them before the freed
pages are reused and before any `load` copy (the engine's `KVManager` does both).

Policies. ``policy`` orders device evictions and gets the hooks: ``on_insert`` whenever a node
enters the device tier (insert, `load`, or an insert that recomputed a host-only node),
``on_access`` on matches and inserts, ``on_split``, and ``on_evict`` whenever pages leave the
device (to the host or dropped). ``host_policy`` (by default a fresh copy of ``policy``) only gives
the host tier's sort keys: right for policies whose key reads the tree's statistics (LRU, FIFO,
LFU); a policy with per-node state sees host-only nodes only through ``policy``'s hooks.
"""

import copy
from collections.abc import Callable, Sequence

from pcjax.cache import tree_check
from pcjax.cache.base import (
    InsertResult,
    MatchResult,
    Node,
    as_key,
    as_pages,
    check_insert_lengths,
    common_page_length,
)
from pcjax.cache.evictable import EvictableLeaves
from pcjax.cache.page_pool import PagePool
from pcjax.cache.policies import EvictionPolicy, make_policy
from pcjax.cache.tiers import TierOps

EvictCallback = Callable[[Node, int, list[int]], None]
"""``(node, start, pages)``: pages ``node.pages[start:]`` are about to leave the device. The node is
still in the tree and the pages still CACHED, so their KV can be copied out first."""


class RadixTree(TierOps):
    """Prefix cache over page-aligned token keys, with an optional host tier (module docstring).

    Args:
      pool: the device page pool; the tree marks pages it takes CACHED and frees those it evicts.
      page_size: tokens per page (P); ``1`` for trace replay, where a key unit is a whole block.
      policy: eviction policy, or its name for `make_policy`; LRU when None.
      evict_callback: called before evicted device pages are freed (see `EvictCallback`).
      host_pool: pool of host slot ids (slot 0 unused, like the null page); None: no host tier.
      write_through: copy a prefix to the host when it is first inserted (needs ``host_pool``);
        otherwise pages go to the host when evicted from the device (write back).
      host_policy: orders host evictions; a fresh copy of ``policy`` when None. It only gives sort
        keys (see Policies in the module docstring).
    """

    def __init__(
        self,
        pool: PagePool,
        page_size: int,
        policy: EvictionPolicy | str | None = None,
        *,
        evict_callback: EvictCallback | None = None,
        host_pool: PagePool | None = None,
        write_through: bool = False,
        host_policy: EvictionPolicy | None = None,
    ):
        if not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a positive int, got {page_size!r}")
        if write_through and host_pool is None:
            raise ValueError("write_through needs a host tier (host_pool)")
        self.pool = pool
        self.page_size = page_size
        if policy is None or isinstance(policy, str):
            policy = make_policy(policy or "lru")
        self.policy = policy
        self.evict_callback = evict_callback
        self.host_pool = host_pool
        self.write_through = write_through
        self.host_policy = host_policy or copy.deepcopy(policy)
        self.root = Node((), [], None)
        self.clock = 0  # logical time: +1 per match and per insert
        self._evictable = EvictableLeaves(self.policy)
        self._host_evictable = EvictableLeaves(self.host_policy, host=True)
        self._num_cached = 0  # device pages held by the tree
        self._num_locked = 0  # device pages held by nodes with lock_ref > 0
        self._num_host = 0  # host slots held by the tree
        self._num_host_locked = 0  # host slots held by nodes with lock_ref > 0
        self._offloads: list[tuple[int, int]] = []  # (device page, host slot) copies to issue
        self._offload_on_evict = host_pool is not None

    @property
    def num_cached_pages(self) -> int:
        """Device pages held by the tree."""
        return self._num_cached

    @property
    def num_locked_pages(self) -> int:
        """Device pages on locked paths (never evicted until unlocked)."""
        return self._num_locked

    @property
    def num_evictable_pages(self) -> int:
        """Device pages that `evict` could free by evicting repeatedly: all unlocked ones."""
        return self._num_cached - self._num_locked

    @property
    def num_host_pages(self) -> int:
        """Host slots held by the tree."""
        return self._num_host

    def match(
        self, tokens: Sequence[int], *, max_tokens: int | None = None, record: bool = True
    ) -> MatchResult:
        """Finds the longest cached prefix of ``tokens`` that is page aligned and <= ``max_tokens``.

        The engine passes ``max_tokens=len(prompt) - 1`` so at least one prompt token is computed.
        With ``P = 4`` and ``max_tokens = 9``, at most 8 tokens (2 pages) match. A match that ends
        inside a node splits it, so ``host_node`` is exactly the deepest matched node (the root for
        an empty match) and ``node`` the deepest one on device. Records an access (clock, hit
        count) on every node of the matched path, unless ``record=False``: then the caller records
        it with `record_access(host_node)` once it uses the match (the engine's scheduler matches
        a waiting request on every try but counts it only when the request is admitted).
        """
        if max_tokens is not None and max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        key = as_key(tokens)
        limit = self._lookup_limit(key, max_tokens)
        if record:
            self.policy.on_lookup(self, key if limit == len(key) else key[:limit])
        end, _, pages, host_path = self._walk(key, limit)
        if record:
            self.record_access(end)
        node = host_path[0].parent if host_path else end
        slots = [slot for n in host_path for slot in n.host_slots]
        return MatchResult(pages, len(pages) * self.page_size, node, slots, end)

    def record_access(
        self, node: Node, tokens: Sequence[int] | None = None, *, max_tokens: int | None = None
    ) -> None:
        """Records one match ending at ``node``: the clock ticks, and every node from ``node`` up
        to the root gets the new clock as its last access and one more hit (what ``match`` does
        with ``record=True``). ``tokens`` and ``max_tokens``: what was matched, shown to the
        policy's `on_lookup` cut as `match` cuts it."""
        self._check_handle(node)
        if tokens is not None:
            key = as_key(tokens)
            self.policy.on_lookup(self, key[: self._lookup_limit(key, max_tokens)])
        self.clock += 1
        self._touch(node, hit=True)

    def peek(self, tokens: Sequence[int], *, max_tokens: int | None = None) -> int:
        """How many tokens `match` would find (device and host tiers), without recording an
        access or splitting a node: the tree is left as it was (replica dispatch asks every
        replica's tree before one of them admits the request)."""
        key = as_key(tokens)
        limit = self._lookup_limit(key, max_tokens)
        P, node, pos = self.page_size, self.root, 0
        while pos < limit:
            child = node.children.get(key[pos : pos + P])
            if child is None:
                break
            n = common_page_length(child.key, key, pos, limit, P)
            node, pos = child, pos + n
            if n < len(child.key):
                break
        return pos

    def _lookup_limit(self, key: tuple, max_tokens: int | None) -> int:
        """Tokens of ``key`` a lookup may match: at most ``max_tokens``, whole pages."""
        limit = len(key) if max_tokens is None else min(len(key), max(max_tokens, 0))
        return limit - limit % self.page_size

    def insert(self, tokens: Sequence[int], pages: Sequence[int]) -> InsertResult:
        """Caches ``tokens`` whose KV is in ``pages`` (``len(tokens) == len(pages) * P``).

        The tree takes the pages for tokens it did not hold yet (IN_USE -> CACHED), and for tokens
        it holds on the host only (those nodes get the pages as their device copy). For tokens it
        holds on device, a page passed in that is the tree's own page for them (a matched prefix)
        stays the tree's; any other page passed in is a duplicate, returned for the caller to free.

        Worked example (``P = 1``). The tree holds "a" -> [1]. Requests A = "abcd" and
        B = "abcde" both match "a" -> [1]. A computes "bcd" into pages [2 7 8] and inserts first.
        B computed "bcde" into [3 4 5 6] meanwhile and inserts ``("abcde", [1 3 4 5 6])``::

            tokens:        a  b  c  d  e
            tree before:   1  2  7  8  .      (A's insert)
            pages passed:  1  3  4  5  6
            verdict:       =  d  d  d  +      (=: tree's own, d: duplicate, +: the tree takes it)

            -> InsertResult(num_existing_tokens=4, duplicate_pages=[3, 4, 5], node="e" [6])
            tree after:    root -- "a" [1] -- "bcd" [2 7 8] -- "e" [6]

        B frees [3 4 5], locks ``node`` and from now on reads "abcde" from [1 2 7 8 6], which is
        ``path_pages(node)``. Had "bcd" been on the host only, B's pages [3 4 5] would have become
        its device copy (verdict +), no duplicates.

        Raises:
          ValueError: length mismatch, or a page the tree should take is not IN_USE (the tree is
            left as it was, apart from splits that do not change its contents).
        """
        key, pages = as_key(tokens), as_pages(pages)
        check_insert_lengths(key, pages, self.page_size)
        if len(set(pages)) != len(pages):
            raise ValueError(f"insert got a page id twice: {pages}")
        self.clock += 1
        node, pos, own, host_path = self._walk(key, len(key))
        duplicates = []
        if own != pages[: len(own)]:
            duplicates = [p for p, o in zip(pages, own, strict=False) if p != o]
        adopted, i = [], len(own)
        for n in host_path:  # host-only nodes take the pages passed in as their device copy
            adopted.append((n, pages[i : i + len(n.host_slots)]))
            i += len(n.host_slots)
        taken = pages[i:]
        self.pool.mark_cached(pages[len(own) :])
        for n, mine in adopted:
            self._set_device(n, mine)
        if taken:
            node = self._add_leaf(node, key[pos:], taken)
            if self.write_through:
                self._copy_to_host(node)
        self._touch(node, hit=False)
        return InsertResult(pos, duplicates, node)

    def lock(self, node: Node) -> None:
        """Pins ``node`` and its ancestors in both tiers until `unlock`."""
        self._check_handle(node)
        while node is not self.root:
            if node.lock_ref == 0:
                self._num_locked += len(node.pages)
                self._num_host_locked += len(node.host_slots)
                if node.evictable:
                    self._evictable.discard(node)
                if node.host_evictable:
                    self._host_evictable.discard(node)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: Node) -> None:
        """Undoes one `lock` of ``node``. Unlocking an unlocked node raises ValueError."""
        self._check_handle(node)
        if node is not self.root and node.lock_ref <= 0:
            raise ValueError(f"unlock of an unlocked node {node}")
        while node is not self.root:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._num_locked -= len(node.pages)
                self._num_host_locked -= len(node.host_slots)
                self._refresh(node)
            node = node.parent

    def path_pages(self, node: Node) -> list[int]:
        """The tree's device pages for every token from the root to the end of ``node``.

        After an insert that returned duplicates, these (not the pages passed in) hold the
        request's KV: ``path_pages(result.node)`` is its page table from then on. ``node`` must be
        on device (so its whole path is).
        """
        self._check_handle(node)
        if node is not self.root and not node.pages:
            raise ValueError(f"{node} is not on device: lock it and `load` it first")
        runs = []
        while node is not self.root:
            runs.append(node.pages)
            node = node.parent
        return [page for run in reversed(runs) for page in run]

    def evict(self, num_pages: int) -> int:
        """Frees up to ``num_pages`` unlocked device pages (CACHED -> FREE), chosen by the policy.

        Example (``P = 1``, LRU, need 3, no host tier): leaves "x" [5 6] (oldest) and "y" [7 8 9].
        Leaf "x" goes whole; its parent may become a leaf. Then "y" is trimmed to [7 8]: its tail
        page 9 goes. With a host tier the victims' pages move to the host (module docstring).

        Returns:
          The number of pages freed: ``min(num_pages, num_evictable_pages)``.
        """
        victims: list[int] = []
        try:
            while len(victims) < num_pages:
                node = self._evictable.pop()
                if node is None:
                    break
                victims += self._evict_tail(node, min(num_pages - len(victims), len(node.pages)))
        finally:
            self.pool.free_cached(victims)  # one pool call for all victims, even on error
        return len(victims)

    def reset(self) -> None:
        """Drops every unlocked page and slot (no callback, no copy to the host)."""
        callback, self.evict_callback = self.evict_callback, None
        self._offload_on_evict = False
        try:
            self.evict(self.num_evictable_pages)
            if self.host_pool is not None:
                self._evict_host(self._num_host - self._num_host_locked)
        finally:
            self.evict_callback = callback
            self._offload_on_evict = self.host_pool is not None

    # ------------------------------------------------------------------------------- walking

    def _walk(self, key: tuple, limit: int) -> tuple[Node, int, list[int], list[Node]]:
        """Follows ``key[:limit]`` (page aligned) down the tree, splitting where it ends inside a
        node. Returns the deepest matched node, the matched token count, the device pages of the
        matched device part and the matched nodes past it (host only)."""
        P, node, pos, pages, host_path = self.page_size, self.root, 0, [], []
        while pos < limit:
            child = node.children.get(key[pos : pos + P])
            if child is None:
                break
            n = common_page_length(child.key, key, pos, limit, P)
            if n < len(child.key):
                child = self._split(child, n)
            if child.pages:  # after a split no child matches further: the loop ends
                pages += child.pages
            else:
                host_path.append(child)
            node, pos = child, pos + n
        return node, pos, pages, host_path

    def _split(self, node: Node, n: int) -> Node:
        """Splits ``node`` after its first ``n`` tokens; returns the new prefix node, its parent.

        The prefix copies the node's residency, stats and lock count, so counters stay right; it
        is never evictable (its one child is resident where it is). The old node is re-keyed.
        """
        P, cut = self.page_size, n // self.page_size
        prefix = Node(node.key[:n], node.pages[:cut], node.parent, node.created)
        prefix.host_slots = node.host_slots[:cut]
        prefix.last_access, prefix.hits = node.last_access, node.hits
        prefix.lock_ref = node.lock_ref
        prefix.device_children, prefix.host_children = (
            int(bool(node.pages)),
            int(bool(node.host_slots)),
        )
        node.parent.children[node.key[:P]] = prefix
        node.key, node.pages, node.parent = node.key[n:], node.pages[cut:], prefix
        node.host_slots = node.host_slots[cut:]
        prefix.children[node.key[:P]] = node
        self.policy.on_split(prefix, node)
        self._refresh(node, rekey=True)  # its size changed
        return prefix

    def _touch(self, node: Node, *, hit: bool) -> None:
        """Records an access at the current clock on ``node`` and its ancestors."""
        clock, policy = self.clock, self.policy
        while node is not self.root:
            node.last_access = clock
            node.hits += hit
            policy.on_access(node, clock)
            if node.evictable or node.host_evictable:
                self._refresh(node, rekey=True)
            node = node.parent

    def _check_handle(self, node: Node) -> None:
        if node.parent is None and node is not self.root:
            raise ValueError(f"{node} is not in the tree (evicted, or from another cache)")

    def check_integrity(self) -> None:
        """Raises AssertionError unless every invariant of both tiers holds (`tree_check`)."""
        tree_check.check_tree(self)
