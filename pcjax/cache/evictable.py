"""The radix tree's sets of evictable leaves, kept incrementally as lazy-deletion heaps.

An evictable leaf of a tier (device or host) is a node resident in that tier with no lock and no
child resident in that tier. The tree tells a tier's set when a node becomes one (`push`, also used
to re-key a member) or stops being one (`discard`); `pop` hands out the member with the smallest
policy key. Nothing is ever rebuilt or sorted per eviction.

Lazy deletion: every `push` bumps the node's version for the tier and stores
``(key, seq, version, node)``. An entry is live while its version is the node's current one and
the node's membership flag holds; stale ones are skipped by `pop` and dropped in bulk when they
outnumber the live ones (amortized O(1) per push). ``seq`` breaks key ties in push order, so nodes
are never compared. The device set uses ``node.evictable`` / ``node.version``, the host set
``node.host_evictable`` / ``node.host_version``.
"""

import heapq
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pcjax.cache.base import Node
    from pcjax.cache.policies import EvictionPolicy

_MIN_COMPACT = 64  # never compact a heap smaller than this


class EvictableLeaves:
    """Evictable leaves of one tier ordered by ``policy.key``, smallest first.

    Args:
      policy: gives the sort keys.
      host: True for the host tier's set (its own flag and version fields on the nodes).
    """

    def __init__(self, policy: "EvictionPolicy", *, host: bool = False):
        self.policy = policy
        self._flag, self._version = (
            ("host_evictable", "host_version") if host else ("evictable", "version")
        )
        self._heap: list[tuple] = []
        self._seq = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, node: "Node") -> None:
        """Adds ``node``, or re-keys it if it is a member already."""
        if not getattr(node, self._flag):
            setattr(node, self._flag, True)
            self._size += 1
        version = getattr(node, self._version) + 1
        setattr(node, self._version, version)
        self._seq += 1
        heapq.heappush(self._heap, (self.policy.key(node), self._seq, version, node))
        if len(self._heap) > 2 * self._size + _MIN_COMPACT:
            self._compact()

    def discard(self, node: "Node") -> None:
        """Removes ``node`` if it is a member; its heap entries go stale."""
        if getattr(node, self._flag):
            setattr(node, self._flag, False)
            self._size -= 1

    def pop(self) -> "Node | None":
        """Removes and returns the member with the smallest key; None when empty."""
        heap, flag = self._heap, self._flag
        while heap:
            _, _, version, node = heapq.heappop(heap)
            if getattr(node, flag) and version == getattr(node, self._version):
                setattr(node, flag, False)
                self._size -= 1
                return node
        return None

    def rekey_all(self) -> None:
        """Re-keys every member at once (the policy's keys all changed, possibly their type:
        `pcjax.cache.adaptive` switching candidates); stale entries are dropped."""
        live = [node for *_, node in self._live()]
        self._heap = []
        for node in live:
            setattr(node, self._version, getattr(node, self._version) + 1)
            self._seq += 1
            self._heap.append(
                (self.policy.key(node), self._seq, getattr(node, self._version), node)
            )
        heapq.heapify(self._heap)

    def _live(self) -> list[tuple]:
        flag, ver = self._flag, self._version
        return [e for e in self._heap if getattr(e[3], flag) and e[2] == getattr(e[3], ver)]

    def _compact(self) -> None:
        self._heap = self._live()
        heapq.heapify(self._heap)

    def check_integrity(self, expected: set) -> None:
        """Asserts the members are exactly the nodes in ``expected``, each with one live entry whose
        key is still the policy's key for it (the key contract of `pcjax.cache.policies`)."""
        live = self._live()
        members = [e[3] for e in live]
        assert len(members) == len(set(members)), "a node has two live heap entries"
        assert set(members) == expected, "evictable set != unlocked leaves"
        assert self._size == len(members), (self._size, len(members))
        for key, _, _, node in live:
            assert key == self.policy.key(node), f"stale heap key {key!r} for {node}"
