"""The decoder-only transformer (Llama / Mistral / Qwen2 / Qwen3) in Flax NNX, over paged KV.

Weights are stored ``f[out, in]`` (Hugging Face's layout) and applied as ``x @ weight.T`` by a
``dot_general`` contracting both minor dims, so no transpose is ever materialized in the graph.
For decode-sized steps on the native CPU path (``attention_impl="cpu_native"``, at most
`kernels.SKINNY_MAX_ROWS` rows) the projections run the native skinny matmul instead, which
streams each weight row once: XLA:CPU's dot (YNNPACK) transposes the weights on every such call.
The projections that read the same input are fused: q/k/v into ``qkv_proj`` (rows
``[q | k | v]``) and gate/up into ``gate_up_proj`` (rows ``[gate | up]``), so a decode step
reads every weight exactly once, in few large matmuls.

Numerics follow transformers: params, activations and KV share one dtype; RMSNorm and RoPE angles
are computed in float32 and cast back; attention runs in float32 inside the kernel; logits are
accumulated and returned in float32.

Tensor parallelism (`pcjax.parallel`). A model built with ``tp_axis="model"`` and the per-shard
config of `pcjax.parallel.layout` is one shard of a larger model, run under ``jax.shard_map``: its
q/k/v, gate/up, embedding and LM head hold a slice of the outputs (heads, MLP columns, vocabulary
rows), o_proj and down_proj a slice of their inputs. The row-parallel projections all-reduce their
partial sums over ``tp_axis`` before the bias; the embedding looks up the tokens of its vocabulary
slice and all-reduces; the LM head gathers the vocabulary slices' logits. Without ``tp_axis`` all of
it is the plain single-device model.

Use the pure function `forward`; the modules are its implementation.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from pcjax import kernels
from pcjax.cache.kv_pages import KVCache
from pcjax.kernels import AttentionMetadata, write_kv
from pcjax.models.config import ModelConfig
from pcjax.models.rope import apply_rope, inverse_frequencies, rope_cos_sin


class RMSNorm(nnx.Module):
    """``weight * (x / rms(x))`` over the last axis; the normalization itself in float32."""

    def __init__(self, dim: int, eps: float, dtype):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))  # f[dim]
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        variance = jnp.mean(xf * xf, axis=-1, keepdims=True)
        normed = (xf * jax.lax.rsqrt(variance + self.eps)).astype(x.dtype)
        return self.weight[...] * normed


_NT = (((1,), (1,)), ((), ()))  # dot_general dims of x[T, in] . w[out, in] -> [T, out]


def dot_nt(x: jax.Array, w: jax.Array, out_dtype=None) -> jax.Array:
    """``x @ w.T`` for x f[T, in] and w f[out, in], without transposing w."""
    return jax.lax.dot_general(x, w, _NT, preferred_element_type=out_dtype)


class Linear(nnx.Module):
    """``x @ weight.T (+ bias)`` with the weight stored ``f[out, in]`` like torch.

    With ``reduce_axis`` it is the row-parallel shard of a larger projection (it holds a slice of
    the inputs): the shards' partial sums are all-reduced over that mesh axis before the bias.
    """

    def __init__(self, in_dim: int, out_dim: int, dtype, *, bias=False, reduce_axis=None):
        self.weight = nnx.Param(jnp.zeros((out_dim, in_dim), dtype))  # f[out, in]
        self.bias = nnx.Param(jnp.zeros((out_dim,), dtype)) if bias else None  # f[out]
        self.reduce_axis = reduce_axis  # static (graphdef): None or a mesh axis name

    def __call__(self, x: jax.Array, dot=dot_nt) -> jax.Array:  # f[T, in] -> f[T, out]
        y = dot(x, self.weight[...])
        if self.reduce_axis is not None:
            y = jax.lax.psum(y, self.reduce_axis)
        return y if self.bias is None else y + self.bias[...]


class Attention(nnx.Module):
    """GQA self-attention over the paged KV cache of one layer."""

    def __init__(self, cfg: ModelConfig, layer: int, dtype, tp_axis=None):
        n, k, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
        self.qkv_proj = Linear(d, (n + 2 * k) * h, dtype, bias=cfg.attention_bias)
        out_bias = cfg.attention_out_bias
        self.o_proj = Linear(n * h, d, dtype, bias=out_bias, reduce_axis=tp_axis)
        self.q_norm = RMSNorm(h, cfg.rms_norm_eps, dtype) if cfg.qk_norm else None
        self.k_norm = RMSNorm(h, cfg.rms_norm_eps, dtype) if cfg.qk_norm else None
        self.shape = (n, k, h)
        self.sliding_window = cfg.layer_window(layer)

    def __call__(self, x, cos, sin, k_pages, v_pages, md, attention_impl, dot=dot_nt):
        """x: f[T, D] -> (f[T, D], k_pages, v_pages) with this step's K/V written."""
        n, k, h = self.shape
        qkv = self.qkv_proj(x, dot)  # f[T, (N + 2K) H]
        q = qkv[:, : n * h].reshape(-1, n, h)  # f[T, N, H]
        key = qkv[:, n * h : (n + k) * h].reshape(-1, k, h)  # f[T, K, H]
        value = qkv[:, (n + k) * h :].reshape(-1, k, h)  # f[T, K, H]
        if self.q_norm is not None:
            q, key = self.q_norm(q), self.k_norm(key)
        q, key = apply_rope(q, cos, sin), apply_rope(key, cos, sin)
        k_pages, v_pages = write_kv(k_pages, v_pages, key, value, md.slot_mapping)
        out = kernels.ragged_paged_attention(
            q,
            k_pages,
            v_pages,
            md,
            sm_scale=h**-0.5,
            sliding_window=self.sliding_window,
            impl=attention_impl,
        )  # f[T, N, H]
        return self.o_proj(out.reshape(-1, n * h), dot), k_pages, v_pages


class MLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))`` with gate and up fused."""

    def __init__(self, cfg: ModelConfig, dtype, tp_axis=None):
        f = cfg.intermediate_size
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * f, dtype)
        self.down_proj = Linear(f, cfg.hidden_size, dtype, reduce_axis=tp_axis)
        self.intermediate_size = cfg.intermediate_size

    def __call__(self, x: jax.Array, dot=dot_nt) -> jax.Array:
        gate_up = self.gate_up_proj(x, dot)  # f[T, 2F]
        gate, up = gate_up[:, : self.intermediate_size], gate_up[:, self.intermediate_size :]
        return self.down_proj(jax.nn.silu(gate) * up, dot)


class DecoderLayer(nnx.Module):
    """Pre-norm block: ``x += attn(norm(x)); x += mlp(norm(x))``."""

    def __init__(self, cfg: ModelConfig, layer: int, dtype, tp_axis=None):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.self_attn = Attention(cfg, layer, dtype, tp_axis)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.mlp = MLP(cfg, dtype, tp_axis)

    def __call__(self, x, cos, sin, k_pages, v_pages, md, attention_impl, dot=dot_nt):
        attn, k_pages, v_pages = self.self_attn(
            self.input_layernorm(x), cos, sin, k_pages, v_pages, md, attention_impl, dot
        )
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x), dot)
        return x, k_pages, v_pages


class Transformer(nnx.Module):
    """Token embedding, L decoder layers, final norm and LM head (tied or not).

    Build it abstractly (``nnx.eval_shape(lambda: Transformer(cfg, dtype))``) and fill the state
    from a checkpoint: the constructor's zeros/ones are placeholders, not an initialization.
    ``tp_axis``: build one tensor-parallel shard (see the module docstring; ``cfg`` is then the
    shard's config, whose vocab_size is the shard's slice of the vocabulary).
    """

    def __init__(self, cfg: ModelConfig, dtype="float32", tp_axis: str | None = None):
        dtype = jnp.dtype(dtype)
        embed_shape = (cfg.vocab_size, cfg.hidden_size)
        self.embed_tokens = nnx.Param(jnp.zeros(embed_shape, dtype))  # f[V, D]
        self.layers = nnx.List(
            [DecoderLayer(cfg, i, dtype, tp_axis) for i in range(cfg.num_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.lm_head = (
            None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, dtype)
        )
        # static (part of the graphdef): the RoPE frequencies are trace-time constants
        self.rope = (cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        self.dtype = dtype
        self.tp_axis = tp_axis  # static (graphdef)

    def __call__(self, tokens, positions, kv_cache, md, logits_indices, attention_impl):
        x = self.embed(tokens)  # f[T, D]
        head_dim, theta, scaling = self.rope
        inv_freq = inverse_frequencies(head_dim, theta, dict(scaling) if scaling else None)
        cos, sin = rope_cos_sin(positions, inv_freq, self.dtype)  # f[T, H] each
        new_k, new_v = [], []
        dot = projection_dot(attention_impl, tokens.shape[0])
        for layer, k_pages, v_pages in zip(self.layers, kv_cache.k, kv_cache.v, strict=True):
            x, k_pages, v_pages = layer(x, cos, sin, k_pages, v_pages, md, attention_impl, dot)
            new_k.append(k_pages)
            new_v.append(v_pages)
        if logits_indices is not None:
            x = x[logits_indices]  # f[R, D]: only the rows whose logits are wanted
        dot = projection_dot(attention_impl, x.shape[0])
        return self.logits(self.norm(x), dot), KVCache(k=tuple(new_k), v=tuple(new_v))

    def embed(self, tokens: jax.Array) -> jax.Array:  # i32[T] -> f[T, D]
        """Token embeddings; a vocab-parallel shard looks up its own rows and all-reduces."""
        table = self.embed_tokens[...]
        if self.tp_axis is None:
            return table[tokens]
        rows = table.shape[0]
        local = tokens - jax.lax.axis_index(self.tp_axis) * rows
        inside = (local >= 0) & (local < rows)
        x = jnp.where(inside[:, None], table[jnp.clip(local, 0, rows - 1)], 0)
        return jax.lax.psum(x, self.tp_axis)  # exact: one shard holds each row

    def logits(self, x: jax.Array, dot=dot_nt) -> jax.Array:  # f[R, D] -> f32[R, V]
        """The LM head (or the tied embedding, both f[V, D]), accumulated in float32; a
        vocab-parallel shard gathers every shard's columns."""
        head = self.embed_tokens if self.lm_head is None else self.lm_head.weight
        out = dot(x, head[...], jnp.float32)
        if self.tp_axis is not None:
            out = jax.lax.all_gather(out, self.tp_axis, axis=1, tiled=True)
        return out


def projection_dot(attention_impl: str, num_rows: int):
    """The ``x @ w.T`` of the projections for `num_rows` rows (static: a bucketed shape).

    On the native CPU path, steps of at most `kernels.SKINNY_MAX_ROWS` rows (decode) use the
    native skinny matmul, which streams each weight once; everything else uses XLA's dot.
    """
    if attention_impl == "cpu_native" and num_rows <= kernels.SKINNY_MAX_ROWS:
        return kernels.dot_nt_skinny
    return dot_nt


def forward(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    tokens: jax.Array,  # i32[T]
    positions: jax.Array,  # i32[T]
    kv_cache: KVCache,
    md: AttentionMetadata,
    *,
    logits_indices: jax.Array | None = None,  # i32[R]
    attention_impl: str = "reference",
) -> tuple[jax.Array, KVCache]:  # f32[T or R, V], the updated cache
    """Runs the model over one step's tokens (pure; jit it with `graphdef` static or closed over).

    Each layer projects q/k/v, rotates q/k at `positions`, writes K/V into its pages at
    ``md.slot_mapping`` and attends with `pcjax.kernels.ragged_paged_attention(impl=...)`.

    Returns:
      float32 logits of every token, or only of the rows `logits_indices` (computing the LM head
      for those rows only), and the updated KV cache (donate the input cache when jitting).
    """
    model = nnx.merge(graphdef, params)
    return model(tokens, positions, kv_cache, md, logits_indices, attention_impl)
