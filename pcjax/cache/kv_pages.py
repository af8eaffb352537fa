"""Device side of the KV cache: the paged arrays and jitted page gather/scatter.

The cache is one pair of arrays per layer, ``f[NP, P, K, H]`` each (pages-major; see
`pcjax.kernels.ragged_paged_attention` for the layout contract). Arrays are allocated once and
updated in place by jitted steps that donate them.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """The device KV pages of every layer. Page 0 is the null page."""

    k: tuple[jax.Array, ...]  # L x f[NP, P, K, H]
    v: tuple[jax.Array, ...]  # L x f[NP, P, K, H]

    @property
    def num_layers(self) -> int:
        return len(self.k)

    @property
    def num_pages(self) -> int:
        return self.k[0].shape[0]

    @property
    def page_size(self) -> int:
        return self.k[0].shape[1]

    @property
    def page_bytes(self) -> int:
        """Bytes one page takes over all layers, K and V."""
        one = self.k[0][0]
        return 2 * self.num_layers * one.size * one.dtype.itemsize


def page_bytes(num_layers, page_size, num_kv_heads, head_dim, dtype) -> int:
    """Bytes of one page over all layers, K and V, without allocating anything."""
    return 2 * num_layers * page_size * num_kv_heads * head_dim * jnp.dtype(dtype).itemsize


def allocate_kv_cache(
    num_layers, num_pages, page_size, num_kv_heads, head_dim, dtype, *, fill_value=0.0
) -> KVCache:
    """Allocates zeroed (or `fill_value`-filled) pages for every layer."""
    shape = (num_pages, page_size, num_kv_heads, head_dim)

    def make():
        return jnp.full(shape, fill_value, dtype)

    return KVCache(
        k=tuple(make() for _ in range(num_layers)),
        v=tuple(make() for _ in range(num_layers)),
    )


@jax.jit
def gather_pages(cache: KVCache, page_ids: jax.Array):
    """Copies out pages ``page_ids`` (i32[n]) of every layer: ``(k, v)``, each f[L, n, P, K, H]."""
    k = jnp.stack([layer[page_ids] for layer in cache.k])
    v = jnp.stack([layer[page_ids] for layer in cache.v])
    return k, v


@functools.partial(jax.jit, donate_argnums=0)
def scatter_pages(cache: KVCache, page_ids: jax.Array, k: jax.Array, v: jax.Array) -> KVCache:
    """Writes pages (f[L, n, P, K, H] each) into ``page_ids`` of every layer, in place."""
    return KVCache(
        k=tuple(layer.at[page_ids].set(k[i]) for i, layer in enumerate(cache.k)),
        v=tuple(layer.at[page_ids].set(v[i]) for i, layer in enumerate(cache.v)),
    )


@functools.partial(jax.jit, donate_argnums=0, static_argnames="value")
def fill_pages(cache: KVCache, page_ids: jax.Array, value: float = float("nan")) -> KVCache:
    """Overwrites pages with `value` (NaN in debug mode, so a stale read shows up at once)."""
    return KVCache(
        k=tuple(layer.at[page_ids].set(value) for layer in cache.k),
        v=tuple(layer.at[page_ids].set(value) for layer in cache.v),
    )


def is_consumed(cache: KVCache) -> bool:
    """Whether `cache` was consumed: donated to a step that then failed, or that step's error.

    Waits for the arrays; an error raised by the computation that produced them counts as consumed.
    """
    try:
        leaves = jax.block_until_ready(jax.tree.leaves(cache))
    except Exception:  # noqa: BLE001 - an error of the step that produced it
        return True
    return any(leaf.is_deleted() for leaf in leaves)
