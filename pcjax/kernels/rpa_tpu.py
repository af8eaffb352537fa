"""Ragged paged attention for TPU: Mosaic-style Pallas with scalar prefetch and manual DMAs.

Semantics: exactly `pcjax.kernels.ragged_paged_attention` (ragged mix of decode and prefill
chunks, causal over cached + new tokens, GQA, optional sliding window and soft cap).

Layout and schedule. The wrapper cuts the query tokens into work items of ``block_q`` tokens (see
`pcjax.kernels.rpa_blocks`); the grid is one step per item, and each step handles all K kv heads::

    grid (W,)                     one work item: up to BQ query tokens of one sequence
    scalar prefetch (SMEM)        seq, num_q, first_pos, kv_len  i32[W]; page table i32[B * M]
    q, out blocks (VMEM)          f[K, Gp * BQ, H]   rows head-major: r = g * BQ + t
    k_pages, v_pages (HBM, ANY)   f[NP, P * K, H]    (the cache viewed without copying)
    k_buf, v_buf (VMEM scratch)   f[2, C * P * K, H] two slots of C = pages_per_block pages
    sems                          DMA[2, 2]          (K/V, slot)

A step walks the kv blocks its tokens can see (from the sliding window's first page, or 0, to the
page of its last query token, so pages past kv_len and future pages are never read), C pages per
block. Block i + 1 is DMA'd into the other slot while block i is computed (double buffering).
Head h of a block is the strided row set ``buf[slot, h::K]`` (f[C * P, H]); its G query heads
share it (GQA). Scores and the online softmax (running max m, sum l, accumulator: VMEM scratch)
are f32. Columns past the item's last query token (not fetched: stale or NaN) are masked in the
scores and zeroed in V.

CPU. Under ``interpret=True`` the kernel becomes an XLA loop whose DMAs are synchronous copies.
There it (a) fetches each block right before use into slot 0, copying all C pages unconditionally
(prefetching gains nothing there and each `pl.when` is a costly XLA conditional); (b) reads a
block as f[K, C * P, H] for one dot batched over the K heads (XLA:CPU turns strided ref reads
into element-wise gathers); and (c) takes the packed queries whole and indexes item w itself
(XLA copies a blocked input's whole array on every grid step: O(W^2) for a prefill). Together
~3x faster at the engine's shapes; the math is unchanged. ``tpu_code_path=True`` runs the TPU
code under ``interpret=True`` too, and a ``pltpu.InterpretParams`` interpreter always runs it
(DMA semantics, race detection).

Limits: the page table is held in SMEM (B * M * 4 bytes; keep it under ~256 KiB on real TPUs).
The q/out blocks equal the full arrays in their last two dims, so Gp * BQ rows and head_dim need
no alignment, but real-TPU efficiency wants H % 128 == 0 and P * K % 8 == 0. Verified here in
interpret mode and by lowering for an abstract TPU v5e (Mosaic's Python lowering rules); never
compiled by Mosaic or run on a TPU.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pcjax.kernels import rpa_blocks
from pcjax.kernels.ragged_paged_attention import AttentionMetadata

_MASKED = -1e30  # finite, so fully masked rows never produce inf - inf


def default_block_q(max_q_len: int) -> int:
    """Query tokens per work item: 1 for decode, up to 64 for prefill (measured on CPU)."""
    return min(pl.next_power_of_2(max_q_len), 64)


def default_pages_per_block(page_size: int, pages_per_seq: int) -> int:
    """About 128 kv tokens per block (at least one page, at most the page table's width)."""
    return max(1, min(pages_per_seq, 128 // page_size))


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static kernel parameters (each one recompiles)."""

    sm_scale: float
    sliding_window: int | None
    soft_cap: float | None
    page_size: int
    pages_per_seq: int
    pages_per_block: int
    block_q: int
    xla_loop: bool  # the CPU variant for interpret=True (see "CPU" in the module docstring)

    @property
    def block_kv(self) -> int:
        return self.pages_per_block * self.page_size


def _kv_range(cfg: _Config, first_pos, num_q):
    """First page, end page and number of kv blocks a work item can see (0 for an empty item)."""
    if cfg.sliding_window is None:
        first_page = jnp.int32(0)
    else:
        first_page = jnp.maximum(first_pos - cfg.sliding_window + 1, 0) // cfg.page_size
    end_page = jnp.minimum((first_pos + num_q - 1) // cfg.page_size + 1, cfg.pages_per_seq)
    num_blocks = (end_page - first_page + cfg.pages_per_block - 1) // cfg.pages_per_block
    return first_page, end_page, jnp.where(num_q > 0, num_blocks, 0)


def _fetchers(
    cfg: _Config, page_table_ref, k_hbm, v_hbm, k_buf, v_buf, sems, *, seq, first_page, end_page
):
    """(start, wait) of the DMAs that bring kv block `block` into buffer slot `slot`."""
    page_rows = k_hbm.shape[1]

    def copies(block, slot):
        for j in range(cfg.pages_per_block):
            index = first_page + block * cfg.pages_per_block + j
            row = seq * cfg.pages_per_seq + jnp.minimum(index, cfg.pages_per_seq - 1)
            page, dst = page_table_ref[row], pl.ds(j * page_rows, page_rows)
            yield (
                index < end_page,  # pages past the item's last visible token are not read
                pltpu.make_async_copy(k_hbm.at[page], k_buf.at[slot, dst], sems.at[0, slot]),
                pltpu.make_async_copy(v_hbm.at[page], v_buf.at[slot, dst], sems.at[1, slot]),
            )

    def run(block, slot, op):
        for needed, k_copy, v_copy in copies(block, slot):
            if cfg.xla_loop:  # a conditional costs more there than copying a masked page
                needed = True

            pl.when(needed)(functools.partial(_start_or_wait, (k_copy, v_copy), op))

    return functools.partial(run, op="start"), functools.partial(run, op="wait")


def _start_or_wait(copies, op: str) -> None:
    for copy in copies:
        getattr(copy, op)()


def _dot(spec: str, a, b):
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return jnp.einsum(spec, a, b, precision=precision, preferred_element_type=jnp.float32)


def _softmax_step(cfg: _Config, s, mask, m_prev, l_prev, acc_prev, pv):
    """One online-softmax update with scores `s` (f32[..., R, S]); pv(p) gives p @ V."""
    s = s * cfg.sm_scale
    if cfg.soft_cap is not None:
        s = cfg.soft_cap * jnp.tanh(s / cfg.soft_cap)
    s = jnp.where(mask, s, _MASKED)
    m_new = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
    p = jnp.where(mask, jnp.exp(s - m_new), 0.0)
    alpha = jnp.exp(m_prev - m_new)
    return m_new, alpha * l_prev + p.sum(axis=-1, keepdims=True), alpha * acc_prev + pv(p)


def _attend(
    cfg: _Config, q_ref, k_buf, v_buf, slot, m_ref, l_ref, acc_ref, *, kv_pos0, q_pos, kv_end
):
    """Folds kv block in buffer `slot` (positions kv_pos0...) into the softmax state refs."""
    num_kv_heads, _, head_dim = q_ref.shape
    col = kv_pos0 + lax.broadcasted_iota(jnp.int32, (1, cfg.block_kv), 1)  # i32[1, S]
    mask = col <= q_pos  # bool[R, S]; q_pos is -1 on padding rows
    if cfg.sliding_window is not None:
        mask &= col > q_pos - cfg.sliding_window
    # Columns at or past kv_end (the item's last query token + 1) were not fetched: zero their V.
    col_valid = kv_pos0 + lax.broadcasted_iota(jnp.int32, (cfg.block_kv, 1), 0) < kv_end
    if cfg.xla_loop:
        k = k_buf[slot].reshape(cfg.block_kv, num_kv_heads, head_dim).transpose(1, 0, 2)
        v = v_buf[slot].reshape(cfg.block_kv, num_kv_heads, head_dim).transpose(1, 0, 2)
        v = jnp.where(col_valid[None], v, 0)  # f[K, S, H]
        state = _softmax_step(
            cfg,
            _dot("krh,ksh->krs", q_ref[...], k),
            mask,
            m_ref[...],
            l_ref[...],
            acc_ref[...],
            lambda p: _dot("krs,ksh->krh", p.astype(v.dtype), v),
        )
        m_ref[...], l_ref[...], acc_ref[...] = state
        return
    for h in range(num_kv_heads):
        rows = pl.ds(h, cfg.block_kv, stride=num_kv_heads)
        k = k_buf[slot, rows, :]  # f[S, H]
        v = jnp.where(col_valid, v_buf[slot, rows, :], 0)
        state = _softmax_step(
            cfg,
            _dot("rh,sh->rs", q_ref[h], k),
            mask,
            m_ref[h],
            l_ref[h],
            acc_ref[h],
            lambda p, v=v: _dot("rs,sh->rh", p.astype(v.dtype), v),
        )
        m_ref[h], l_ref[h], acc_ref[h] = state


def _kernel(
    # scalar prefetch (SMEM)
    seq_ref,  # i32[W]
    num_q_ref,  # i32[W]
    first_pos_ref,  # i32[W]
    kv_len_ref,  # i32[W]
    page_table_ref,  # i32[B * M]
    # inputs
    q_ref,  # f[K, R, H] (VMEM block of item w); f[W, K, R, H] whole on the XLA loop
    k_hbm,  # f[NP, P * K, H] (HBM)
    v_hbm,  # f[NP, P * K, H] (HBM)
    # outputs
    o_ref,  # f[K, R, H] (VMEM block of item w)
    # scratch
    k_buf,  # f[2, C * P * K, H] (VMEM): two slots of C pages
    v_buf,  # f[2, C * P * K, H] (VMEM)
    sems,  # DMA[2, 2]: (K/V, slot)
    m_ref,  # f32[K, R, 1] (VMEM): running max
    l_ref,  # f32[K, R, 1] (VMEM): running sum
    acc_ref,  # f32[K, R, H] (VMEM): running output
    *,
    cfg: _Config,
):
    w = pl.program_id(0)
    if cfg.xla_loop:
        q_ref = q_ref.at[w]
    seq, num_q, first_pos = seq_ref[w], num_q_ref[w], first_pos_ref[w]
    first_page, end_page, num_blocks = _kv_range(cfg, first_pos, num_q)
    start_fetch, wait_fetch = _fetchers(
        cfg,
        page_table_ref,
        k_hbm,
        v_hbm,
        k_buf,
        v_buf,
        sems,
        seq=seq,
        first_page=first_page,
        end_page=end_page,
    )
    # Query rows are head-major (r = g * BQ + t); rows past num_q see nothing (position -1).
    t = lax.broadcasted_iota(jnp.int32, (q_ref.shape[1], 1), 0) % cfg.block_q
    q_pos = jnp.where(t < num_q, first_pos + t, -1)  # i32[R, 1]
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    if not cfg.xla_loop:

        @pl.when(num_blocks > 0)
        def _():
            start_fetch(0, 0)

    def body(block, carry):
        if cfg.xla_loop:  # DMAs are synchronous copies there: prefetching gains nothing
            slot = 0
            start_fetch(block, slot)
        else:
            slot = block % 2

            @pl.when(block + 1 < num_blocks)
            def _():
                start_fetch(block + 1, 1 - slot)

        wait_fetch(block, slot)
        kv_pos0 = (first_page + block * cfg.pages_per_block) * cfg.page_size
        _attend(
            cfg,
            q_ref,
            k_buf,
            v_buf,
            slot,
            m_ref,
            l_ref,
            acc_ref,
            kv_pos0=kv_pos0,
            q_pos=q_pos,
            kv_end=jnp.minimum(first_pos + num_q, kv_len_ref[w]),
        )
        return carry

    lax.fori_loop(0, num_blocks, body, 0)
    l_final = l_ref[...]
    o_ref[...] = (acc_ref[...] / jnp.where(l_final > 0, l_final, 1.0)).astype(o_ref.dtype)


@functools.partial(
    jax.jit,
    static_argnames=(
        "sm_scale",
        "sliding_window",
        "soft_cap",
        "block_q",
        "pages_per_block",
        "interpret",
        "tpu_code_path",
    ),
)
def ragged_paged_attention_tpu(
    q: jax.Array,  # f[T, N, H]
    k_pages: jax.Array,  # f[NP, P, K, H]
    v_pages: jax.Array,  # f[NP, P, K, H]
    md: AttentionMetadata,
    *,
    sm_scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    block_q: int | None = None,
    pages_per_block: int | None = None,
    interpret=False,
    tpu_code_path: bool | None = None,
) -> jax.Array:  # f[T, N, H]
    """Ragged paged attention, TPU kernel. See the module docstring.

    When ``md.max_q_len > 1`` the single-token sequences (decodes) of the batch get a kernel call
    of their own with one-token work items, so a decode in a mixed batch does not pay for
    ``block_q`` query rows (measured 1.6x on the mixed engine batch on CPU).

    Args:
      block_q: query tokens per work item (default `default_block_q(md.max_q_len)`).
      pages_per_block: pages per DMA'd kv block (default: about 128 tokens).
      interpret: False on TPU; True (XLA loop on CPU, DMAs synchronous) or a
        `pltpu.InterpretParams` (DMA semantics, race detection; slow) elsewhere.
      tpu_code_path: run the TPU code path even under ``interpret=True`` (for tests; default:
        only when not ``interpret=True``, see "CPU" in the module docstring).
    """
    rpa_blocks.check_inputs(q, k_pages, v_pages, md)
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
    page_size, pages_per_seq = k_pages.shape[1], md.page_table.shape[1]
    cfg = _Config(
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        soft_cap=soft_cap,
        page_size=page_size,
        pages_per_seq=pages_per_seq,
        pages_per_block=pages_per_block or default_pages_per_block(page_size, pages_per_seq),
        block_q=block_q or default_block_q(md.max_q_len),
        xla_loop=interpret is True and not tpu_code_path,
    )
    if md.max_q_len == 1 or cfg.block_q == 1:
        return _call(cfg, q, k_pages, v_pages, md, interpret=interpret)
    decode = md.q_lens == 1  # bool[B]
    single = dataclasses.replace(cfg, block_q=1)
    return _call(cfg, q, k_pages, v_pages, md, interpret=interpret, select=~decode) + _call(
        single, q, k_pages, v_pages, md, interpret=interpret, select=decode, max_q_len=1
    )


def _call(cfg: _Config, q, k_pages, v_pages, md, *, interpret, select=None, max_q_len=None):
    """One pallas_call over the work items of the selected sequences; others' tokens get 0."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_pages.shape[2]
    items = rpa_blocks.plan_work_items(
        md, num_tokens, cfg.block_q, select=select, max_q_len=max_q_len
    )
    q_blocks = rpa_blocks.pack_queries(
        q,
        items,
        num_kv_heads=num_kv_heads,
        block_q=cfg.block_q,
        group_pad=num_heads // num_kv_heads,
    )  # f[W, K, R, H]
    num_items, _, rows, _ = q_blocks.shape
    page_rows = cfg.page_size * num_kv_heads
    block = pl.BlockSpec((None, num_kv_heads, rows, head_dim), lambda w, *_: (w, 0, 0, 0))
    hbm = pl.BlockSpec(memory_space=pl.ANY)
    buf = pltpu.VMEM((2, cfg.pages_per_block * page_rows, head_dim), k_pages.dtype)
    stat = pltpu.VMEM((num_kv_heads, rows, 1), jnp.float32)
    out = pl.pallas_call(
        functools.partial(_kernel, cfg=cfg),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=5,
            grid=(num_items,),
            in_specs=[hbm if cfg.xla_loop else block, hbm, hbm],
            out_specs=block,
            scratch_shapes=[
                buf, buf, pltpu.SemaphoreType.DMA((2, 2)), stat, stat,
                pltpu.VMEM((num_kv_heads, rows, head_dim), jnp.float32),
            ],
        ),
        out_shape=jax.ShapeDtypeStruct(q_blocks.shape, q.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        interpret=interpret,
        name="ragged_paged_attention_tpu",
    )(
        items.seq, items.num_q, items.first_pos, items.kv_len, md.page_table.reshape(-1),
        q_blocks,
        k_pages.reshape(-1, page_rows, head_dim),
        v_pages.reshape(-1, page_rows, head_dim),
    )  # fmt: skip
    return rpa_blocks.unpack_outputs(
        out, md, num_heads=num_heads, block_q=cfg.block_q, dtype=q.dtype, select=select
    )
