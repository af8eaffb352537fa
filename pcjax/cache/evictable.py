"""The radix tree's set of evictable leaves, kept incrementally as a lazy-deletion heap.

An evictable leaf is a tree node with no children and no lock. The tree tells this set when a node
becomes one (`push`, also used to re-key a member) or stops being one (`discard`); `pop` hands out
the member with the smallest policy key. Nothing is ever rebuilt or sorted per eviction.

Lazy deletion: every `push` bumps ``node.version`` and stores ``(key, seq, version, node)``. An
entry is live while its version is the node's current one and ``node.evictable`` holds; stale
ones are skipped by `pop` and dropped in bulk when they outnumber the live ones (amortized O(1)
per push).
``seq`` breaks key ties in push order, so nodes are never compared.
"""

import heapq
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pcjax.cache.base import Node
    from pcjax.cache.policies import EvictionPolicy

_MIN_COMPACT = 64  # never compact a heap smaller than this


class EvictableLeaves:
    """Evictable leaves ordered by ``policy.key``, smallest first."""

    def __init__(self, policy: "EvictionPolicy"):
        self.policy = policy
        self._heap: list[tuple] = []
        self._seq = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, node: "Node") -> None:
        """Adds ``node``, or re-keys it if it is a member already."""
        if not node.evictable:
            node.evictable = True
            self._size += 1
        node.version += 1
        self._seq += 1
        heapq.heappush(self._heap, (self.policy.key(node), self._seq, node.version, node))
        if len(self._heap) > 2 * self._size + _MIN_COMPACT:
            self._compact()

    def discard(self, node: "Node") -> None:
        """Removes ``node`` if it is a member; its heap entries go stale."""
        if node.evictable:
            node.evictable = False
            self._size -= 1

    def pop(self) -> "Node | None":
        """Removes and returns the member with the smallest key; None when empty."""
        heap = self._heap
        while heap:
            _, _, version, node = heapq.heappop(heap)
            if node.evictable and version == node.version:
                node.evictable = False
                self._size -= 1
                return node
        return None

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if e[3].evictable and e[2] == e[3].version]
        heapq.heapify(self._heap)

    def check_integrity(self, expected: set) -> None:
        """Asserts the members are exactly the nodes in ``expected``, each with one live entry whose
        key is still the policy's key for it (the key contract of `pcjax.cache.policies`)."""
        live = [e for e in self._heap if e[3].evictable and e[2] == e[3].version]
        members = [e[3] for e in live]
        assert len(members) == len(set(members)), "a node has two live heap entries"
        assert set(members) == expected, "evictable set != unlocked leaves"
        assert self._size == len(members), (self._size, len(members))
        for key, _, _, node in live:
            assert key == self.policy.key(node), f"stale heap key {key!r} for {node}"
