"""`RadixTree.check_integrity`: every invariant of both tiers, asserted by a walk of the tree.

Kept apart from `radix_tree` because it reads all of the tree's private counters; tests call it
after every mutation, the engine after every step in debug mode. Host-only: no jax.
"""

from typing import TYPE_CHECKING

from pcjax.cache.page_pool import PageState

if TYPE_CHECKING:
    from pcjax.cache.base import Node
    from pcjax.cache.radix_tree import RadixTree


def check_tree(tree: "RadixTree") -> None:
    """Raises AssertionError unless every invariant of ``tree`` holds.

    Checked per node: its key is whole pages and each tier holds all of them or none (at least
    one tier); a device node's parent is on device (device residency is a prefix of every path);
    children are filed under their first page and counted per tier; a node's lock count covers its
    children's; stats never make a child newer than its parent; each tier's evictable set is
    exactly its unlocked resident nodes with no child resident in the tier, keyed by the policy's
    current key. Per tier: ids unique and CACHED in the tier's pool, counters equal to the pool's.
    """
    root, host_pool = tree.root, tree.host_pool
    assert root.key == () and root.pages == [] and root.host_slots == [] and root.parent is None
    assert root.lock_ref == 0 and not root.evictable and not root.host_evictable
    pages, slots, locked, host_locked = [], [], 0, 0
    leaves, host_leaves, stack = set(), set(), [root]
    while stack:
        node = stack.pop()
        _check_children(node, root, tree.page_size)
        stack.extend(node.children.values())
        if node is root:
            continue
        _check_node(node, root, tree.page_size)
        pages += node.pages
        slots += node.host_slots
        if node.lock_ref:
            locked += len(node.pages)
            host_locked += len(node.host_slots)
        if node.evictable:
            leaves.add(node)
        if node.host_evictable:
            host_leaves.add(node)
    _check_ids("page", pages, tree.pool, tree.num_cached_pages)
    assert locked == tree.num_locked_pages, (locked, tree.num_locked_pages)
    tree._evictable.check_integrity(leaves)
    if host_pool is None:
        assert not slots and not tree._offloads, "host slots without a host tier"
        return
    host_pool.check_integrity()
    _check_ids("host slot", slots, host_pool, tree.num_host_pages)
    assert host_locked == tree._num_host_locked, (host_locked, tree._num_host_locked)
    tree._host_evictable.check_integrity(host_leaves)


def _check_children(node: "Node", root: "Node", P: int) -> None:
    children = node.children.values()
    for first, child in node.children.items():
        assert child.parent is node and first == child.key[:P], (node, child)
        if node is not root:
            assert child.created >= node.created, (node, child)
            assert child.last_access <= node.last_access, (node, child)
            assert child.hits <= node.hits, (node, child)
    assert node.device_children == sum(bool(c.pages) for c in children), node
    assert node.host_children == sum(bool(c.host_slots) for c in children), node
    assert node is root or node.lock_ref >= sum(c.lock_ref for c in children) >= 0, node


def _check_node(node: "Node", root: "Node", P: int) -> None:
    n = len(node.key) // P
    assert n > 0 and len(node.key) == n * P, node
    assert len(node.pages) in (0, n) and len(node.host_slots) in (0, n), node
    assert node.pages or node.host_slots, f"{node} is in neither tier"
    assert not node.pages or node.parent is root or node.parent.pages, f"{node}: parent off device"
    free = node.lock_ref == 0
    assert node.evictable == bool(free and node.pages and not node.device_children), node
    assert node.host_evictable == bool(free and node.host_slots and not node.host_children), node


def _check_ids(what: str, ids: list[int], pool, count: int) -> None:
    assert len(set(ids)) == len(ids), f"a {what} id is held by two nodes"
    assert (pool.state[ids] == PageState.CACHED).all(), f"tree {what} not CACHED"
    assert len(ids) == count == pool.num_cached, (what, len(ids), count, pool.num_cached)
