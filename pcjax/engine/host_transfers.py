"""Carries out the page copies the prefix cache decides, between the device cache and the host.

`KVManager.flush` calls a `HostTransfers` with the cache's queued offloads and, at admission, the
loads of a host hit. One call issues, in this order:

1. every offload ``(device page, host slot)``: one jitted copy loop for the whole batch;
2. in debug mode, NaN over the device pages and host slots freed since the last call (after 1,
   which still reads the evicted pages; slots reused meanwhile are left alone);
3. every load ``(host slot, device page)``: one jitted copy loop.

Nothing waits for the copies: JAX dispatches them asynchronously and orders them with the steps
that donate the device cache, so an offload overlaps whatever the host does next and is only
waited for when its pages are overwritten. The times in `stats` are what the engine thread spends
issuing copies (the critical path), not the copies' own durations (experiments/bench_offload.py
measures those).
"""

import time

import numpy as np

from pcjax.cache import host_kv, kv_pages
from pcjax.cache.page_pool import PageState
from pcjax.metrics import TransferCounters


class HostTransfers:
    """Owns the host KV store (None without a host tier) and copies pages for the cache.

    Args:
      runner: holds the device cache as ``runner.kv_cache`` (read, and replaced after a load).
      pool: the device `PagePool` (freed pages are NaN-filled from it in debug mode).
      host_pool: the host slot pool of the tree, or None without a host tier.
      model_config: gives the store's layer count and head shape.
      page_size, dtype: as the device cache's.
      debug: NaN-fill freed pages and slots, and the store at first.
    """

    def __init__(self, runner, pool, host_pool, model_config, page_size: int, dtype, debug: bool):
        self.runner = runner
        self.pool = pool
        self.host_pool = host_pool
        self.debug = debug
        mc = model_config
        shape = (mc.num_layers, page_size, mc.num_kv_heads, mc.head_dim, dtype)
        self.page_bytes = kv_pages.page_bytes(*shape)
        self.host_kv = None
        if host_pool is not None:
            self.host_kv = host_kv.allocate_host_kv(
                mc.num_layers,
                host_pool.num_pages,
                page_size,
                mc.num_kv_heads,
                mc.head_dim,
                dtype,
                fill_value=float("nan") if debug else 0.0,
            )
        self.counters = TransferCounters()

    def __call__(self, offloads: list[tuple[int, int]], loads: list[tuple[int, int]]) -> None:
        """Issues ``offloads`` (device page, host slot), debug NaN fills, then ``loads``."""
        if offloads:
            start = time.perf_counter()
            self.host_kv = host_kv.swap_out(
                self.host_kv, self.runner.kv_cache, *host_kv.index_arrays(offloads)
            )
            self.counters.record("out", len(offloads), start)
        if self.debug:
            self._nan_fill_freed()
        if loads:
            start = time.perf_counter()
            self.runner.kv_cache = host_kv.swap_in(
                self.runner.kv_cache, self.host_kv, *host_kv.index_arrays(loads)
            )
            self.counters.record("in", len(loads), start)

    def _nan_fill_freed(self) -> None:
        freed = self.pool.drain_freed()
        if freed:
            self.runner.kv_cache = kv_pages.fill_pages(self.runner.kv_cache, np.asarray(freed))
        if self.host_pool is None:
            return
        slots = [
            s for s in self.host_pool.drain_freed() if self.host_pool.state[s] == PageState.FREE
        ]
        if slots:
            ids, _, count = host_kv.index_arrays([(s, s) for s in slots])
            self.host_kv = host_kv.fill_slots(self.host_kv, ids, count)

    def stats(self) -> dict:
        """Transfer counters and host store occupancy (see the module docstring on times)."""
        return self.counters.stats(self.page_bytes, self.host_pool)
