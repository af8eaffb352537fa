"""The jitted model step: forward over the paged cache (donated), then sampling."""

import functools

import jax

from pcjax import models
from pcjax.cache import kv_pages
from pcjax.cache.kv_pages import KVCache
from pcjax.engine.batch import StepArrays
from pcjax.kernels import AttentionMetadata, xla_cpu
from pcjax.sampling import SampleResult, SamplingBatch, sample


class _Static:
    """A static jit argument hashed once: jit hashes its static arguments on every call, and
    hashing an nnx GraphDef walks the whole module (~2.5 ms per step for pcjax-small).

    Instances are interned by value (`_static`), so engines of the same model hold the same
    instance and jit's cache lookup compares them by identity.
    """

    __slots__ = ("value", "_hash")

    def __init__(self, value):
        self.value = value
        self._hash = hash(value)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return self is other or (isinstance(other, _Static) and self.value == other.value)


_interned: dict[_Static, _Static] = {}


def _static(value) -> _Static:
    key = _Static(value)
    return _interned.setdefault(key, key)


def _forward(model, attention_impl, param_leaves, kv_cache, tokens, positions, md, logits_indices):
    """Forward over the paged cache; returns ``(kv_cache, logits f32[B, V])``.

    Jitted once per process (`_jitted_forward`), so engines of the same model share compiled
    programs (`model`, a `_Static` of ``(graphdef, params treedef)``, and attention_impl are static
    and compare by structure). The params come as their flat leaves: flattening an nnx.State on
    every call costs milliseconds.
    """
    graphdef, treedef = model.value
    logits, kv_cache = models.forward(
        graphdef,
        jax.tree.unflatten(treedef, param_leaves),
        tokens,
        positions,
        kv_cache,
        md,
        logits_indices=logits_indices,
        attention_impl=attention_impl,
    )
    return kv_cache, logits


@functools.cache
def _jitted_forward():
    """`_forward` jitted with the XLA options for this backend (`pcjax.kernels.xla_cpu`), made at
    the first step: the options depend on the backend, which must not start at import."""
    options = xla_cpu.compiler_options()
    return jax.jit(_forward, static_argnums=(0, 1), donate_argnums=(3,), compiler_options=options)


# A jit of its own: it compiles once per (B, NB, NL), not once per (T, B, M, Q) shape.
_sample = jax.jit(sample, static_argnames="num_logprobs")


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
        leaves, treedef = jax.tree.flatten(params)
        self._param_leaves = tuple(leaves)
        self._model = _static((graphdef, treedef))
        self.kv_cache = kv_cache

    def run(self, arrays: StepArrays, tokens=None) -> SampleResult:
        """Computes one step; returns the sampled tokens (and log-probabilities), on device.

        ``tokens`` replaces ``arrays.tokens`` (a device array from `merge_tokens`)."""
        md = AttentionMetadata(
            slot_mapping=arrays.slot_mapping,
            page_table=arrays.page_table,
            kv_lens=arrays.kv_lens,
            cu_q_lens=arrays.cu_q_lens,
            max_q_len=arrays.max_q_len,
        )
        self.kv_cache, logits = _jitted_forward()(
            self._model,
            self.attention_impl,
            self._param_leaves,
            self.kv_cache,
            arrays.tokens if tokens is None else tokens,  # numpy: jit converts it fastest
            arrays.positions,
            md,
            arrays.logits_indices,
        )
        sampling = SamplingBatch(
            temperature=arrays.temperature,
            top_k=arrays.top_k,
            top_p=arrays.top_p,
            seeds=arrays.seeds,
            steps=arrays.sample_steps,
            banned=arrays.banned,
        )
        return _sample(logits, sampling, num_logprobs=arrays.num_logprobs)

    def merge_tokens(self, host_tokens, prev_tokens, sources):
        """`merge_tokens` (module function), the step's pending tokens taken on the device."""
        return merge_tokens(host_tokens, prev_tokens, sources)

    def cache_lost(self) -> bool:
        """Whether the device cache was consumed (donated) by a step that then failed."""
        return kv_pages.is_consumed(self.kv_cache)


@jax.jit
def merge_tokens(host_tokens, prev_tokens, sources):
    """``host_tokens`` (i32[T]) with position t taken from ``prev_tokens[sources[t]]`` where
    ``sources[t] >= 0``: tokens the previous step sampled, still on the device."""
    taken = prev_tokens[jax.numpy.maximum(sources, 0)]
    return jax.numpy.where(sources >= 0, taken, host_tokens)
