"""Query blocking shared by the Pallas kernels: work items, packed queries, unpacked outputs.

The kernels do not walk the ragged flat token axis themselves. Before the kernel, plain jnp (inside
the same jit) cuts every sequence's query tokens into blocks of ``block_q`` tokens; each block is
one *work item* ``w`` (a grid step of the kernels) and is packed, per kv head, into ``R = Gp * BQ``
rows, head-major: row ``r = g * BQ + t`` is query head ``k * G + g`` of the item's t-th token.
``Gp >= G`` pads the query heads of one kv head (the GPU kernel needs powers of two).

Worked example (BQ = 4, q_lens = [6, 1, 0]): items are (seq 0, tokens 0-3), (seq 0, tokens 4-5),
(seq 1, token 0), then empty items (``num_q == 0``) up to the static count W.

    W = min(B * ceil(max_q_len / BQ), ceil(T / BQ) + B)

bounds the items for any ragged batch whose q_lens respect ``max_q_len``. Empty items write zeros.
The kernels take the per-item scalars below and never look at ``cu_q_lens`` again; the output is
unpacked with a gather (every real query token reads its row; tokens past ``cu_q_lens[B]`` get 0).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from pcjax.kernels.ragged_paged_attention import AttentionMetadata


class WorkItems(NamedTuple):
    """Per-item scalars, all i32[W]; an empty item has ``num_q == 0`` and ``kv_len == 0``."""

    seq: jax.Array  # i32[W]: sequence of the item (0 for empty items)
    num_q: jax.Array  # i32[W]: real query tokens in the item, 0..BQ
    first_pos: jax.Array  # i32[W]: absolute position of the item's first query token
    kv_len: jax.Array  # i32[W]: kv tokens of the item's sequence
    first_token: jax.Array  # i32[W]: flat index (into q) of the item's first query token


def num_work_items(num_seqs: int, num_tokens: int, max_q_len: int, block_q: int) -> int:
    """The static W: enough items for any batch respecting the metadata's bounds."""
    return max(1, min(num_seqs * _cdiv(max_q_len, block_q), _cdiv(num_tokens, block_q) + num_seqs))


def plan_work_items(
    md: AttentionMetadata,
    num_tokens: int,
    block_q: int,
    *,
    select: jax.Array | None = None,
    max_q_len: int | None = None,
) -> WorkItems:
    """Cuts every sequence's query tokens into blocks of `block_q` (jnp; runs inside jit).

    Args:
      select: bool[B], only these sequences get items (default: all).
      max_q_len: a tighter static bound on the selected sequences' q_len than md's.
    """
    num_seqs = md.kv_lens.shape[0]
    num_items = num_work_items(num_seqs, num_tokens, max_q_len or md.max_q_len, block_q)
    q_lens = _selected_q_lens(md, select)  # i32[B]
    blocks = (q_lens + block_q - 1) // block_q  # i32[B]
    item_end = jnp.cumsum(blocks)  # i32[B]
    item = jnp.arange(num_items, dtype=jnp.int32)  # i32[W]
    seq = jnp.minimum(jnp.searchsorted(item_end, item, side="right"), num_seqs - 1)
    seq = seq.astype(jnp.int32)
    real = item < item_end[-1]
    q_start = (item - (item_end[seq] - blocks[seq])) * block_q  # first query offset in the seq
    num_q = jnp.where(real, jnp.clip(q_lens[seq] - q_start, 0, block_q), 0)
    kv_len = jnp.where(real, md.kv_lens[seq], 0)
    return WorkItems(
        seq=jnp.where(real, seq, 0),
        num_q=num_q.astype(jnp.int32),
        first_pos=jnp.where(real, kv_len - q_lens[seq] + q_start, 0).astype(jnp.int32),
        kv_len=kv_len.astype(jnp.int32),
        first_token=jnp.where(real, md.cu_q_lens[seq] + q_start, num_tokens).astype(jnp.int32),
    )


def pack_queries(
    q: jax.Array,  # f[T, N, H]
    items: WorkItems,
    *,
    num_kv_heads: int,
    block_q: int,
    group_pad: int,
) -> jax.Array:  # f[W, K, Gp * BQ, H]
    """Gathers each item's query tokens into head-major rows per kv head; padding rows are 0."""
    num_tokens, num_heads, head_dim = q.shape
    group = num_heads // num_kv_heads
    offsets = jnp.arange(block_q, dtype=jnp.int32)  # i32[BQ]
    token = items.first_token[:, None] + offsets  # i32[W, BQ]
    token = jnp.where(offsets < items.num_q[:, None], token, num_tokens)
    rows = q.at[token].get(mode="fill", fill_value=0)  # f[W, BQ, N, H]
    rows = rows.reshape(-1, block_q, num_kv_heads, group, head_dim)
    if group_pad > group:
        rows = jnp.pad(rows, ((0, 0), (0, 0), (0, 0), (0, group_pad - group), (0, 0)))
    rows = rows.transpose(0, 2, 3, 1, 4)  # f[W, K, Gp, BQ, H]
    return rows.reshape(-1, num_kv_heads, group_pad * block_q, head_dim)


def unpack_outputs(
    out: jax.Array,  # f[W, K, Gp * BQ, H]
    md: AttentionMetadata,
    *,
    num_heads: int,
    block_q: int,
    dtype,
    select: jax.Array | None = None,
) -> jax.Array:  # f[T, N, H]
    """Gathers every query token's rows back to the flat layout; tokens of no (selected)
    sequence get 0."""
    num_items, num_kv_heads, rows, head_dim = out.shape
    group_pad, group = rows // block_q, num_heads // num_kv_heads
    num_tokens = md.slot_mapping.shape[0]
    out = out.reshape(num_items, num_kv_heads, group_pad, block_q, head_dim)[:, :, :group]
    out = out.transpose(0, 3, 1, 2, 4).reshape(num_items * block_q, num_heads, head_dim)

    blocks = (_selected_q_lens(md, select) + block_q - 1) // block_q
    item_start = jnp.cumsum(blocks) - blocks  # i32[B]
    token = jnp.arange(num_tokens, dtype=jnp.int32)  # i32[T]
    seq = jnp.searchsorted(md.cu_q_lens[1:], token, side="right").astype(jnp.int32)
    real = token < md.cu_q_lens[-1]
    seq = jnp.minimum(seq, md.kv_lens.shape[0] - 1)
    if select is not None:
        real &= select[seq]
    offset = token - md.cu_q_lens[seq]
    row = (item_start[seq] + offset // block_q) * block_q + offset % block_q
    flat = out.at[jnp.where(real, row, num_items * block_q)].get(mode="fill", fill_value=0)
    return flat.astype(dtype)


def check_inputs(q, k_pages, v_pages, md: AttentionMetadata) -> None:
    """Static shape checks shared by the kernels; raises ValueError with the offending shapes."""
    if q.ndim != 3 or k_pages.ndim != 4:
        raise ValueError(
            f"want q f[T, N, H] and pages f[NP, P, K, H], got {q.shape}, {k_pages.shape}"
        )
    if k_pages.shape != v_pages.shape:
        raise ValueError(f"k_pages {k_pages.shape} and v_pages {v_pages.shape} differ")
    num_tokens, num_heads, head_dim = q.shape
    _, _, num_kv_heads, kv_head_dim = k_pages.shape
    if kv_head_dim != head_dim:
        raise ValueError(f"head_dim of q ({head_dim}) and of the pages ({kv_head_dim}) differ")
    if num_heads % num_kv_heads:
        raise ValueError(f"N={num_heads} query heads is not a multiple of K={num_kv_heads}")
    num_seqs = md.kv_lens.shape[0]
    if md.page_table.ndim != 2 or md.page_table.shape[0] != num_seqs:
        raise ValueError(f"page_table {md.page_table.shape} does not match B={num_seqs}")
    if md.cu_q_lens.shape != (num_seqs + 1,):
        raise ValueError(f"cu_q_lens {md.cu_q_lens.shape} is not i32[B + 1] with B={num_seqs}")
    if md.slot_mapping.shape != (num_tokens,):
        raise ValueError(f"slot_mapping {md.slot_mapping.shape} is not i32[T] with T={num_tokens}")
    if md.max_q_len < 1:
        raise ValueError(f"max_q_len must be >= 1, got {md.max_q_len}")


def _selected_q_lens(md: AttentionMetadata, select) -> jax.Array:  # i32[B]
    return md.q_lens if select is None else jnp.where(select, md.q_lens, 0)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)
