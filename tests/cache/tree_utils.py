"""Helpers the cache tests share: read a tree's contents back, run one request through it."""

from pcjax.cache.base import Node
from pcjax.cache.page_pool import PagePool
from pcjax.cache.policies import EvictionPolicy
from pcjax.cache.radix_tree import RadixTree


def make_tree(page_size: int, capacity: int = 32, policy: EvictionPolicy | None = None, **kw):
    return RadixTree(PagePool(capacity + 1), page_size, policy, **kw)


def check(tree) -> None:
    """Integrity of the tree and of its pool: call after every mutation."""
    tree.check_integrity()
    tree.pool.check_integrity()


def contents(tree: RadixTree) -> dict[tuple, int]:
    """Every cached page-aligned prefix -> the page holding its last page of tokens."""
    out, stack, P = {}, [(tree.root, ())], tree.page_size
    while stack:
        node, prefix = stack.pop()
        for i, page in enumerate(node.pages):
            out[prefix + tuple(node.key[: (i + 1) * P])] = page
        stack += [(child, prefix + tuple(node.key)) for child in node.children.values()]
    return out


def tier_contents(tree: RadixTree) -> dict[tuple, tuple[int | None, int | None]]:
    """Every cached page-aligned prefix -> (device page, host slot) of its last page (None: not
    in that tier)."""
    out, stack, P = {}, [(tree.root, ())], tree.page_size
    while stack:
        node, prefix = stack.pop()
        for i in range(node.num_pages if node is not tree.root else 0):
            page = node.pages[i] if node.pages else None
            slot = node.host_slots[i] if node.host_slots else None
            out[prefix + tuple(node.key[: (i + 1) * P])] = (page, slot)
        stack += [(child, prefix + tuple(node.key)) for child in node.children.values()]
    return out


def path_tokens(node: Node) -> tuple:
    """All tokens from the root to the end of ``node``."""
    keys = []
    while node is not None and node.parent is not None:
        keys.append(node.key)
        node = node.parent
    return tuple(t for key in reversed(keys) for t in key)


def cache_request(tree: RadixTree, tokens, max_tokens=None):
    """One finished request: match, allocate the rest, insert, free duplicates. Checks integrity."""
    m = tree.match(tokens, max_tokens=max_tokens)
    tree.lock(m.node)
    new = tree.pool.allocate(len(tokens) // tree.page_size - len(m.pages))
    result = tree.insert(tokens, m.pages + new)
    tree.pool.free(result.duplicate_pages)
    tree.unlock(m.node)
    check(tree)
    return result


class SizeKeyedPolicy(EvictionPolicy):
    """A test policy whose key depends on the node's size (as GDSF's does): largest leaf first.

    It only stays valid if the tree re-keys a node whenever a split or a trim changes its size.
    """

    name = "size"

    def key(self, node: Node):
        return (-node.num_pages, node.last_access)
