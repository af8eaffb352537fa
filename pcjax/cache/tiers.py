"""Residency changes and eviction in both tiers of the `RadixTree` (see its module docstring).

`TierOps` is the half of `RadixTree` that moves pages between tiers: it keeps each node's
membership in the two evictable sets (`_refresh`), changes a node's residency with the tree's
counters in step, evicts device pages (to the host, or dropped) and host slots, loads host-only
paths back to the device (`load`) and hands out the queued offload copies (`drain_offloads`). It
works on the fields `RadixTree.__init__` sets and is not used on its own. Host-only: no jax.

Device eviction of a device leaf's last ``k`` pages (``_evict_tail``)::

    on host already?  ──yes──> split off the k-page tail if needed; drop its device copy
          │ no
    host tier has room for k (host-evicting unlocked host leaves)?
          ├─yes──> split off the tail; give it k slots; queue (page -> slot) copies; drop device
          └─no───> childless: trim the k tail pages (or remove the node), as without a host tier
                   else: split off the tail and remove it with its host-only subtree

So a victim's pages move to the host, or the device copy is just dropped when the host holds them
already; the copies are queued in ``_offloads`` for `RadixTree.drain_offloads`. Without a host
tier, or when the host cannot make room (its slots locked), pages are dropped. With write through
a prefix gets its host copy when first inserted. Host eviction of a host leaf's last ``k`` slots:
a host-only node (always childless) is trimmed or removed, a node also on device keeps its device
copy and loses the host one (splitting off the tail if needed).
"""

from pcjax.cache.base import Node


class TierOps:
    """Mixin of `RadixTree`: residency bookkeeping and eviction for both tiers."""

    def _refresh(self, node: Node, *, rekey: bool = False) -> None:
        """Puts ``node`` into each tier's evictable set it belongs to and out of the others;
        ``rekey`` re-pushes members whose policy key may have changed."""
        if node is self.root:
            return
        free = node.lock_ref == 0
        if free and node.pages and not node.device_children:
            if rekey or not node.evictable:
                self._evictable.push(node)
        elif node.evictable:
            self._evictable.discard(node)
        if free and node.host_slots and not node.host_children:
            if rekey or not node.host_evictable:
                self._host_evictable.push(node)
        elif node.host_evictable:
            self._host_evictable.discard(node)

    def load(self, node: Node) -> list[tuple[int, int]]:
        """Gives every host-only node on the path to ``node`` freshly allocated device pages.

        ``node`` must be locked (so nothing on the path is evicted meanwhile) and the pool must
        have the pages free (evict first). The caller copies the KV: issue `drain_offloads` first,
        then each returned ``(host slot, device page)`` pair, before the pages are read. The nodes
        keep their host copies, so evicting them again later costs no copy.

        Raises:
          ValueError: ``node`` is not locked. PoolExhaustedError: too few free pages (no change).
        """
        self._check_handle(node)
        if node is not self.root and node.lock_ref == 0:
            raise ValueError(f"lock {node} before loading it")
        path = []
        while node is not self.root and not node.pages:
            path.append(node)
            node = node.parent
        pages = self.pool.allocate(sum(len(n.host_slots) for n in path))
        self.pool.mark_cached(pages)
        copies, i = [], 0
        for n in reversed(path):
            mine, i = pages[i : i + len(n.host_slots)], i + len(n.host_slots)
            copies += zip(n.host_slots, mine, strict=True)
            self._set_device(n, mine)
        return copies

    def drain_offloads(self) -> list[tuple[int, int]]:
        """The ``(device page, host slot)`` copies queued since the last call, in order.

        Issue them in this order (a later copy to the same slot wins) before any freed page is
        reused and before any `load` copy.
        """
        offloads, self._offloads = self._offloads, []
        return offloads

    def _add_leaf(self, parent: Node, key: tuple, pages: list[int]) -> Node:
        leaf = Node(key, pages, parent, self.clock)
        parent.children[key[: self.page_size]] = leaf
        parent.device_children += 1
        self._num_cached += len(pages)
        self.policy.on_insert(leaf, self.clock)
        self._refresh(leaf)
        self._refresh(parent)
        return leaf

    def _remove_leaf(self, node: Node) -> None:
        """Detaches a childless node (its pages and slots are already accounted for)."""
        parent = node.parent
        del parent.children[node.key[: self.page_size]]
        parent.device_children -= bool(node.pages)
        parent.host_children -= bool(node.host_slots)
        node.parent = None
        self._evictable.discard(node)
        self._host_evictable.discard(node)
        self._refresh(parent)

    def _set_device(self, node: Node, pages: list[int]) -> None:
        """A host-only node gets device pages (already CACHED): it re-enters the device tier."""
        node.pages = pages
        self.policy.on_insert(node, self.clock)
        node.parent.device_children += 1
        self._num_cached += len(pages)
        self._num_locked += len(pages) if node.lock_ref else 0
        self._refresh(node)
        self._refresh(node.parent)

    def _drop_device(self, node: Node) -> list[int]:
        """An unlocked device leaf loses its device pages (it keeps or gets a host copy)."""
        pages, node.pages = node.pages, []
        node.parent.device_children -= 1
        self._num_cached -= len(pages)
        self._refresh(node)
        self._refresh(node.parent)
        return pages

    def _set_host(self, node: Node, slots: list[int]) -> None:
        node.host_slots = slots
        node.parent.host_children += 1
        self._num_host += len(slots)
        self._num_host_locked += len(slots) if node.lock_ref else 0
        self._refresh(node)
        self._refresh(node.parent)

    def _drop_host(self, node: Node) -> list[int]:
        """An unlocked node that is also on device loses its host slots; returns them."""
        slots, node.host_slots = node.host_slots, []
        node.parent.host_children -= 1
        self._num_host -= len(slots)
        self._refresh(node)
        self._refresh(node.parent)
        return slots

    # ------------------------------------------------------------------------------ eviction

    def _evict_tail(self, node: Node, k: int) -> list[int]:
        """Takes the last ``k`` device pages off the device leaf ``node`` (just popped from the
        device set): to the host if it can hold them, else dropped. Returns the pages; the caller
        frees them."""
        start = len(node.pages) - k
        victims = node.pages[start:]
        if self.evict_callback is not None:
            self.evict_callback(node, start, victims)
        to_host = bool(node.host_slots) or (self._offload_on_evict and self._make_host_room(k))
        if not to_host and not node.children:
            self._trim_device(node, start)
            return victims
        if start:
            self._split(node, start * self.page_size)  # node is now the k-page tail
        self.policy.on_evict(node, k, self.clock)
        if not to_host:
            self._remove_subtree(node)  # it cannot keep its host-only descendants
        elif node.host_slots:
            self._drop_device(node)
        else:
            self._copy_to_host(node, evicting=True)
        return victims

    def _trim_device(self, node: Node, start: int) -> None:
        """Drops device pages ``start:`` of a childless node that is not on the host."""
        k = len(node.pages) - start
        self.policy.on_evict(node, k, self.clock)
        self._num_cached -= k
        if start == 0:
            self._remove_leaf(node)
        else:
            del node.pages[start:]
            node.key = node.key[: start * self.page_size]
            self._refresh(node, rekey=True)  # still an unlocked leaf, smaller

    def _remove_subtree(self, node: Node) -> None:
        """Removes an unlocked device leaf that is not on the host, and its host-only subtree."""
        self._num_cached -= len(node.pages)
        stack, slots = [node], []
        while stack:
            n = stack.pop()
            slots += n.host_slots
            stack += n.children.values()
            self._host_evictable.discard(n)
            if n is not node:
                n.parent = None
        self._num_host -= len(slots)
        node.children, node.host_children = {}, 0
        self._remove_leaf(node)
        if slots:
            self.host_pool.free_cached(slots)

    def _copy_to_host(self, node: Node, *, evicting: bool = False) -> bool:
        """Gives a device node host slots and queues the copies; False if the host has no room.
        ``evicting``: room was made already, and the device copy goes."""
        k = len(node.pages)
        if not evicting and not self._make_host_room(k):
            return False
        slots = self.host_pool.allocate(k)
        self.host_pool.mark_cached(slots)
        pages = self._drop_device(node) if evicting else node.pages
        self._offloads += zip(pages, slots, strict=True)
        self._set_host(node, slots)
        return True

    def _make_host_room(self, k: int) -> bool:
        """Frees host slots by host eviction until ``k`` are free; False (nothing evicted) if even
        evicting every unlocked slot would not do."""
        short = k - self.host_pool.num_free
        if short > self._num_host - self._num_host_locked:
            return False
        if short > 0:
            self._evict_host(short)
        return True

    def _evict_host(self, num_slots: int) -> int:
        """Frees up to ``num_slots`` unlocked host slots, host leaves chosen by the host policy."""
        freed: list[int] = []
        try:
            while len(freed) < num_slots:
                node = self._host_evictable.pop()
                if node is None:
                    break
                freed += self._evict_host_tail(node, min(num_slots - len(freed), node.num_pages))
        finally:
            self.host_pool.free_cached(freed)
        return len(freed)

    def _evict_host_tail(self, node: Node, k: int) -> list[int]:
        """Takes the last ``k`` slots off the host leaf ``node``; returns them."""
        start = len(node.host_slots) - k
        if node.pages:  # also on device: keep that copy, drop the host one
            if start:
                self._split(node, start * self.page_size)
            return self._drop_host(node)
        victims = node.host_slots[start:]  # host only, hence childless
        self._num_host -= k
        if start == 0:
            self._remove_leaf(node)
        else:
            del node.host_slots[start:]
            node.key = node.key[: start * self.page_size]
            self._refresh(node, rekey=True)
        return victims
