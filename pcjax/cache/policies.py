"""Eviction policies: small strategy objects that give each evictable node a sort key.

The radix tree keeps its evictable leaves in a heap and evicts the leaf with the smallest key first.
Keys live on the tree's logical clock (a counter bumped once per `match` and per `insert`), never on
wall time, so every experiment replays exactly.

A policy reads the statistics the tree keeps on every node::

    node.created       clock when the node's tokens were first inserted (a split copies it)
    node.last_access   clock of the latest match or insert that reached the node
    node.hits          matches that reached the node
    len(node.pages)    pages the node holds (shrinks when eviction trims its tail)

A policy that needs more (segments for SLRU and S3-FIFO, an inflation value for GDSF, a future-use
oracle for Belady) overrides the optional hooks and keeps per-node state in ``node.policy_data``.
Those live in `pcjax.cache.policies_extra`; Belady, which needs the future, only in `pcjax.sim`.

The key contract: the heap stores a node's key when the node is pushed, so ``key(node)`` may only
change at the moments the tree re-pushes the node: after `on_insert`, `on_access` and `on_split`,
and after a tail trim. `RadixTree.check_integrity` verifies it.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pcjax.cache.base import Node


class EvictionPolicy:
    """Base policy: subclasses define `key`; the hooks are no-ops unless overridden."""

    name = ""

    def key(self, node: "Node") -> Any:
        """Sort key of an evictable node; the smallest key is evicted first."""
        raise NotImplementedError

    def on_insert(self, node: "Node", clock: int) -> None:
        """A node was created by `insert` (its stats are already set)."""

    def on_access(self, node: "Node", clock: int) -> None:
        """A `match` or `insert` reached ``node`` (stats already updated)."""

    def on_split(self, prefix: "Node", suffix: "Node") -> None:
        """``suffix`` (the old node object) was split; ``prefix`` is its new parent."""

    def on_evict(self, node: "Node", num_pages: int, clock: int) -> None:
        """``num_pages`` tail pages of ``node`` are about to be evicted (all of them: removal)."""

    def adopt(self, learned: "EvictionPolicy", scale: float) -> None:
        """Takes over what ``learned`` learned: another instance of this policy, run on the same
        clock over a sample of the lookups, on a cache ``scale`` times this one's size (the
        selector's shadow, `pcjax.cache.adaptive`). Called on a fresh instance, before the tree's
        nodes are handed to it by `on_insert`. Default: nothing carries over."""

    def on_lookup(self, tree: Any, key: tuple) -> None:
        """``tree.match`` is about to look ``key`` (cut to whole pages) up; the policy selector
        (`pcjax.cache.adaptive`) feeds its shadow caches from here."""


class LRUPolicy(EvictionPolicy):
    """Least recently used: evicts the leaf whose last match or insert is oldest."""

    name = "lru"

    def key(self, node: "Node") -> int:
        return node.last_access


class FIFOPolicy(EvictionPolicy):
    """First in, first out: evicts the leaf inserted earliest, however often it was hit."""

    name = "fifo"

    def key(self, node: "Node") -> int:
        return node.created


class LFUPolicy(EvictionPolicy):
    """Least frequently used: fewest hits first, least recently used among equals."""

    name = "lfu"

    def key(self, node: "Node") -> tuple[int, int]:
        return (node.hits, node.last_access)


POLICIES: dict[str, type[EvictionPolicy]] = {
    cls.name: cls for cls in (LRUPolicy, FIFOPolicy, LFUPolicy)
}


def all_policies() -> dict[str, type[EvictionPolicy]]:
    """Every policy the engine can use, by name: these, those of `pcjax.cache.policies_extra`,
    `pcjax.cache.learned_hold` and the selector of `pcjax.cache.adaptive` (imported here, not at
    the top, because they subclass `EvictionPolicy` from this module)."""
    from pcjax.cache import adaptive, learned_hold, policies_extra

    learned, selector = learned_hold.LearnedHoldPolicy, adaptive.AdaptivePolicy
    return {**POLICIES, **policies_extra.POLICIES, learned.name: learned, selector.name: selector}


def make_policy(name: str, *, tokens_per_unit: int = 1) -> EvictionPolicy:
    """A fresh policy from its name (case-insensitive; see `all_policies`).

    Args:
      name: the policy's name ("lru", "fifo", "lfu", "slru", "s3fifo", "gdsf", ...).
      tokens_per_unit: tokens per key unit, for policies that model costs in tokens (their class
        sets ``token_aware``): 1 in the engine, the trace's block size in block-level replay.

    Raises:
      ValueError: the name is unknown.
    """
    policies = all_policies()
    cls = policies.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown eviction policy {name!r}; known: {sorted(policies)}")
    if getattr(cls, "token_aware", False):
        return cls(tokens_per_unit=tokens_per_unit)
    return cls()
