"""The host tier of a sharded engine: a host store per replica and the page copies to and from it.

The store mirrors the sharded device cache: one pair of arrays per layer, ``f[D * NS, P, K_s, H]``,
replica d's NS slots (slot 0 unused) in rows ``[d * NS, (d + 1) * NS)``, split like the cache
(``"data"`` over slots, ``"model"`` over KV heads), in ``pinned_host`` memory where the devices
have it (GPU, TPU and CPU all list it) and in device memory otherwise: the plain fallback. Each
shard copies its own pages and slots, with replica-local ids, under ``jax.shard_map``: the same
``dynamic_slice -> device_put -> dynamic_update_slice`` loop as `pcjax.cache.host_kv` runs on one
device. A copy batch is of one replica; the other replicas' loops run zero times.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pcjax.cache import host_kv
from pcjax.cache.kv_pages import KVCache
from pcjax.cache.page_pool import PageState
from pcjax.metrics import TransferCounters
from pcjax.parallel.mesh import DATA_AXIS, MODEL_AXIS

CACHE_SPEC = P(DATA_AXIS, None, MODEL_AXIS, None)  # f[D * NP, P, K_s, H]
_IDS = P(DATA_AXIS)  # i32[D, Q] and counts i32[D]


def store_memory_kind(mesh) -> str | None:
    """The memory kind of the host store: pinned host memory where the devices have it."""
    device = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())
    return host_kv.host_memory_kind(device)


class ShardedCopies:
    """Jitted page copies over ``mesh`` (each a shard_map; ids are replica-local, ``[D, Q]``).

    Args:
      mesh: the engine's mesh.
      memory_kind: the host store's memory kind, or None when it lives in device memory.
    """

    def __init__(self, mesh, memory_kind: str | None):
        self.mesh = mesh
        self.memory_kind = memory_kind
        to_host = jax.memory.Space.Host if memory_kind else None
        to_device = jax.memory.Space.Device if memory_kind else None
        self.swap_out = self._copy_fn(to_host)  # (host, device, pages, slots, counts) -> host
        self.swap_in = self._copy_fn(to_device)  # (device, host, slots, pages, counts) -> device
        self.fill_pages = self._fill_fn(None)  # (cache, pages, counts) -> NaN there
        self.fill_slots = self._fill_fn(to_host)  # (host, slots, counts) -> NaN there

    def _shard_map(self, fn, num_id_args: int):
        specs = (CACHE_SPEC,) * (2 if num_id_args == 3 else 1) + (_IDS,) * num_id_args
        return jax.shard_map(
            fn, mesh=self.mesh, in_specs=specs, out_specs=CACHE_SPEC, check_vma=False
        )

    def _copy_fn(self, space):
        def local(dst, src, src_ids, dst_ids, counts):
            def body(i, arrays):
                return tuple(
                    jax.lax.dynamic_update_slice_in_dim(
                        out,
                        _moved(jax.lax.dynamic_slice_in_dim(inp, src_ids[0, i], 1), space),
                        dst_ids[0, i],
                        0,
                    )
                    for out, inp in zip(arrays, src.k + src.v, strict=True)
                )

            arrays = jax.lax.fori_loop(0, counts[0], body, dst.k + dst.v)
            return _as_cache(arrays, dst.num_layers)

        return jax.jit(self._shard_map(local, 3), donate_argnums=0)

    def _fill_fn(self, space):
        def local(cache, ids, counts):
            one = cache.k[0][:1]
            page = _moved(jnp.full(one.shape, jnp.nan, one.dtype), space)

            def body(i, arrays):
                return tuple(
                    jax.lax.dynamic_update_slice_in_dim(a, page, ids[0, i], 0) for a in arrays
                )

            arrays = jax.lax.fori_loop(0, counts[0], body, cache.k + cache.v)
            return _as_cache(arrays, cache.num_layers)

        return jax.jit(self._shard_map(local, 2), donate_argnums=0)

    def index_arrays(self, replica: int, ids: np.ndarray) -> tuple:
        """``[D, Q]`` id arrays (one per column of ``ids``, i32[n, c]) and ``counts i32[D]`` with
        only row ``replica`` used; Q a power of two >= 8."""
        num_replicas = self.mesh.shape[DATA_AXIS]
        size = max(8, 1 << max(len(ids) - 1, 0).bit_length())
        columns = np.zeros((ids.shape[1], num_replicas, size), np.int32)
        columns[:, replica, : len(ids)] = ids.T
        counts = np.zeros(num_replicas, np.int32)
        counts[replica] = len(ids)
        sharding = NamedSharding(self.mesh, _IDS)
        return tuple(jax.device_put(c, sharding) for c in (*columns, counts))


def _moved(x, space):
    return x if space is None else jax.device_put(x, space)


def _as_cache(arrays, num_layers: int) -> KVCache:
    return KVCache(k=tuple(arrays[:num_layers]), v=tuple(arrays[num_layers:]))


def allocate_sharded(mesh, num_layers: int, shape, dtype, fill_value, memory_kind=None):
    """A `KVCache` of ``num_layers`` pairs of ``f[shape]`` arrays split by `CACHE_SPEC`, each
    process filling only its own shards (``memory_kind``: None for device memory)."""
    sharding = NamedSharding(mesh, CACHE_SPEC, memory_kind=memory_kind)
    dtype = jnp.dtype(dtype)

    def make():
        return jax.make_array_from_callback(
            shape, sharding, lambda index: _filled(shape, index, fill_value, dtype)
        )

    return KVCache(
        k=tuple(make() for _ in range(num_layers)), v=tuple(make() for _ in range(num_layers))
    )


def _filled(shape, index, fill_value, dtype) -> np.ndarray:
    local = tuple(len(range(*s.indices(n))) for s, n in zip(index, shape, strict=True))
    return np.full(local, fill_value, dtype)


class ReplicaTransfers:
    """The `KVManager.transfer` of one replica: issues its page copies through the runner.

    Args:
      runner: the `ShardedRunner` (holds the cache and the host store, mirrors copies to
        other processes).
      replica: the replica's index on the ``"data"`` axis.
      pool, host_pool: the replica's device and host pools (freed ids NaN-filled in debug mode).
      page_bytes: bytes of one of the replica's pages over all layers and shards.
      debug: NaN-fill freed pages and slots.
    """

    def __init__(self, runner, replica: int, pool, host_pool, page_bytes: int, debug: bool):
        self.runner = runner
        self.replica = replica
        self.pool = pool
        self.host_pool = host_pool
        self.page_bytes = page_bytes
        self.debug = debug
        self.counters = TransferCounters()

    def __call__(self, offloads: list[tuple[int, int]], loads: list[tuple[int, int]]) -> None:
        """Issues ``offloads`` (device page, host slot), debug NaN fills, then ``loads``."""
        freed_pages, freed_slots = self._freed() if self.debug else ([], [])
        if offloads or freed_pages or freed_slots:
            start = time.perf_counter()
            self.runner.copy_out(self.replica, offloads, freed_pages, freed_slots)
            self.counters.record("out", len(offloads), start)
        if loads:
            start = time.perf_counter()
            self.runner.copy_in(self.replica, loads)
            self.counters.record("in", len(loads), start)

    def _freed(self) -> tuple[list[int], list[int]]:
        pages = self.pool.drain_freed()
        if self.host_pool is None:
            return pages, []
        slots = self.host_pool.drain_freed()
        return pages, [s for s in slots if self.host_pool.state[s] == PageState.FREE]

    def stats(self) -> dict:
        """The same counters as `pcjax.engine.host_transfers.HostTransfers.stats`."""
        return self.counters.stats(self.page_bytes, self.host_pool)
