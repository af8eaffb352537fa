"""Ragged paged attention for GPU: Pallas with the Triton lowering, split-KV online softmax.

Semantics: exactly `pcjax.kernels.ragged_paged_attention` (ragged mix of decode and prefill
chunks, causal over cached + new tokens, GQA, optional sliding window and soft cap).

Why Triton and not Mosaic GPU. Across the supported range (jax 0.11.2 ... 0.12) the Triton lowering
has a stable, small surface: `pallas_call` with BlockSpecs, scalar and gathered loads by pointer
arithmetic, `dot`, and `fori_loop` with dynamic bounds (lowered to `scf.for`, which Triton software
pipelines). It runs on any CUDA GPU the jax wheels support. Mosaic GPU needs Hopper or newer,
warpgroup-level code with explicit TMA copies and barriers, and its API changed between those
releases; a paged gather (one TMA descriptor per page) is also awkward there. Pallas' Triton
backend is deprecated in both 0.11.2 and 0.12 (a DeprecationWarning at lowering) but works; the
day it goes, this kernel moves to Mosaic GPU behind the same wrapper. Verified here in
``interpret=True`` and by lowering to Triton IR for an abstract H200 (tests); never compiled by
Triton nor run on a GPU (no GPU in this project yet).

Layout and schedule::

    grid (W, K, S)             work item (BQ query tokens of one sequence), kv head, kv split
    q, out blocks              f[Gp * BQ, H]  rows head-major: r = g * BQ + t (see rpa_blocks)
    k_pages, v_pages           f[NP * P, K, H] whole arrays in HBM, read by token gathers
    item scalars, page table   i32[W], i32[B, M] whole arrays, read as scalars / gathers

Program (w, h, s) walks kv blocks of ``block_kv`` tokens over the tokens its queries can see
(sliding-window start .. position of its last query token, so pages past kv_len and future tokens
are never read), the s-th of S equal shares of them. A block's tokens are gathered through the page
table token by token: slot = page_table[seq, pos // P] * P + pos % P, then K[slot, h, :] — so any
page size works (33 included) while every tensor keeps power-of-two dims. Scores and the online
softmax are f32; dots are IEEE f32 for f32 inputs (not TF32) and bf16 x bf16 -> f32 for bf16.
With S > 1 each split writes its normalized f32 output and log-sum-exp; plain jnp merges them.

Triton rules respected: every loaded/stored tensor has power-of-two dims (Gp = next power of two
>= G, rows >= 16 for tensor-core dots, ``block_kv`` a power of two), head_dim must be a power of two
(64, 128, 256), no scalar prefetch (scalars are loaded in-kernel), no reshapes in the kernel.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pcjax.kernels import rpa_blocks
from pcjax.kernels.ragged_paged_attention import AttentionMetadata

_MASKED = -1e30  # finite, so fully masked rows never produce inf - inf
_MIN_DOT_ROWS = 16  # Triton's tensor-core dots want M >= 16
_TARGET_PROGRAMS = 264  # ~2 waves of an H100/H200 (132 SMs): enough programs to fill the GPU


def default_block_q(max_q_len: int, group_pad: int) -> int:
    """Query tokens per work item: 1 for decode, else enough for ~128 rows (power of two)."""
    return min(pl.next_power_of_2(max_q_len), max(1, 128 // group_pad))


def default_block_kv(max_q_len: int) -> int:
    return 128 if max_q_len == 1 else 64


def default_kv_splits(num_items: int, num_kv_heads: int, max_kv: int, block_kv: int) -> int:
    """Splits the kv axis until there are enough programs to fill the GPU (1 when already full)."""
    blocks = max(1, -(-max_kv // block_kv))
    return max(1, min(-(-_TARGET_PROGRAMS // (num_items * num_kv_heads)), blocks, 32))


def group_pad(group: int, block_q: int) -> int:
    """Query heads per kv head, padded to a power of two with >= 16 rows in total."""
    return max(pl.next_power_of_2(group), pl.cdiv(_MIN_DOT_ROWS, block_q))


def _kernel(
    # work items and page table (whole arrays)
    seq_ref,  # i32[W]
    num_q_ref,  # i32[W]
    first_pos_ref,  # i32[W]
    kv_len_ref,  # i32[W]
    page_table_ref,  # i32[B, M]
    # inputs
    q_ref,  # f[R, H] block of item w, kv head h
    k_ref,  # f[NP * P, K, H] whole
    v_ref,  # f[NP * P, K, H] whole
    # outputs
    o_ref,  # f[R, H] (f32 when split)
    *lse_refs,  # f32[R] when split
    sm_scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
    page_size: int,
    block_q: int,
    block_kv: int,
    num_splits: int,
):
    w, h, split = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    rows, head_dim = q_ref.shape
    pages_per_seq = page_table_ref.shape[1]
    seq, num_q, first_pos = seq_ref[w], num_q_ref[w], first_pos_ref[w]
    kv_len = kv_len_ref[w]

    # kv tokens the item can see: [first_tok, end_tok); none for an empty item.
    end_tok = jnp.where(num_q > 0, jnp.minimum(first_pos + num_q, kv_len), 0)
    first_tok = jnp.int32(0)
    if sliding_window is not None:
        first_tok = jnp.minimum(jnp.maximum(first_pos - sliding_window + 1, 0), end_tok)
    num_blocks = lax.div(end_tok - first_tok + block_kv - 1, block_kv)
    per_split = lax.div(num_blocks + num_splits - 1, num_splits)
    lo = jnp.minimum(split * per_split, num_blocks)
    hi = jnp.minimum(lo + per_split, num_blocks)

    t = lax.rem(lax.broadcasted_iota(jnp.int32, (rows,), 0), block_q)
    q_pos = jnp.where(t < num_q, first_pos + t, -1)  # i32[R]; -1: padding row, sees nothing
    q = q_ref[...]
    precision = lax.Precision.HIGHEST if q.dtype == jnp.float32 else None
    offsets = lax.broadcasted_iota(jnp.int32, (block_kv,), 0)

    def body(block, carry):
        m_prev, l_prev, acc_prev = carry
        pos = first_tok + block * block_kv + offsets  # i32[S]
        valid = pos < end_tok
        page_index = jnp.minimum(lax.div(pos, page_size), pages_per_seq - 1)
        page = page_table_ref[seq, page_index]  # i32[S]
        slot = jnp.where(valid, page * page_size + lax.rem(pos, page_size), 0)
        k = k_ref[slot, h, :]  # f[S, H]
        v = jnp.where(valid[:, None], v_ref[slot, h, :], 0)
        s = (
            lax.dot_general(
                q,
                k,
                (((1,), (1,)), ((), ())),
                precision=precision,
                preferred_element_type=jnp.float32,
            )
            * sm_scale
        )  # f32[R, S]
        if soft_cap is not None:
            s = soft_cap * jnp.tanh(s / soft_cap)
        mask = (pos[None, :] <= q_pos[:, None]) & valid[None, :]
        if sliding_window is not None:
            mask &= pos[None, :] > q_pos[:, None] - sliding_window
        s = jnp.where(mask, s, _MASKED)
        m_new = jnp.maximum(m_prev, s.max(axis=1))
        p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
        alpha = jnp.exp(m_prev - m_new)
        pv = lax.dot_general(
            p.astype(v.dtype),
            v,
            (((1,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=jnp.float32,
        )
        return m_new, alpha * l_prev + p.sum(axis=1), alpha[:, None] * acc_prev + pv

    init = (
        jnp.full((rows,), -jnp.inf, jnp.float32),
        jnp.zeros((rows,), jnp.float32),
        jnp.zeros((rows, head_dim), jnp.float32),
    )
    m, l_sum, acc = lax.fori_loop(lo, hi, body, init)
    o_ref[...] = (acc / jnp.where(l_sum > 0, l_sum, 1.0)[:, None]).astype(o_ref.dtype)
    if lse_refs:
        (lse_ref,) = lse_refs
        lse_ref[...] = jnp.where(l_sum > 0, m + jnp.log(jnp.where(l_sum > 0, l_sum, 1.0)), _MASKED)


def _merge_splits(o, lse):  # f32[S, W, K, R, H], f32[S, W, K, R] -> f32[W, K, R, H]
    weight = jnp.exp(lse - lse.max(axis=0, keepdims=True))
    return (weight[..., None] * o).sum(axis=0) / weight.sum(axis=0)[..., None]


@functools.partial(
    jax.jit,
    static_argnames=(
        "sm_scale",
        "sliding_window",
        "soft_cap",
        "block_q",
        "block_kv",
        "kv_splits",
        "num_warps",
        "num_stages",
        "interpret",
    ),
)
def ragged_paged_attention_gpu(
    q: jax.Array,  # f[T, N, H]
    k_pages: jax.Array,  # f[NP, P, K, H]
    v_pages: jax.Array,  # f[NP, P, K, H]
    md: AttentionMetadata,
    *,
    sm_scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    block_q: int | None = None,
    block_kv: int | None = None,
    kv_splits: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
    interpret: bool = False,
) -> jax.Array:  # f[T, N, H]
    """Ragged paged attention, GPU (Triton) kernel. See the module docstring.

    Args:
      block_q: query tokens per work item, a power of two (default: 1 for decode, ~128 rows).
      block_kv: kv tokens per inner step, a power of two (default 128 decode, 64 otherwise).
      kv_splits: programs per (item, kv head) along kv (default: enough to fill ~264 programs).
      num_warps, num_stages: Triton launch parameters.
      interpret: run the kernel as an XLA loop (CPU); the tuning args then only change speed.
    """
    rpa_blocks.check_inputs(q, k_pages, v_pages, md)
    num_tokens, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_pages.shape
    pages_per_seq = md.page_table.shape[1]
    group = num_heads // num_kv_heads
    block_q = block_q or default_block_q(md.max_q_len, pl.next_power_of_2(group))
    block_kv = block_kv or default_block_kv(md.max_q_len)
    _check_gpu_args(head_dim, block_q, block_kv, sliding_window)
    gp = group_pad(group, block_q)

    items = rpa_blocks.plan_work_items(md, num_tokens, block_q)
    q_blocks = rpa_blocks.pack_queries(
        q, items, num_kv_heads=num_kv_heads, block_q=block_q, group_pad=gp
    )  # f[W, K, R, H]
    num_items, _, rows, _ = q_blocks.shape
    splits = kv_splits or default_kv_splits(
        num_items, num_kv_heads, pages_per_seq * page_size, block_kv
    )
    kernel = functools.partial(
        _kernel,
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        soft_cap=soft_cap,
        page_size=page_size,
        block_q=block_q,
        block_kv=block_kv,
        num_splits=splits,
    )
    whole = pl.BlockSpec()
    o_spec = pl.BlockSpec((None, None, None, rows, head_dim), lambda w, h, s: (s, w, h, 0, 0))
    out_specs, out_shape = (
        [o_spec],
        [jax.ShapeDtypeStruct((splits, *q_blocks.shape), q.dtype if splits == 1 else jnp.float32)],
    )
    if splits > 1:
        out_specs.append(pl.BlockSpec((None, None, None, rows), lambda w, h, s: (s, w, h, 0)))
        out_shape.append(jax.ShapeDtypeStruct((splits, num_items, num_kv_heads, rows), jnp.float32))
    outs = pl.pallas_call(
        kernel,
        grid=(num_items, num_kv_heads, splits),
        in_specs=[whole] * 5
        + [pl.BlockSpec((None, None, rows, head_dim), lambda w, h, s: (w, h, 0, 0))]
        + [whole] * 2,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="ragged_paged_attention_gpu",
    )(
        items.seq,
        items.num_q,
        items.first_pos,
        items.kv_len,
        md.page_table,
        q_blocks,
        k_pages.reshape(-1, num_kv_heads, head_dim),
        v_pages.reshape(-1, num_kv_heads, head_dim),
    )
    out = outs[0][0] if splits == 1 else _merge_splits(*outs)
    return rpa_blocks.unpack_outputs(out, md, num_heads=num_heads, block_q=block_q, dtype=q.dtype)


def _check_gpu_args(head_dim, block_q, block_kv, sliding_window) -> None:
    for name, value in (("head_dim", head_dim), ("block_q", block_q), ("block_kv", block_kv)):
        if value & (value - 1):
            raise ValueError(f"the Triton kernel needs a power-of-two {name}, got {value}")
    if block_kv < 16:
        raise ValueError(f"block_kv must be >= 16 (Triton dot), got {block_kv}")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
