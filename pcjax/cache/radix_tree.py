"""The radix tree of cached prefixes: token sequences -> device page ids. Host-only, no jax.

Keys are page aligned: a node holds a run of whole pages, ``P`` tokens per page, and children are
found by their first page of tokens. The tree owns its pages in the `PagePool` (state CACHED).

Example (``P = 2``; letters are tokens, numbers page ids)::

    insert("abcdef", [1, 2, 3])          match("abcdxy") ends inside node [1 2 3] after 2 pages,
                                         so the node is split at that page boundary:
    root                                 root
     └─ "abcdef" [1 2 3]                  └─ "abcd" [1 2]         <- new node: match().node
                                               └─ "ef" [3]        <- the old node object

Splitting keeps the old node object as the deeper half, so a lock handle taken earlier still ends
at the same token. A handle stays valid while it is locked; an unlocked one may be evicted.

Eviction is leaf-only and page granular: the policy picks the leaf with the smallest key from an
incrementally kept heap (`EvictableLeaves`); if the leaf holds more pages than still needed, only
its tail pages go. A parent whose last child goes becomes an evictable leaf itself.
"""

from collections.abc import Callable, Sequence

from pcjax.cache.base import (
    InsertResult,
    MatchResult,
    Node,
    as_key,
    as_pages,
    check_insert_lengths,
)
from pcjax.cache.evictable import EvictableLeaves
from pcjax.cache.page_pool import PagePool, PageState
from pcjax.cache.policies import EvictionPolicy, make_policy

EvictCallback = Callable[[Node, int, list[int]], None]
"""``(node, start, pages)``: pages ``node.pages[start:]`` are about to be evicted. The node is still
in the tree and the pages still CACHED, so their KV can be copied out (host offload) first."""


class RadixTree:
    """Prefix cache over page-aligned token keys (see the module docstring).

    Args:
      pool: the page pool; the tree marks pages it takes CACHED and frees those it evicts.
      page_size: tokens per page (P); ``1`` for trace replay, where a key unit is a whole block.
      policy: eviction policy, or its name for `make_policy`; LRU when None.
      evict_callback: called before evicted pages are freed (see `EvictCallback`).
    """

    def __init__(
        self,
        pool: PagePool,
        page_size: int,
        policy: EvictionPolicy | str | None = None,
        *,
        evict_callback: EvictCallback | None = None,
    ):
        if not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a positive int, got {page_size!r}")
        self.pool = pool
        self.page_size = page_size
        if policy is None or isinstance(policy, str):
            policy = make_policy(policy or "lru")
        self.policy = policy
        self.evict_callback = evict_callback
        self.root = Node((), [], None)
        self.clock = 0  # logical time: +1 per match and per insert
        self._evictable = EvictableLeaves(self.policy)
        self._num_cached = 0  # pages held by the tree
        self._num_locked = 0  # pages held by nodes with lock_ref > 0

    @property
    def num_cached_pages(self) -> int:
        return self._num_cached

    @property
    def num_locked_pages(self) -> int:
        """Pages on locked paths (never evicted until unlocked)."""
        return self._num_locked

    @property
    def num_evictable_pages(self) -> int:
        """Pages that `evict` could free by evicting repeatedly: all unlocked ones."""
        return self._num_cached - self._num_locked

    def match(self, tokens: Sequence[int], *, max_tokens: int | None = None) -> MatchResult:
        """Finds the longest cached prefix of ``tokens`` that is page aligned and <= ``max_tokens``.

        The engine passes ``max_tokens=len(prompt) - 1`` so at least one prompt token is computed.
        With ``P = 4`` and ``max_tokens = 9``, at most 8 tokens (2 pages) match. A match that ends
        inside a node splits it, so ``node`` is exactly the deepest matched node (the root for an
        empty match). Records an access (clock, hit count) on every node of the matched path.
        """
        key = as_key(tokens)
        limit = len(key) if max_tokens is None else min(len(key), max_tokens)
        if limit < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        limit -= limit % self.page_size
        self.clock += 1
        node, pos, pages = self._walk(key, limit)
        self._touch(node, hit=True)
        return MatchResult(pages, pos, node)

    def insert(self, tokens: Sequence[int], pages: Sequence[int]) -> InsertResult:
        """Caches ``tokens`` whose KV is in ``pages`` (``len(tokens) == len(pages) * P``).

        The tree takes the pages for tokens it did not hold yet (IN_USE -> CACHED). For tokens it
        held already, a page passed in that is the tree's own page for them (a matched prefix)
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
        ``path_pages(node)``.

        Raises:
          ValueError: length mismatch, or a page the tree should take is not IN_USE (the tree is
            left as it was, apart from splits that do not change its contents).
        """
        key, pages = as_key(tokens), as_pages(pages)
        check_insert_lengths(key, pages, self.page_size)
        if len(set(pages)) != len(pages):
            raise ValueError(f"insert got a page id twice: {pages}")
        self.clock += 1
        node, pos, own = self._walk(key, len(key))
        taken = pages[len(own) :]
        duplicates = []
        if own != pages[: len(own)]:
            duplicates = [p for p, o in zip(pages, own, strict=False) if p != o]
        if taken:
            self.pool.mark_cached(taken)
            node = self._add_leaf(node, key[pos:], taken)
        self._touch(node, hit=False)
        return InsertResult(pos, duplicates, node)

    def lock(self, node: Node) -> None:
        """Pins ``node`` and its ancestors: their pages are not evicted until `unlock`."""
        self._check_handle(node)
        while node is not self.root:
            if node.lock_ref == 0:
                self._num_locked += len(node.pages)
                self._evictable.discard(node)
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
                if not node.children:
                    self._evictable.push(node)
            node = node.parent

    def path_pages(self, node: Node) -> list[int]:
        """The tree's pages for every token from the root to the end of ``node``.

        After an insert that returned duplicates, these (not the pages passed in) hold the
        request's KV: ``path_pages(result.node)`` is its page table from then on.
        """
        self._check_handle(node)
        runs = []
        while node is not self.root:
            runs.append(node.pages)
            node = node.parent
        return [page for run in reversed(runs) for page in run]

    def evict(self, num_pages: int) -> int:
        """Frees up to ``num_pages`` unlocked pages (CACHED -> FREE), victims chosen by the policy.

        Example (``P = 1``, LRU, need 3): leaves "x" [5 6] (oldest) and "y" [7 8 9]. Leaf "x" goes
        whole; its parent may become a leaf. Then "y" is trimmed to [7 8]: its tail page 9 goes.

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
        """Drops every unlocked page (without calling the evict callback)."""
        callback, self.evict_callback = self.evict_callback, None
        try:
            self.evict(self.num_evictable_pages)
        finally:
            self.evict_callback = callback

    def _walk(self, key: tuple, limit: int) -> tuple[Node, int, list[int]]:
        """Follows ``key[:limit]`` (page aligned) down the tree, splitting where it ends inside a
        node. Returns the deepest matched node, the matched token count and its pages."""
        P, node, pos, pages = self.page_size, self.root, 0, []
        while pos < limit:
            child = node.children.get(key[pos : pos + P])
            if child is None:
                break
            n = _common_length(child.key, key, pos, limit, P)
            if n < len(child.key):
                child = self._split(child, n)
            pages += child.pages  # after a split no child matches further: the loop ends
            node, pos = child, pos + n
        return node, pos, pages

    def _split(self, node: Node, n: int) -> Node:
        """Splits ``node`` after its first ``n`` tokens; returns the new prefix node, its parent.

        The prefix copies the node's stats and lock count, so counters and the heap stay right.
        """
        P, cut = self.page_size, n // self.page_size
        prefix = Node(node.key[:n], node.pages[:cut], node.parent, node.created)
        prefix.last_access, prefix.hits = node.last_access, node.hits
        prefix.lock_ref = node.lock_ref
        node.parent.children[node.key[:P]] = prefix
        node.key, node.pages, node.parent = node.key[n:], node.pages[cut:], prefix
        prefix.children[node.key[:P]] = node
        self.policy.on_split(prefix, node)
        if node.evictable:
            self._evictable.push(node)  # its size changed: re-key
        return prefix

    def _add_leaf(self, parent: Node, key: tuple, pages: list[int]) -> Node:
        leaf = Node(key, pages, parent, self.clock)
        parent.children[key[: self.page_size]] = leaf
        self._evictable.discard(parent)
        self._num_cached += len(pages)
        self.policy.on_insert(leaf, self.clock)
        self._evictable.push(leaf)
        return leaf

    def _touch(self, node: Node, *, hit: bool) -> None:
        """Records an access at the current clock on ``node`` and its ancestors."""
        clock, policy, path = self.clock, self.policy, node
        while path is not self.root:
            path.last_access = clock
            path.hits += hit
            policy.on_access(path, clock)
            path = path.parent
        if node.evictable:
            self._evictable.push(node)  # only the deepest node can be a leaf: re-key it

    def _evict_tail(self, node: Node, k: int) -> list[int]:
        """Takes the last ``k`` pages off the leaf ``node`` (just popped from the evictable set),
        removing the node when that is all of them. Returns those pages; the caller frees them."""
        start = len(node.pages) - k
        victims = node.pages[start:]
        if self.evict_callback is not None:
            self.evict_callback(node, start, victims)
        self.policy.on_evict(node, k, self.clock)
        if start == 0:
            self._remove_leaf(node)
        else:
            del node.pages[start:]
            node.key = node.key[: start * self.page_size]
            self._evictable.push(node)  # still an unlocked leaf, smaller: re-key
        self._num_cached -= k
        return victims

    def _remove_leaf(self, node: Node) -> None:
        parent = node.parent
        del parent.children[node.key[: self.page_size]]
        node.parent = None
        if parent is not self.root and parent.lock_ref == 0 and not parent.children:
            self._evictable.push(parent)

    def _check_handle(self, node: Node) -> None:
        if node.parent is None and node is not self.root:
            raise ValueError(f"{node} is not in the tree (evicted, or from another cache)")

    def check_integrity(self) -> None:
        """Raises AssertionError unless every invariant of the tree holds.

        Checked: each node's page count matches its key length and its children are filed under
        their first page; page ids are unique and all CACHED in the pool, and the counters match;
        a node's lock count covers its children's; stats never make a child newer than its parent;
        the evictable set is exactly the unlocked leaves, each keyed by its current policy key.
        """
        root, P = self.root, self.page_size
        assert root.key == () and root.pages == [] and root.parent is None
        assert root.lock_ref == 0 and not root.evictable
        pages, locked, leaves, stack = [], 0, set(), [root]
        while stack:
            node = stack.pop()
            for first, child in node.children.items():
                assert child.parent is node and first == child.key[:P], (node, child)
                assert child.created >= node.created or node is root, (node, child)
                assert child.last_access <= node.last_access or node is root, (node, child)
                assert child.hits <= node.hits or node is root, (node, child)
                stack.append(child)
            if node is root:
                continue
            assert node.pages and len(node.key) == len(node.pages) * P, node
            assert node.lock_ref >= sum(c.lock_ref for c in node.children.values()) >= 0, node
            pages += node.pages
            locked += len(node.pages) if node.lock_ref else 0
            assert node.evictable == (node.lock_ref == 0 and not node.children), node
            if node.evictable:
                leaves.add(node)
        assert len(set(pages)) == len(pages), "a page id is held by two nodes"
        assert (self.pool.state[pages] == PageState.CACHED).all(), "tree page not CACHED"
        assert len(pages) == self._num_cached == self.pool.num_cached, len(pages)
        assert locked == self._num_locked, (locked, self._num_locked)
        self._evictable.check_integrity(leaves)


def _common_length(node_key: tuple, key: tuple, pos: int, limit: int, P: int) -> int:
    """Length of the common prefix of ``node_key`` and ``key[pos:limit]``, rounded down to whole
    pages (the first page is known to match)."""
    n = min(len(node_key), limit - pos)
    n -= n % P
    if key[pos : pos + n] == node_key[:n]:
        return n
    i = P
    while key[pos + i] == node_key[i]:
        i += 1
    return i - i % P
