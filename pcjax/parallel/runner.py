"""`ShardedRunner`: the engine's device side over a ``(data, model)`` mesh.

It does what `pcjax.engine.runner.ModelRunner` does for one device (hold the KV cache, run a
step, report whether a failed step consumed the cache), with the weights split by
`pcjax.parallel.layout`, the KV pages of every replica in one global array per layer, and the
host tier's copies (`pcjax.parallel.transfers`). A step:

1. on the host: the engine's flat `StepArrays` are laid out per replica (`replica_batch`);
2. jitted: the flat tokens (pending ones merged from the step in flight first) are gathered per
   replica, and ``jax.shard_map`` over both mesh axes runs the plain model code on every shard:
   its replica's tokens and pages, its slice of weights and KV heads (attention kernels per shard);
3. jitted: the logits of all replicas are sampled and the samples put back in the engine's row
   order, replicated on every device (any process can read them).

Every device operation goes through `execute`; with several processes the leader first sends it
to the followers (`pcjax.parallel.multihost`), which run the same `execute`.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pcjax import models
from pcjax.cache import kv_pages
from pcjax.engine.batch import StepArrays
from pcjax.engine.runner import merge_tokens
from pcjax.kernels import AttentionMetadata, xla_cpu
from pcjax.parallel import layout as layout_lib
from pcjax.parallel import multihost, transfers
from pcjax.parallel.mesh import DATA_AXIS
from pcjax.parallel.replica_batch import ReplicaArrays, split_by_replica
from pcjax.sampling import SampleResult, SamplingBatch, sample

_BATCH = P(DATA_AXIS)
_BATCH_FIELDS = ("positions", "slot_mapping", "page_table", "kv_lens", "cu_q_lens")


class PendingTokens(NamedTuple):
    """A step's input tokens whose pending entries (``sources >= 0``) come from the step in
    flight; merged on the device inside `ShardedRunner.run`."""

    host_tokens: np.ndarray  # i32[T]
    sources: np.ndarray  # i32[T]: the in-flight step's row, or -1
    prev_tokens: jax.Array  # i32[B']: the in-flight step's samples


class ShardedRunner:
    """Owns the sharded KV cache (and host store) and runs steps on it.

    Args:
      model: the `LoadedModel` (its params are split onto the mesh here).
      layout: the tensor-parallel layout (`layout.tensor_layout`).
      mesh: the ``(data, model)`` mesh.
      attention_impl: a concrete implementation name, run per shard.
      num_pages: NP per replica (its null page included).
      page_size: P.
      num_host_slots: NS per replica (slot 0 included), 0 without a host tier.
      debug: fill the cache (and store) with NaN at first, as freed pages are later.
    """

    def __init__(
        self,
        model,
        layout,
        mesh,
        attention_impl,
        *,
        num_pages,
        page_size,
        num_host_slots=0,
        debug=False,
    ):
        cfg = model.config
        self.mesh = mesh
        self.attention_impl = attention_impl
        self.num_replicas = mesh.shape[DATA_AXIS]
        self.num_layers = cfg.num_layers
        self.dtype = model.dtype
        self.fill_value = float("nan") if debug else 0.0
        self.cache_shape = (
            self.num_replicas * num_pages,
            page_size,
            layout.num_stored_kv_heads,
            cfg.head_dim,
        )
        self.param_leaves, specs = layout_lib.shard_params(model.params, layout, mesh)
        graphdef, treedef = layout_lib.local_model(layout, model.dtype)
        self._forward = _make_forward(
            mesh, graphdef, treedef, specs, attention_impl, cfg.vocab_size
        )
        self._sample = jax.jit(
            functools.partial(_sample_entries, mesh),
            static_argnames="num_logprobs",
            out_shardings=self._sharding(P()),
        )
        self.kv_cache = self.allocate_cache()
        self.host_kv, self.copies = self._allocate_store(num_host_slots)
        self.channel = multihost.Channel() if jax.process_count() > 1 else None
        self.last_result: SampleResult | None = None

    def _allocate_store(self, num_slots: int):
        """The host store (None without a host tier) and the copies that use it."""
        kind = transfers.store_memory_kind(self.mesh) if num_slots else None
        copies = transfers.ShardedCopies(self.mesh, kind)
        if not num_slots:
            return None, copies
        shape = (self.num_replicas * num_slots, *self.cache_shape[1:])
        store = transfers.allocate_sharded(
            self.mesh, self.num_layers, shape, self.dtype, self.fill_value, kind
        )
        return store, copies

    def _sharding(self, spec) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    def _put(self, value, spec=_BATCH) -> jax.Array:
        return jax.device_put(value, self._sharding(spec))

    def allocate_cache(self):
        """A fresh sharded cache (zeros, or NaN in debug mode)."""
        return transfers.allocate_sharded(
            self.mesh, self.num_layers, self.cache_shape, self.dtype, self.fill_value
        )

    # ------------------------------------------------------------------- the engine's calls

    def merge_tokens(self, host_tokens, prev_tokens, sources) -> PendingTokens:
        """Defers the merge of pending tokens to `run`, which does it on the device."""
        return PendingTokens(np.asarray(host_tokens), np.asarray(sources, np.int32), prev_tokens)

    def run(self, arrays: StepArrays, tokens=None) -> SampleResult:
        """Computes one step; returns the samples (replicated device arrays, in row order).

        ``tokens``: None (take ``arrays.tokens``), host tokens, or `PendingTokens`, whose
        ``prev_tokens`` must be the samples of the previous `run`.
        """
        split = split_by_replica(arrays, self.num_replicas)
        merge = isinstance(tokens, PendingTokens)
        if merge:
            if self.last_result is None or tokens.prev_tokens is not self.last_result.tokens:
                raise RuntimeError("pending tokens must come from the previous step's samples")
            host_tokens, sources = tokens.host_tokens, tokens.sources
        else:
            host_tokens = np.asarray(arrays.tokens if tokens is None else tokens, np.int32)
            sources = np.zeros(0, np.int32)
        statics = np.array([split.max_q_len, split.num_logprobs, int(merge)], np.int32)
        fields = [getattr(split, name) for name in _RUN_FIELDS]
        return self._issue("run", [*fields, host_tokens, sources, statics])

    def copy_out(self, replica: int, offloads, freed_pages, freed_slots) -> None:
        """Copies a replica's device pages to host slots, then NaN-fills freed pages and slots."""
        offloads = np.asarray(offloads, np.int32).reshape(-1, 2)
        self._issue(
            "copy",
            [
                np.array([replica, 0], np.int32),
                offloads,
                np.asarray(freed_pages, np.int32),
                np.asarray(freed_slots, np.int32),
            ],
        )

    def copy_in(self, replica: int, loads) -> None:
        """Copies a replica's host slots into device pages (``loads``: (slot, page) pairs)."""
        loads = np.asarray(loads, np.int32).reshape(-1, 2)
        empty = np.zeros(0, np.int32)
        self._issue("copy", [np.array([replica, 1], np.int32), loads, empty, empty])

    def reset_cache(self) -> None:
        """Replaces the cache by a fresh one (after a failed step consumed it)."""
        self._issue("reset", [])

    def cache_lost(self) -> bool:
        """Whether the device cache was consumed (donated) by a step that then failed."""
        return kv_pages.is_consumed(self.kv_cache)

    # ------------------------------------------------------------- the device operations

    def _issue(self, op: str, arrays: list):
        if self.channel is not None:
            self.channel.send(op, arrays)
        return self.execute(op, arrays)

    def execute(self, op: str, arrays: list):
        """Runs one device operation (on the leader, and on followers as the leader sent it)."""
        if op == "run":
            return self._run(arrays)
        if op == "copy":
            return self._copy(*arrays)
        if op == "reset":
            self.kv_cache = self.allocate_cache()
            return None
        raise ValueError(f"unknown device operation {op!r}")

    def _run(self, arrays: list) -> SampleResult:
        *fields, host_tokens, sources, statics = arrays
        split = dict(zip(_RUN_FIELDS, fields, strict=True))
        max_q_len, num_logprobs, merge = (int(x) for x in statics)
        tokens = self._put(host_tokens, P())
        if merge:
            tokens = merge_tokens(tokens, self.last_result.tokens, self._put(sources, P()))
        batch = {name: self._put(split[name]) for name in ("token_index", *_BATCH_FIELDS)}
        self.kv_cache, logits = self._forward(
            self.param_leaves,
            self.kv_cache,
            tokens,
            **batch,
            logits_indices=self._put(split["logits_indices"]),
            max_q_len=max_q_len,
        )
        sampling = SamplingBatch(
            temperature=self._put(split["temperature"]),
            top_k=self._put(split["top_k"]),
            top_p=self._put(split["top_p"]),
            seeds=self._put(split["seeds"]),
            steps=self._put(split["sample_steps"]),
            banned=self._put(split["banned"]),
        )
        entry_rows = self._put(split["entry_rows"], P())
        self.last_result = self._sample(logits, sampling, entry_rows, num_logprobs=num_logprobs)
        return self.last_result

    def _copy(self, which, pairs, freed_pages, freed_slots) -> None:
        replica, direction = int(which[0]), int(which[1])
        copies = self.copies
        if len(pairs) and self.host_kv is None:
            raise RuntimeError("page copies to the host tier, but the engine has none")
        if direction == 1:
            slots, pages, counts = copies.index_arrays(replica, pairs)
            self.kv_cache = copies.swap_in(self.kv_cache, self.host_kv, slots, pages, counts)
            return
        if len(pairs):
            pages, slots, counts = copies.index_arrays(replica, pairs)
            self.host_kv = copies.swap_out(self.host_kv, self.kv_cache, pages, slots, counts)
        if len(freed_pages):
            ids, counts = copies.index_arrays(replica, freed_pages[:, None])
            self.kv_cache = copies.fill_pages(self.kv_cache, ids, counts)
        if len(freed_slots):
            ids, counts = copies.index_arrays(replica, freed_slots[:, None])
            self.host_kv = copies.fill_slots(self.host_kv, ids, counts)


# The array fields of `ReplicaArrays`, in the order a "run" command carries them.
_RUN_FIELDS = tuple(
    f.name for f in dataclasses.fields(ReplicaArrays) if f.name not in ("max_q_len", "num_logprobs")
)


def _make_forward(mesh, graphdef, treedef, param_specs, attention_impl, vocab_size):
    """The jitted forward: ``(params, cache, tokens i32[T], token_index i32[D, Tb], ...) ->
    (cache, logits f32[D, Bb, V])``, the cache donated."""

    def per_shard(
        leaves,
        kv_cache,
        tokens,
        positions,
        slot_mapping,
        page_table,
        kv_lens,
        cu_q_lens,
        logits_indices,
        *,
        max_q_len,
    ):
        md = AttentionMetadata(
            slot_mapping[0], page_table[0], kv_lens[0], cu_q_lens[0], max_q_len=max_q_len
        )
        params = jax.tree.unflatten(treedef, leaves)
        logits, kv_cache = models.forward(
            graphdef,
            params,
            tokens[0],
            positions[0],
            kv_cache,
            md,
            logits_indices=logits_indices[0],
            attention_impl=attention_impl,
        )
        return kv_cache, logits[None, :, :vocab_size]

    def forward(
        leaves,
        kv_cache,
        tokens,
        token_index,
        positions,
        slot_mapping,
        page_table,
        kv_lens,
        cu_q_lens,
        logits_indices,
        *,
        max_q_len,
    ):
        replica_tokens = jnp.where(token_index >= 0, tokens[jnp.maximum(token_index, 0)], 0)
        step = jax.shard_map(
            functools.partial(per_shard, max_q_len=max_q_len),
            mesh=mesh,
            in_specs=(param_specs, transfers.CACHE_SPEC, *[_BATCH] * 7),
            out_specs=(transfers.CACHE_SPEC, _BATCH),
            check_vma=False,
        )
        return step(
            leaves,
            kv_cache,
            replica_tokens,
            positions,
            slot_mapping,
            page_table,
            kv_lens,
            cu_q_lens,
            logits_indices,
        )

    options = xla_cpu.compiler_options()
    return jax.jit(forward, static_argnames="max_q_len", donate_argnums=1, compiler_options=options)


def _sample_entries(mesh, logits, batch: SamplingBatch, entry_rows, num_logprobs: int):
    """Samples every replica's rows (logits f32[D, Bb, V], the batch [D * Bb]) and returns them
    in the engine's row order. Each replica's rows are sampled by its own devices (a shard_map:
    GSPMD would partition the sampler's sorts slowly, ~4 s of compile per shape)."""

    def local(logits, batch):
        return sample(logits[0], batch, num_logprobs)

    per_replica = jax.shard_map(
        local, mesh=mesh, in_specs=_BATCH, out_specs=_BATCH, check_vma=False
    )(logits, batch)
    return SampleResult(*(x[entry_rows] for x in per_replica))
