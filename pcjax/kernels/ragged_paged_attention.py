"""Ragged paged attention: the one attention interface of pcjax, and its plain-jnp reference.

Semantics. A step computes T query tokens, flattened over B sequences: sequence b owns the query
tokens ``cu_q_lens[b] : cu_q_lens[b + 1]`` (contiguous, in order) and, after this step's K/V are
written, ``kv_lens[b]`` kv tokens stored in the pages ``page_table[b, :ceil(kv_lens[b] / P)]``.
The query tokens of b are its *last* ``q_len = cu_q_lens[b + 1] - cu_q_lens[b]`` kv tokens, so
query i of b sits at absolute position ``kv_lens[b] - q_len + i`` and attends causally to kv
positions ``j <= pos`` (and ``j > pos - sliding_window`` when a window is set). A decode step is
q_len == 1; a prefill chunk over a cached prefix is q_len < kv_len.

Layout. KV pages are pages-major, one array per layer and per K/V: ``f[NP, P, K, H]``. Page 0 is
the null page: page tables are padded with it and padding tokens write their K/V into it; it is
never read unmasked. Pages past a sequence's length (stale or NaN-filled) never reach the output.

Padding. Sequences past the real ones have q_len == 0 and kv_len == 0. Query tokens past
``cu_q_lens[B]`` belong to no sequence: their output is 0.

Worked example (P = 4): a sequence with 6 cached tokens gets 3 new ones, so q_len = 3, kv_len = 9,
its pages hold positions 0-3, 4-7, 8; query i=0 is at position 6 and sees kv 0..6.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

_MASKED = -1e30  # finite, so fully masked rows never produce inf - inf


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionMetadata:
    """Where each query token's K/V goes and what each sequence attends to.

    `max_q_len` is static (it is a bucket chosen by the scheduler; changing it recompiles): it
    bounds q_len of every sequence and sizes the reference's padded query block.
    """

    slot_mapping: jax.Array  # i32[T]: page * P + offset each token's K/V is written to
    page_table: jax.Array  # i32[B, M]: page ids of each sequence, padded with the null page 0
    kv_lens: jax.Array  # i32[B]: kv tokens of each sequence after this step's writes
    cu_q_lens: jax.Array  # i32[B + 1]: query token offsets; padded sequences repeat the end
    max_q_len: int = dataclasses.field(metadata=dict(static=True), default=1)

    @property
    def q_lens(self) -> jax.Array:  # i32[B]
        return self.cu_q_lens[1:] - self.cu_q_lens[:-1]


def write_kv(
    k_pages: jax.Array,  # f[NP, P, K, H]
    v_pages: jax.Array,  # f[NP, P, K, H]
    k: jax.Array,  # f[T, K, H]
    v: jax.Array,  # f[T, K, H]
    slot_mapping: jax.Array,  # i32[T]
) -> tuple[jax.Array, jax.Array]:
    """Scatters the step's new K/V into their slots; in place when the pages are donated."""
    num_pages, page_size, num_kv_heads, head_dim = k_pages.shape
    flat_shape = (num_pages * page_size, num_kv_heads, head_dim)
    k_flat = k_pages.reshape(flat_shape).at[slot_mapping].set(k.astype(k_pages.dtype))
    v_flat = v_pages.reshape(flat_shape).at[slot_mapping].set(v.astype(v_pages.dtype))
    return k_flat.reshape(k_pages.shape), v_flat.reshape(v_pages.shape)


def ref_ragged_paged_attention(
    q: jax.Array,  # f[T, N, H]
    k_pages: jax.Array,  # f[NP, P, K, H]
    v_pages: jax.Array,  # f[NP, P, K, H]
    md: AttentionMetadata,
    *,
    sm_scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> jax.Array:  # f[T, N, H]
    """The specification: gathers each sequence's pages and runs masked softmax attention in f32
    (full-precision f32 dots, also where the platform's default would be TF32)."""
    num_tokens, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_pages.shape
    num_seqs, pages_per_seq = md.page_table.shape
    group = num_heads // num_kv_heads
    max_q, max_kv = md.max_q_len, pages_per_seq * page_size

    q_lens = md.q_lens  # i32[B]
    q_offsets = jnp.arange(max_q, dtype=jnp.int32)  # i32[Q]
    q_valid = q_offsets[None, :] < q_lens[:, None]  # bool[B, Q]
    q_index = jnp.where(q_valid, md.cu_q_lens[:-1, None] + q_offsets, num_tokens)  # i32[B, Q]
    q_pos = md.kv_lens[:, None] - q_lens[:, None] + q_offsets  # i32[B, Q]
    kv_pos = jnp.arange(max_kv, dtype=jnp.int32)  # i32[S]
    kv_valid = kv_pos[None, :] < md.kv_lens[:, None]  # bool[B, S]

    mask = (kv_pos[None, None, :] <= q_pos[:, :, None]) & kv_valid[:, None, :]  # bool[B, Q, S]
    if sliding_window is not None:
        mask &= kv_pos[None, None, :] > q_pos[:, :, None] - sliding_window
    mask &= q_valid[:, :, None]

    qb = q.at[q_index].get(mode="fill", fill_value=0).astype(jnp.float32)  # f[B, Q, N, H]
    qb = qb.reshape(num_seqs, max_q, num_kv_heads, group, head_dim)
    k = k_pages[md.page_table].reshape(num_seqs, max_kv, num_kv_heads, head_dim)  # f[B, S, K, H]
    v = v_pages[md.page_table].reshape(num_seqs, max_kv, num_kv_heads, head_dim)
    k = jnp.where(kv_valid[:, :, None, None], k, 0).astype(jnp.float32)
    v = jnp.where(kv_valid[:, :, None, None], v, 0).astype(jnp.float32)

    # HIGHEST: full f32 dots on every platform (GPUs default to TF32 for f32 dots).
    hi = jax.lax.Precision.HIGHEST
    scores = jnp.einsum("bqkgh,bskh->bkgqs", qb, k, precision=hi) * sm_scale  # f32[B,K,G,Q,S]
    if soft_cap is not None:
        scores = soft_cap * jnp.tanh(scores / soft_cap)
    scores = jnp.where(mask[:, None, None], scores, _MASKED)
    probs = jnp.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = jnp.where(mask[:, None, None], probs, 0)
    denom = jnp.maximum(probs.sum(axis=-1, keepdims=True), 1e-30)
    out = jnp.einsum("bkgqs,bskh->bqkgh", probs / denom, v, precision=hi)  # f32[B, Q, K, G, H]
    out = out.reshape(num_seqs * max_q, num_heads, head_dim).astype(q.dtype)
    flat = jnp.zeros_like(q)
    return flat.at[q_index.reshape(-1)].set(out, mode="drop")


@functools.partial(jax.jit, static_argnames=("sm_scale", "sliding_window", "soft_cap"))
def ragged_paged_attention_reference(
    q, k_pages, v_pages, md, *, sm_scale, sliding_window=None, soft_cap=None
):
    """Jitted reference, for benchmarks and tests."""
    return ref_ragged_paged_attention(
        q,
        k_pages,
        v_pages,
        md,
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        soft_cap=soft_cap,
    )
