"""What every host-side prefix cache shares: the tree node, typed results and the interface.

`RadixTree` is the real cache and `NullCache` the cache-off baseline; the engine is written against
`PrefixCache` and never needs to know which one it holds. Host-only: no jax.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np


class Node:
    """A radix tree node: a run of whole pages of one cached prefix.

    ``key`` holds ``num_pages * page_size`` tokens; page ``i`` of the node holds the KV of tokens
    ``key[i * P : (i + 1) * P]``. The tokens before ``key`` are those of the ancestors. A node is
    also the lock handle that `match` and `insert` return: locking it pins it and every ancestor.

    Residency (see `RadixTree`): ``pages[i]`` is page i's device page id, ``host_slots[i]`` its host
    slot id; each list is either empty (not in that tier) or holds all ``num_pages`` ids, and at
    least one is full. Without a host tier ``host_slots`` stays empty. ``device_children`` and
    ``host_children`` count the children resident in each tier.

    The tree keeps the policy statistics (``created``, ``last_access``, ``hits``, all on the tree's
    logical clock); ``policy_data`` is free for a policy's own per-node state. ``evictable`` /
    ``version`` and ``host_evictable`` / ``host_version`` belong to the device and host
    `EvictableLeaves`.
    """

    __slots__ = (
        "key",
        "pages",
        "host_slots",
        "parent",
        "children",
        "device_children",
        "host_children",
        "lock_ref",
        "created",
        "last_access",
        "hits",
        "policy_data",
        "evictable",
        "version",
        "host_evictable",
        "host_version",
    )

    def __init__(self, key: tuple, pages: list[int], parent: "Node | None", clock: int = 0):
        self.key = key  # tokens, a multiple of P of them
        self.pages = pages  # device page ids: one per P tokens of key, or [] (not on device)
        self.host_slots: list[int] = []  # host slot ids: one per P tokens of key, or []
        self.parent = parent  # None for the root and for evicted (detached) nodes
        self.children: dict[tuple, Node] = {}  # first page of the child's key -> child
        self.device_children = 0  # children with device pages
        self.host_children = 0  # children with host slots
        self.lock_ref = 0  # locks held on this node or on a descendant
        self.created = clock
        self.last_access = clock
        self.hits = 0  # matches that reached this node
        self.policy_data: Any = None
        self.evictable = False  # in the tree's device evictable set
        self.version = 0  # bumped on every push into the device evictable heap
        self.host_evictable = False  # in the tree's host evictable set
        self.host_version = 0  # bumped on every push into the host evictable heap

    @property
    def num_pages(self) -> int:
        """Pages of tokens the node covers, whichever tier holds them (size-aware policies should
        read this: ``len(pages)`` is 0 for a node that lives on the host only)."""
        return len(self.pages) or len(self.host_slots)

    def __repr__(self) -> str:
        host = f", host_slots={self.host_slots}" if self.host_slots else ""
        return (
            f"Node(pages={self.pages}{host}, lock_ref={self.lock_ref}, "
            f"children={len(self.children)})"
        )


class MatchResult(NamedTuple):
    """The longest cached, page-aligned prefix of a token sequence, split by tier.

    The device part comes first; the host part (nodes that live on the host only) follows it. With
    ``P = 2``: tokens "abcdef" matched as device "ab" [page 4] + host "cdef" [slots 7 9] give
    ``MatchResult(pages=[4], num_tokens=2, node=<"ab">, host_slots=[7, 9], host_node=<"ef">)``.

    Attributes:
      pages: device page ids holding the KV of the first ``num_tokens`` tokens, in order.
      num_tokens: tokens matched on device, ``len(pages) * page_size``.
      node: the deepest matched node on device (the root if none); pass it to ``lock``.
      host_slots: host slot ids of the next ``len(host_slots) * page_size`` tokens.
      host_node: the deepest matched node (``node`` when there is no host part; None from caches
        without a host tier); lock it and call ``load`` to bring the host part to the device.
    """

    pages: list[int]
    num_tokens: int
    node: Node
    host_slots: Sequence[int] = ()
    host_node: Node | None = None


class InsertResult(NamedTuple):
    """What `insert` did with the pages it was given.

    Attributes:
      num_existing_tokens: leading tokens the cache held already (by any page ids).
      duplicate_pages: pages passed in whose tokens the cache already held under other page ids;
        the caller still owns them (IN_USE) and frees them.
      node: the node that ends at the inserted key; pass it to ``lock``.
    """

    num_existing_tokens: int
    duplicate_pages: list[int]
    node: Node


class PrefixCache(Protocol):
    """The interface `RadixTree` and `NullCache` share (see `RadixTree` for the semantics)."""

    page_size: int
    host_pool: Any  # the `PagePool` of host slots; None without a host tier

    def match(
        self, tokens: Sequence[int], *, max_tokens: int | None = None, record: bool = True
    ) -> MatchResult: ...
    def record_access(
        self, node: Node, tokens: Sequence[int] | None = None, *, max_tokens: int | None = None
    ) -> None: ...
    def peek(self, tokens: Sequence[int], *, max_tokens: int | None = None) -> int: ...
    def insert(self, tokens: Sequence[int], pages: Sequence[int]) -> InsertResult: ...
    def lock(self, node: Node) -> None: ...
    def unlock(self, node: Node) -> None: ...
    def path_pages(self, node: Node) -> list[int]: ...
    def load(self, node: Node) -> list[tuple[int, int]]: ...
    def drain_offloads(self) -> list[tuple[int, int]]: ...
    def evict(self, num_pages: int) -> int: ...
    def reset(self) -> None: ...
    def check_integrity(self) -> None: ...

    @property
    def num_cached_pages(self) -> int: ...
    @property
    def num_evictable_pages(self) -> int: ...
    @property
    def num_locked_pages(self) -> int: ...
    @property
    def num_host_pages(self) -> int: ...


def as_key(tokens: Sequence[int]) -> tuple:
    """Tokens as a tuple of Python ints (hashable, cheap to slice and compare)."""
    if isinstance(tokens, np.ndarray):
        return tuple(tokens.tolist())
    return tokens if isinstance(tokens, tuple) else tuple(tokens)


def as_pages(pages: Sequence[int]) -> list[int]:
    """Page ids as a fresh list of Python ints."""
    return pages.tolist() if isinstance(pages, np.ndarray) else list(pages)


def check_insert_lengths(tokens: tuple, pages: list[int], page_size: int) -> None:
    if len(tokens) != len(pages) * page_size:
        raise ValueError(
            f"insert needs len(tokens) == len(pages) * page_size, got {len(tokens)} tokens, "
            f"{len(pages)} pages of {page_size}"
        )


def common_page_length(node_key: tuple, key: tuple, pos: int, limit: int, P: int) -> int:
    """Length of the common prefix of ``node_key`` and ``key[pos:limit]``, rounded down to whole
    pages (the first page is known to match).

    Example (``P = 2``): node key "abcdef", key "xabcdyz" from ``pos = 1`` -> 4 ("abcd").
    """
    n = min(len(node_key), limit - pos)
    n -= n % P
    if key[pos : pos + n] == node_key[:n]:
        return n
    i = P
    while key[pos + i] == node_key[i]:
        i += 1
    return i - i % P
