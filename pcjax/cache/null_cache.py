"""The cache-off baseline (``enable_prefix_caching=False``): `PrefixCache` that never caches.

`match` always returns an empty result; `insert` keeps nothing and hands every page back as a
duplicate, so the engine's usual "free the duplicates" step returns them to the pool. That is only
right when the request is done with its pages, i.e. insert when a request finishes. Host-only.
"""

from collections.abc import Sequence

from pcjax.cache.base import (
    InsertResult,
    MatchResult,
    Node,
    as_key,
    as_pages,
    check_insert_lengths,
)


class NullCache:
    """A prefix cache that holds nothing; same interface as `RadixTree`.

    Args:
      page_size: tokens per page (P), used to check `insert` arguments like `RadixTree` does.
    """

    def __init__(self, page_size: int):
        if not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a positive int, got {page_size!r}")
        self.page_size = page_size
        self.root = Node((), [], None)  # the handle every call returns; locking it does nothing

    num_cached_pages = num_evictable_pages = num_locked_pages = num_host_pages = 0
    host_pool = None  # no host tier

    def match(
        self, tokens: Sequence[int], *, max_tokens: int | None = None, record: bool = True
    ) -> MatchResult:
        del record  # nothing to record
        if max_tokens is not None and max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        return MatchResult([], 0, self.root, [], self.root)

    def record_access(
        self, node: Node, tokens: Sequence[int] | None = None, *, max_tokens: int | None = None
    ) -> None:
        self._check_handle(node)

    def peek(self, tokens: Sequence[int], *, max_tokens: int | None = None) -> int:
        return 0

    def insert(self, tokens: Sequence[int], pages: Sequence[int]) -> InsertResult:
        pages = as_pages(pages)
        check_insert_lengths(as_key(tokens), pages, self.page_size)
        return InsertResult(0, pages, self.root)

    def lock(self, node: Node) -> None:
        self._check_handle(node)

    def unlock(self, node: Node) -> None:
        self._check_handle(node)

    def path_pages(self, node: Node) -> list[int]:
        self._check_handle(node)
        return []

    def load(self, node: Node) -> list[tuple[int, int]]:
        self._check_handle(node)
        return []

    def drain_offloads(self) -> list[tuple[int, int]]:
        return []

    def evict(self, num_pages: int) -> int:
        return 0

    def reset(self) -> None:
        pass

    def check_integrity(self) -> None:
        root = self.root
        assert root.key == () and root.pages == [] and not root.children and root.lock_ref == 0

    def _check_handle(self, node: Node) -> None:
        if node is not self.root:
            raise ValueError(f"{node} is not a handle of this NullCache")
