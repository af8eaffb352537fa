"""The GPU attention kernel bodies (Pallas, Triton lowering); `rpa_gpu` launches them.

See `pcjax.kernels.rpa_gpu` for the semantics, the launches and the layout of the rows. This
module holds the two kernels and their index arithmetic:

* `attention_kernel`: program (w, h, s) walks its share of the kv tiles of work item w and kv
  head h with an online softmax; stores its rows (S == 1) or an f32 partial and log-sum-exp.
* `merge_kernel`: program (w, h) folds the partials of the splits that had tiles.

Head dims that are not a power of two (Triton tensors need power-of-two dims) are padded to
``head_pad`` columns in registers: padded columns read as 0 and are never stored.
"""

import dataclasses

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pcjax.kernels.rpa_gpu_tuning import GpuTuning, page_lookup_mode

MASKED = -1e30  # finite, so fully masked rows never produce inf - inf


@dataclasses.dataclass(frozen=True)
class Static:
    """Static parameters of one launch (each one recompiles)."""

    sm_scale: float
    sliding_window: int | None
    soft_cap: float | None
    page_size: int
    pages_per_seq: int
    num_heads: int
    group: int
    head_dim: int  # H
    tuning: GpuTuning

    @property
    def head_pad(self) -> int:
        return head_pad(self.head_dim)


def head_pad(head_dim: int) -> int:
    """H padded to a power of two (>= 16, the least K of a Triton dot)."""
    return max(16, pl.next_power_of_2(head_dim))


def _query_rows(cfg: Static, h, first_token, num_q):
    """Rows of program (., h) in q viewed as f[T * N, H]: (flat row i32[R], real bool[R], t).

    Padding rows get flat row -1 (see `_load_rows` and `store_rows`).
    """
    r = lax.broadcasted_iota(jnp.int32, (cfg.tuning.rows,), 0)
    t, g = lax.rem(r, cfg.tuning.block_q), lax.div(r, cfg.tuning.block_q)
    real = (g < cfg.group) & (t < num_q)
    flat = (first_token + t) * cfg.num_heads + h * cfg.group + g
    return jnp.where(real, flat, -1), real, t


def _columns(cfg: Static, shape):
    """(column index clamped to H - 1, column < H) over `shape`, or None when H needs no pad."""
    if cfg.head_pad == cfg.head_dim:
        return None
    col = lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1)
    return jnp.minimum(col, cfg.head_dim - 1), col < cfg.head_dim


def load_heads(cfg: Static, ref, row, head=None):
    """``ref[row, :]`` of f[X, H], or ``ref[row, head, :]`` of f[X, K, H], as f[len(row), Hp]
    (padded columns read 0). `row` is i32[n] (a gather), `head` a scalar."""
    lead = (row,) if head is None else (row, head)
    columns = _columns(cfg, (row.shape[0], cfg.head_pad))
    if columns is None:
        return ref[(*lead, slice(None))]
    col, real_col = columns
    return jnp.where(real_col, ref[(row[:, None], *lead[1:], col)], 0)


def _load_rows(cfg: Static, ref, flat, real):
    """Rows `flat` of q viewed as f[T * N, H] (zeros for padding rows, which read row 0)."""
    return jnp.where(real[:, None], load_heads(cfg, ref, jnp.maximum(flat, 0)), 0)


def store_rows(cfg: Static, ref, flat, real, value) -> None:
    """Stores the real rows of `value` (f[R, Hp]) into rows `flat` of the output buffer
    (f[T * N, H] on a GPU, f[T * N + 1, Hp] interpreted).

    Padding rows and columns are masked off. Masked rows name the buffer's last row: on a GPU
    they are not written; interpreted, where masked lanes are written back with their old value,
    that row and the padded columns are spares no real element shares.
    """
    rows, head_pad = value.shape
    flat = jnp.where(real, flat, ref.shape[0] - 1)
    col = lax.broadcasted_iota(jnp.int32, (rows, head_pad), 1)
    mask = real[:, None] & (col < cfg.head_dim)
    plgpu.store(ref.at[flat[:, None], col], value.astype(ref.dtype), mask=mask)


def _tile_range(cfg: Static, first_pos, num_q, kv_len, split):
    """The kv tiles of split `split`: (first_tok, end_tok, lo, hi, splits_used).

    The item sees kv positions [first_tok, end_tok); tiles are [i * BKV, (i + 1) * BKV) for
    i in [lo, hi); splits_used of the S splits have at least one tile (0 for an empty item).
    """
    block_kv, num_splits = cfg.tuning.block_kv, cfg.tuning.kv_splits
    end_tok = jnp.where(num_q > 0, jnp.minimum(first_pos + num_q, kv_len), 0)
    first_tok = jnp.int32(0)
    if cfg.sliding_window is not None:
        first_tok = jnp.minimum(jnp.maximum(first_pos - cfg.sliding_window + 1, 0), end_tok)
    first_tile = lax.div(first_tok, block_kv)
    num_tiles = jnp.maximum(lax.div(end_tok + block_kv - 1, block_kv) - first_tile, 0)
    per_split = lax.div(num_tiles + num_splits - 1, num_splits)
    lo = first_tile + jnp.minimum(split * per_split, num_tiles)
    hi = first_tile + jnp.minimum(split * per_split + per_split, num_tiles)
    used = jnp.where(
        per_split > 0, lax.div(num_tiles + per_split - 1, jnp.maximum(per_split, 1)), 0
    )
    return first_tok, end_tok, lo, hi, used


def _tile_slots(cfg: Static, page_table_ref, seq, tile, pos):
    """Cache slots (page * P + offset) of tile `tile`'s positions `pos` (i32[BKV])."""
    page_size, block_kv, last = cfg.page_size, cfg.tuning.block_kv, cfg.pages_per_seq - 1
    mode = page_lookup_mode(page_size, block_kv)
    if mode == "scalar":  # the tile lies in one page: one scalar lookup
        start = tile * block_kv
        page = page_table_ref[seq, jnp.minimum(lax.div(start, page_size), last)]
        return page * page_size + lax.rem(start, page_size) + (pos - start)
    if mode == "vector":  # the tile holds whole pages: one lookup per page
        pages_per_tile = block_kv // page_size
        index = tile * pages_per_tile + lax.broadcasted_iota(jnp.int32, (pages_per_tile,), 0)
        pages = page_table_ref[seq, jnp.minimum(index, last)]  # i32[C]
        offsets = lax.broadcasted_iota(jnp.int32, (pages_per_tile, page_size), 1)
        return (pages[:, None] * page_size + offsets).reshape(block_kv)
    page = page_table_ref[seq, jnp.minimum(lax.div(pos, page_size), last)]  # any page size
    return page * page_size + lax.rem(pos, page_size)


def _dot(a, b, b_contract: int):
    """``a @ b.T`` (b_contract=1) or ``a @ b`` (b_contract=0), f32 results, IEEE f32 for f32."""
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    dims = (((1,), (b_contract,)), ((), ()))
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def attention_kernel(
    # work items (i32[W] each) and the page table (whole arrays)
    seq_ref, num_q_ref, first_pos_ref, kv_len_ref, first_token_ref,
    page_table_ref,  # i32[B, M]
    # inputs
    q_ref,  # f[T * N, H] whole
    k_ref,  # f[NP * P, K, H] whole
    v_ref,  # f[NP * P, K, H] whole
    _out_in_ref,  # the output buffer (see `store_rows`), aliased to the first output
    # outputs: the output buffer (S == 1) or f32 partials [R, H] and log-sum-exp [R] (S > 1)
    *out_refs,
    cfg: Static,
):  # fmt: skip
    w, h, split = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    seq, num_q, first_pos = seq_ref[w], num_q_ref[w], first_pos_ref[w]
    flat, real, t = _query_rows(cfg, h, first_token_ref[w], num_q)
    q = _load_rows(cfg, q_ref, flat, real)  # f[R, Hp]
    q_pos = jnp.where(real, first_pos + t, -1)  # i32[R]; -1: padding row, sees nothing
    first_tok, end_tok, lo, hi, _ = _tile_range(cfg, first_pos, num_q, kv_len_ref[w], split)
    offsets = lax.broadcasted_iota(jnp.int32, (cfg.tuning.block_kv,), 0)

    def body(tile, carry):
        m_prev, l_prev, acc_prev = carry
        pos = tile * cfg.tuning.block_kv + offsets  # i32[BKV]
        valid = (pos >= first_tok) & (pos < end_tok)
        slot = _tile_slots(cfg, page_table_ref, seq, tile, pos)
        k = load_heads(cfg, k_ref, slot, h)  # f[BKV, Hp]; invalid positions: masked out of
        v = jnp.where(valid[:, None], load_heads(cfg, v_ref, slot, h), 0)  # s (may hold NaN)
        s = _dot(q, k, 1) * cfg.sm_scale  # f32[R, BKV]
        if cfg.soft_cap is not None:
            s = cfg.soft_cap * jnp.tanh(s / cfg.soft_cap)
        mask = (pos[None, :] <= q_pos[:, None]) & valid[None, :]
        if cfg.sliding_window is not None:
            mask &= pos[None, :] > q_pos[:, None] - cfg.sliding_window
        s = jnp.where(mask, s, MASKED)
        m_new = jnp.maximum(m_prev, s.max(axis=1))
        p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
        alpha = jnp.exp(m_prev - m_new)
        pv = _dot(p.astype(v.dtype), v, 0)  # f32[R, Hp]
        return m_new, alpha * l_prev + p.sum(axis=1), alpha[:, None] * acc_prev + pv

    m, l_sum, acc = lax.fori_loop(lo, hi, body, _softmax_init(cfg))
    out = acc / jnp.where(l_sum > 0, l_sum, 1.0)[:, None]
    if cfg.tuning.kv_splits == 1:
        store_rows(cfg, out_refs[0], flat, real, out)
    else:
        o_part_ref, lse_ref = out_refs
        o_part_ref[...] = out
        lse_ref[...] = jnp.where(l_sum > 0, m + jnp.log(jnp.where(l_sum > 0, l_sum, 1.0)), MASKED)


def merge_kernel(
    # work items (i32[W] each, whole arrays)
    num_q_ref, first_pos_ref, kv_len_ref, first_token_ref,
    o_part_ref,  # f32[S, W, K, R, Hp] whole
    lse_ref,  # f32[S, W, K, R] whole
    _out_in_ref,  # the output buffer (see `store_rows`), aliased to o_ref
    o_ref,  # the output buffer, whole
    *,
    cfg: Static,
):  # fmt: skip
    """Folds the splits that had tiles (log-sum-exp weights) and stores the real rows."""
    w, h = pl.program_id(0), pl.program_id(1)
    num_q, first_pos = num_q_ref[w], first_pos_ref[w]
    flat, real, _ = _query_rows(cfg, h, first_token_ref[w], num_q)
    *_, used = _tile_range(cfg, first_pos, num_q, kv_len_ref[w], 0)

    def body(split, carry):
        m_prev, l_prev, acc_prev = carry
        lse = plgpu.load(lse_ref.at[split, w, h], mask=real, other=MASKED)  # f32[R]
        part = plgpu.load(o_part_ref.at[split, w, h], mask=real_rows, other=0)  # f32[R, Hp]
        m_new = jnp.maximum(m_prev, lse)
        alpha, weight = jnp.exp(m_prev - m_new), jnp.exp(lse - m_new)
        return m_new, alpha * l_prev + weight, alpha[:, None] * acc_prev + weight[:, None] * part

    real_rows = jnp.broadcast_to(real[:, None], (cfg.tuning.rows, cfg.head_pad))
    _, l_sum, acc = lax.fori_loop(0, used, body, _softmax_init(cfg))
    store_rows(cfg, o_ref, flat, real, acc / jnp.where(l_sum > 0, l_sum, 1.0)[:, None])


def _softmax_init(cfg: Static):
    """Running max, sum and f32 accumulator of the online softmax over R rows."""
    rows = cfg.tuning.rows
    return (
        jnp.full((rows,), -jnp.inf, jnp.float32),
        jnp.zeros((rows,), jnp.float32),
        jnp.zeros((rows, cfg.head_pad), jnp.float32),
    )
