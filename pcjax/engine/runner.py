"""The jitted model step: forward over the paged cache (donated), then sampling."""

import functools

import jax
import jax.numpy as jnp

from pcjax import models
from pcjax.cache.kv_pages import KVCache
from pcjax.engine.batch import StepArrays
from pcjax.kernels import AttentionMetadata
from pcjax.sampling import SamplingBatch, sample


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(3,))
def _forward(graphdef, attention_impl, params, kv_cache, tokens, positions, md, logits_indices):
    """Forward over the paged cache; returns ``(kv_cache, logits f32[B, V])``.

    Module-level, so engines of the same model share compiled programs (graphdef and
    attention_impl are static and compare by structure).
    """
    logits, kv_cache = models.forward(
        graphdef,
        params,
        tokens,
        positions,
        kv_cache,
        md,
        logits_indices=logits_indices,
        attention_impl=attention_impl,
    )
    return kv_cache, logits


# A jit of its own: it compiles once per batch bucket B, not once per (T, B, M, Q) shape.
_sample = jax.jit(sample)


class ModelRunner:
    """Owns the device KV cache and runs steps on it.

    Args:
      graphdef, params: the model, split with `nnx.split`.
      kv_cache: the device pages; donated to every step and replaced by its result.
      attention_impl: a concrete implementation name for `pcjax.kernels.ragged_paged_attention`.
    """

    def __init__(self, graphdef, params, kv_cache: KVCache, attention_impl: str):
        self.graphdef = graphdef
        self.attention_impl = attention_impl
        self.params = params
        self.kv_cache = kv_cache

    def run(self, arrays: StepArrays) -> jax.Array:
        """Computes one step; returns the sampled tokens (i32[B], still on device)."""
        md = AttentionMetadata(
            slot_mapping=arrays.slot_mapping,
            page_table=arrays.page_table,
            kv_lens=arrays.kv_lens,
            cu_q_lens=arrays.cu_q_lens,
            max_q_len=arrays.max_q_len,
        )
        self.kv_cache, logits = _forward(
            self.graphdef,
            self.attention_impl,
            self.params,
            self.kv_cache,
            jnp.asarray(arrays.tokens),
            jnp.asarray(arrays.positions),
            md,
            jnp.asarray(arrays.logits_indices),
        )
        sampling = SamplingBatch(
            temperature=arrays.temperature,
            top_k=arrays.top_k,
            top_p=arrays.top_p,
            seeds=arrays.seeds,
            steps=arrays.sample_steps,
        )
        return _sample(logits, sampling)
