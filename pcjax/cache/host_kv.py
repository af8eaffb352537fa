"""Device side of the host tier: the host KV store and the jitted page copies to and from it.

The store mirrors the device cache: one pair of arrays per layer, ``f[NS, P, K, H]`` each (NS host
slots, slot 0 unused like the null page), in a host memory kind (``pinned_host`` where the platform
has it, as on GPU, TPU and CPU). It is allocated once; every copy updates it, or the device cache,
in place through a donated jit, so a transfer allocates nothing but its index arrays.

A batch of copies is a loop over (source, destination) pairs whose body moves one page of every
layer by ``dynamic_slice`` -> ``device_put`` to the other memory space -> ``dynamic_update_slice``,
the form XLA's host offloader turns into direct copies (a scatter or gather on host memory would be
"device compute in host memory", run slowly on the host or not at all). The index arrays are
padded to a power of two (at least 8) and the loop runs ``count`` times, so a program is compiled
per bucket, not per batch size. Copies run in order: a later copy to the same destination wins.

Measured on a shared 2-core CPU machine (jax 0.12, pcjax-small: 12 layers, 384 KiB pages, 1-128
pages a batch): the copy loops reached 1.2-5.1 GB/s each way, 0.6-3x a raw ``device_put`` of the
same bytes as one array, which allocates its destination (experiments/bench_offload.py); a
scatter / gather of the same pages on host memory reached 0.4-1.4 GB/s in a one-off comparison.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pcjax.cache.kv_pages import KVCache

_MIN_BUCKET = 8


def host_memory_kind(device: jax.Device) -> str | None:
    """The host memory kind to keep the store in: pinned where the device offers it."""
    kinds = {m.kind for m in device.addressable_memories()}
    for kind in ("pinned_host", "unpinned_host"):
        if kind in kinds:
            return kind
    return None


def allocate_host_kv(
    num_layers, num_slots, page_size, num_kv_heads, head_dim, dtype, *, fill_value=0.0, device=None
) -> KVCache:
    """Allocates the store in host memory (built from numpy: no device memory is used).

    Raises:
      ValueError: the device has no host memory kind.
    """
    device = device or jax.devices()[0]
    kind = host_memory_kind(device)
    if kind is None:
        raise ValueError(f"{device} has no host memory kind for a host KV tier")
    sharding = jax.sharding.make_single_device_sharding(device, memory_kind=kind)
    shape = (num_slots, page_size, num_kv_heads, head_dim)

    def make():
        return jax.device_put(np.full(shape, fill_value, jnp.dtype(dtype)), sharding)

    store = KVCache(
        k=tuple(make() for _ in range(num_layers)),
        v=tuple(make() for _ in range(num_layers)),
    )
    # One no-op pass through a donating jit: arrays fresh from numpy may not be donatable, its
    # outputs are, so every later transfer updates the store in place.
    return fill_slots(store, np.zeros(_MIN_BUCKET, np.int32), np.int32(0))


def index_arrays(pairs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.int32]:
    """``(src i32[Q], dst i32[Q], count)`` for a list of (source, destination) ids, padded to a
    power-of-two bucket ``Q >= 8`` with zeros the loop never reaches."""
    bucket = max(_MIN_BUCKET, 1 << (len(pairs) - 1).bit_length())
    ids = np.zeros((2, bucket), np.int32)
    if pairs:
        ids[:, : len(pairs)] = np.asarray(pairs, np.int32).T
    return ids[0], ids[1], np.int32(len(pairs))


def _copy_pages(dst: KVCache, src: KVCache, src_ids, dst_ids, count, space) -> KVCache:
    """``dst[dst_ids[i]] = src[src_ids[i]]`` for every layer, ``i < count`` in order."""

    def body(i, arrays):
        return tuple(
            jax.lax.dynamic_update_slice_in_dim(
                out,
                jax.device_put(jax.lax.dynamic_slice_in_dim(inp, src_ids[i], 1), space),
                dst_ids[i],
                0,
            )
            for out, inp in zip(arrays, src.k + src.v, strict=True)
        )

    arrays = jax.lax.fori_loop(0, count, body, dst.k + dst.v)
    num_layers = dst.num_layers
    return KVCache(k=arrays[:num_layers], v=arrays[num_layers:])


@functools.partial(jax.jit, donate_argnums=0)
def swap_out(
    host: KVCache, device: KVCache, pages: jax.Array, slots: jax.Array, count: jax.Array
) -> KVCache:
    """Copies device pages ``pages[:count]`` into host slots ``slots[:count]`` (host donated)."""
    return _copy_pages(host, device, pages, slots, count, jax.memory.Space.Host)


@functools.partial(jax.jit, donate_argnums=0)
def swap_in(
    device: KVCache, host: KVCache, slots: jax.Array, pages: jax.Array, count: jax.Array
) -> KVCache:
    """Copies host slots ``slots[:count]`` into device pages ``pages[:count]`` (device donated)."""
    return _copy_pages(device, host, slots, pages, count, jax.memory.Space.Device)


@functools.partial(jax.jit, donate_argnums=0, static_argnames="value")
def fill_slots(host: KVCache, slots: jax.Array, count: jax.Array, value=float("nan")) -> KVCache:
    """Overwrites host slots ``slots[:count]`` with ``value`` (NaN in debug mode)."""
    one = host.k[0][:1]
    page = jax.device_put(jnp.full(one.shape, value, one.dtype), jax.memory.Space.Host)

    def body(i, arrays):
        return tuple(jax.lax.dynamic_update_slice_in_dim(a, page, slots[i], 0) for a in arrays)

    arrays = jax.lax.fori_loop(0, count, body, host.k + host.v)
    return KVCache(k=arrays[: host.num_layers], v=arrays[host.num_layers :])
