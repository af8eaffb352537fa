"""What every host-side prefix cache shares: the tree node, typed results and the interface.

`RadixTree` is the real cache and `NullCache` the cache-off baseline; the engine is written against
`PrefixCache` and never needs to know which one it holds. Host-only: no jax.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np


class Node:
    """A radix tree node: a run of whole pages of one cached prefix.

    ``key`` holds ``len(pages) * page_size`` tokens and ``pages[i]`` holds the KV of tokens
    ``key[i * P : (i + 1) * P]``. The tokens before ``key`` are those of the ancestors. A node is
    also the lock handle that `match` and `insert` return: locking it pins it and every ancestor.

    The tree keeps the policy statistics (``created``, ``last_access``, ``hits``, all on the tree's
    logical clock); ``policy_data`` is free for a policy's own per-node state. ``evictable`` and
    ``version`` belong to `EvictableLeaves`. More residency fields (host slots) may come later.
    """

    __slots__ = (
        "key",
        "pages",
        "parent",
        "children",
        "lock_ref",
        "created",
        "last_access",
        "hits",
        "policy_data",
        "evictable",
        "version",
    )

    def __init__(self, key: tuple, pages: list[int], parent: "Node | None", clock: int = 0):
        self.key = key  # tokens, a multiple of P of them
        self.pages = pages  # one page id per P tokens of key
        self.parent = parent  # None for the root and for evicted (detached) nodes
        self.children: dict[tuple, Node] = {}  # first page of the child's key -> child
        self.lock_ref = 0  # locks held on this node or on a descendant
        self.created = clock
        self.last_access = clock
        self.hits = 0  # matches that reached this node
        self.policy_data: Any = None
        self.evictable = False  # an unlocked leaf, in the tree's evictable set
        self.version = 0  # bumped on every push into the evictable heap

    def __repr__(self) -> str:
        return f"Node(pages={self.pages}, lock_ref={self.lock_ref}, children={len(self.children)})"


class MatchResult(NamedTuple):
    """The longest cached, page-aligned prefix of a token sequence.

    Attributes:
      pages: page ids holding the KV of the first ``num_tokens`` tokens, in order.
      num_tokens: matched tokens, ``len(pages) * page_size``.
      node: the deepest matched node (the root for an empty match); pass it to ``lock``.
    """

    pages: list[int]
    num_tokens: int
    node: Node


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

    def match(self, tokens: Sequence[int], *, max_tokens: int | None = None) -> MatchResult: ...
    def insert(self, tokens: Sequence[int], pages: Sequence[int]) -> InsertResult: ...
    def lock(self, node: Node) -> None: ...
    def unlock(self, node: Node) -> None: ...
    def path_pages(self, node: Node) -> list[int]: ...
    def evict(self, num_pages: int) -> int: ...
    def reset(self) -> None: ...
    def check_integrity(self) -> None: ...

    @property
    def num_cached_pages(self) -> int: ...
    @property
    def num_evictable_pages(self) -> int: ...
    @property
    def num_locked_pages(self) -> int: ...


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
