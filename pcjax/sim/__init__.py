"""Trace-driven cache simulation through the engine's own host cache code (no device, no jax).

* `pcjax.sim.trace` -- the `Request` / `Trace` records, Mooncake and generic JSONL loaders, the
  infinite-cache bound (`trace_stats`).
* `pcjax.sim.generators` -- seeded synthetic workloads (system prompts, chat, few-shot,
  tree-of-thought, agent loops, a mix, agentic coding sessions with sub-agents).
* `pcjax.sim.sources` -- `open_trace(spec)` for experiments; token prompts for the real engine.
* `pcjax.sim.replay` -- sequential and two-tier replay over `RadixTree` + `PagePool` + a policy.
* `pcjax.sim.timed` -- timed replay: arrivals, in-flight pinning, a prefill/decode duration model.
* `pcjax.sim.belady` -- Belady's MIN with bypass (the offline bound) and the ``oracle_lru``
  yardstick; replay-only.
* `pcjax.sim.robustness` -- the robustness table of a sweep: each policy's worst loss against LRU
  and the best single policy over every (trace, capacity), and its mean fraction of Belady.
* `pcjax.sim.headroom` -- class bounds: the best hit rate a policy could reach that sees only some
  features of each block (its use count, the gap since its last use, ...).

Start with ``experiments/compare_eviction.py`` and ``notebooks/eviction_policies.ipynb``.
"""
