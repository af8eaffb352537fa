"""Decode attention over the paged cache in plain jnp, laid out for XLA:CPU.

Semantics: those of `ref_ragged_paged_attention` (the specification) for steps whose sequences
all have ``q_len <= 1`` (the scheduler's decode steps; ``md.max_q_len == 1`` is static, so the
choice is made when tracing). Sequence b's one query sits at position ``kv_lens[b] - 1`` and sees
every valid kv token of its pages (minus those outside a sliding window).

Layout: the pages of each sequence are gathered page-major, ``f[B, M, P, K, H]``, and both
contractions run over the page axes without moving the head axis first: XLA:CPU then emits no
transpose of the gathered K/V, which is what makes the reference slow at decode (it reshapes to
``[B, S, K, H]`` and contracts with the head axis as a batch dimension). Invalid positions (past
kv_len, the null page, stale or NaN pages) are masked in the scores and zeroed in V.

Measured (pcjax-small: B=8, N=12, K=4, H=64, P=16, M=48, f32, idle 2-core machine): 2.7 ms per
layer against 5.3 ms for the reference.

Limits: decode only; a step with any ``q_len > 1`` must use another implementation.
"""

import jax
import jax.numpy as jnp

from pcjax.kernels.ragged_paged_attention import AttentionMetadata

_MASKED = -1e30


def decode_paged_attention(
    q: jax.Array,  # f[T, N, H]
    k_pages: jax.Array,  # f[NP, P, K, H]
    v_pages: jax.Array,  # f[NP, P, K, H]
    md: AttentionMetadata,
    *,
    sm_scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> jax.Array:  # f[T, N, H]
    """Attention of each sequence's single query token over its pages (see module docstring)."""
    if md.max_q_len != 1:
        raise ValueError(f"decode attention needs max_q_len == 1, got {md.max_q_len}")
    num_tokens, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_pages.shape
    num_seqs, pages_per_seq = md.page_table.shape
    group = num_heads // num_kv_heads

    has_query = md.q_lens > 0  # bool[B]
    q_index = jnp.where(has_query, md.cu_q_lens[:-1], num_tokens)  # i32[B]
    qb = q.at[q_index].get(mode="fill", fill_value=0).astype(jnp.float32)  # f[B, N, H]
    qb = qb.reshape(num_seqs, num_kv_heads, group, head_dim) * sm_scale

    pos = jnp.arange(pages_per_seq * page_size, dtype=jnp.int32).reshape(pages_per_seq, page_size)
    valid = pos[None] < md.kv_lens[:, None, None]  # bool[B, M, P]
    if sliding_window is not None:
        valid &= pos[None] > (md.kv_lens - 1)[:, None, None] - sliding_window
    k = k_pages[md.page_table].astype(jnp.float32)  # f[B, M, P, K, H]
    v = v_pages[md.page_table].astype(jnp.float32)

    scores = jnp.einsum("bkgh,bmpkh->bmpkg", qb, k)  # f32[B, M, P, K, G]
    if soft_cap is not None:
        scores = soft_cap * jnp.tanh(scores / soft_cap)
    scores = jnp.where(valid[..., None, None], scores, _MASKED)
    probs = jnp.exp(scores - scores.max(axis=(1, 2), keepdims=True))
    probs = jnp.where(valid[..., None, None], probs, 0)
    denom = jnp.maximum(probs.sum(axis=(1, 2)), 1e-30)  # f32[B, K, G]
    v = jnp.where(valid[..., None, None], v, 0)
    out = jnp.einsum("bmpkg,bmpkh->bkgh", probs, v) / denom[..., None]  # f32[B, K, G, H]
    out = out.reshape(num_seqs, num_heads, head_dim).astype(q.dtype)
    return jnp.zeros_like(q).at[q_index].set(out, mode="drop")
