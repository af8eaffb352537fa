"""Synthetic ragged batches for kernel tests and benchmarks (numpy on the host, no jit).

`make_batch` lays out a step the way the engine does: every sequence owns randomly chosen pages
(a permuted page table padded with the null page 0), the cached prefix of each sequence is already
in the pages, and the step's new K/V come separately to be scattered with `write_kv`. Everything
the kernels must never read (the null page, pages nobody owns, slots past a sequence's kv_len) is
NaN when ``poison`` is set, and so are the padding tokens' q/k/v, so a stray read shows up as NaN
in the output.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pcjax.kernels.ragged_paged_attention import (
    AttentionMetadata,
    ragged_paged_attention_reference,
    write_kv,
)

# How close a kernel's output must be to the reference's, per dtype.
TOLERANCE = {jnp.float32: dict(rtol=2e-5, atol=2e-5), jnp.bfloat16: dict(rtol=1e-2, atol=1e-2)}


class Batch(NamedTuple):
    """One attention step before its K/V are written (``write_kv(k_pages, v_pages, k, v, ...)``)."""

    q: jax.Array  # f[T, N, H]
    k: jax.Array  # f[T, K, H]: the step's new keys (padding tokens: NaN when poisoned)
    v: jax.Array  # f[T, K, H]
    k_pages: jax.Array  # f[NP, P, K, H]: cached prefixes only
    v_pages: jax.Array  # f[NP, P, K, H]
    md: AttentionMetadata


def make_batch(
    seed: int,
    q_lens,
    kv_lens,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    page_size: int,
    dtype=jnp.float32,
    num_tokens: int | None = None,
    pages_per_seq: int | None = None,
    spare_pages: int = 3,
    max_q_len: int | None = None,
    poison: bool = True,
    shared: dict[int, tuple[int, int]] | None = None,
) -> Batch:
    """A ragged step: sequence b computes q_lens[b] new tokens and then holds kv_lens[b] tokens.

    Args:
      num_tokens: T, padded with tokens of no sequence (default: sum of q_lens).
      pages_per_seq: M, the page table's width (default: what the longest sequence needs).
      spare_pages: unowned pages in the pool besides the null page.
      max_q_len: the static bucket (default: the largest q_len, at least 1).
      shared: ``{b: (parent, n)}``: sequence b's first n pages are those of the earlier sequence
        ``parent`` (a prefix cache hit); both must hold them whole in their cached prefixes.

    Example: ``make_batch(0, (1, 1), (40, 50), ..., page_size=16, shared={1: (0, 2)})`` gives
    two decodes whose tables begin with the same two pages (32 shared tokens).
    """
    rng = np.random.default_rng(seed)
    q_lens, kv_lens = np.asarray(q_lens, np.int32), np.asarray(kv_lens, np.int32)
    if np.any(q_lens > kv_lens):
        raise ValueError(f"every q_len must be <= its kv_len, got {q_lens} > {kv_lens}")
    shared = shared or {}
    for b, (parent, n) in shared.items():
        if not 0 <= parent < b or n * page_size > (kv_lens - q_lens)[[parent, b]].min():
            raise ValueError(f"sequence {b} cannot share {n} whole cached pages of {parent}")
    need = -(-kv_lens // page_size)  # pages of each sequence
    own = need - np.array([shared.get(b, (0, 0))[1] for b in range(len(need))], np.int64)
    pages_per_seq = pages_per_seq or max(1, int(need.max(initial=0)))
    num_pages = 1 + int(own.sum()) + spare_pages
    num_tokens = num_tokens if num_tokens is not None else int(q_lens.sum())
    shape = (num_pages, page_size, num_kv_heads, head_dim)
    fill = np.nan if poison else 0.0
    k_pages, v_pages = np.full(shape, fill, np.float32), np.full(shape, fill, np.float32)
    page_table = np.zeros((len(kv_lens), pages_per_seq), np.int32)
    free = rng.permutation(np.arange(1, num_pages, dtype=np.int32))
    slot_mapping = np.zeros(num_tokens, np.int32)  # padding tokens write into the null page
    cu_q_lens = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    for b, (q_len, kv_len) in enumerate(zip(q_lens, kv_lens, strict=True)):
        parent, n = shared.get(b, (0, 0))
        page_table[b, :n] = page_table[parent, :n]
        page_table[b, n : need[b]], free = free[: own[b]], free[own[b] :]
        pos = np.arange(kv_len)
        pages, offsets = page_table[b, pos // page_size], pos % page_size
        cached = pos < kv_len - q_len
        mine = cached & (pos >= n * page_size)  # shared pages already hold the parent's K/V
        for pages_array in (k_pages, v_pages):
            pages_array[pages[mine], offsets[mine]] = rng.standard_normal(
                (int(mine.sum()), num_kv_heads, head_dim)
            )
        slot_mapping[cu_q_lens[b] : cu_q_lens[b + 1]] = (pages * page_size + offsets)[~cached]
    # Padding tokens (past cu_q_lens[B]) carry NaN (or 0) queries, keys and values; their K/V
    # land in the null page, which therefore stays poisoned after `write_kv`.
    pad = np.where(np.arange(num_tokens) < cu_q_lens[-1], 0.0, fill)[:, None, None]
    q = rng.standard_normal((num_tokens, num_heads, head_dim)) + pad
    k, v = (rng.standard_normal((num_tokens, num_kv_heads, head_dim)) + pad for _ in range(2))
    md = AttentionMetadata(
        slot_mapping=jnp.asarray(slot_mapping),
        page_table=jnp.asarray(page_table),
        kv_lens=jnp.asarray(kv_lens),
        cu_q_lens=jnp.asarray(cu_q_lens),
        max_q_len=max_q_len or max(1, int(q_lens.max(initial=1))),
    )
    as_dtype = lambda x: jnp.asarray(x, dtype)
    return Batch(as_dtype(q), as_dtype(k), as_dtype(v), as_dtype(k_pages), as_dtype(v_pages), md)


def written_and_reference(batch: Batch, **attention_args) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Writes the step's K/V into the batch's pages and runs the reference on them.

    Returns ``(k_pages, v_pages, want)``: the pages every kernel reads for this step, and the
    reference output for `attention_args` (sm_scale, sliding_window, soft_cap).
    """
    k_pages, v_pages = write_kv(
        batch.k_pages, batch.v_pages, batch.k, batch.v, batch.md.slot_mapping
    )
    want = ragged_paged_attention_reference(batch.q, k_pages, v_pages, batch.md, **attention_args)
    return k_pages, v_pages, want


def assert_matches_reference(out: jax.Array, want: jax.Array) -> None:
    """Compares in float32 within `TOLERANCE` for the output's dtype."""
    np.testing.assert_allclose(
        np.asarray(out, np.float32), np.asarray(want, np.float32), **TOLERANCE[out.dtype.type]
    )


def abstract_launch_args(case) -> tuple:
    """(q, k_pages, v_pages, md) as `jax.ShapeDtypeStruct`s for a `rpa_gpu_tuning.LaunchCase`:
    the shapes of a step of that launch, for lowering and compiling without memory."""
    num_heads = case.group * case.num_kv_heads
    dtype = jnp.dtype(case.dtype)
    num_pages = case.num_seqs * case.pages_per_seq + 1
    pages = jax.ShapeDtypeStruct(
        (num_pages, case.page_size, case.num_kv_heads, case.head_dim), dtype
    )
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    md = AttentionMetadata(
        slot_mapping=i32(case.num_tokens),
        page_table=i32(case.num_seqs, case.pages_per_seq),
        kv_lens=i32(case.num_seqs),
        cu_q_lens=i32(case.num_seqs + 1),
        max_q_len=case.max_q_len,
    )
    q = jax.ShapeDtypeStruct((case.num_tokens, num_heads, case.head_dim), dtype)
    return q, pages, pages, md
