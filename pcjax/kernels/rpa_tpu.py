"""Ragged paged attention for TPU: Mosaic-style Pallas with manual page DMAs.

Semantics: exactly `pcjax.kernels.ragged_paged_attention` (ragged mix of decode and prefill
chunks, causal over cached + new tokens, GQA, optional sliding window and soft cap).

Layout and schedule. The wrapper cuts the query tokens into work items of ``block_q`` tokens (see
`pcjax.kernels.rpa_blocks`); the grid is one step per item, and each step handles all K kv heads::

    grid (W,), in order ("arbitrary")  one work item: up to BQ query tokens of one sequence
    scalar prefetch (SMEM)        seq, num_q, first_pos, kv_len  i32[W]
    page table (HBM)              i32[B * NC, TB]  rows of TB = 128 page ids; two rows in SMEM
    q, out blocks (VMEM)          f[K, Gp * BQ, H] rows head-major: r = g * BQ + t
    k_pages, v_pages (HBM, ANY)   f[NP, P, K, H]   the cache as the engine keeps it (no copy)
    k_buf, v_buf (VMEM scratch)   f[2, F, C, P, K, L]  two slots of C whole pages; the head dim
                                  in F folds of L = min(H, 128) lanes (one DMA per page and fold)

A step walks the C-aligned kv blocks its tokens can see (from the sliding window's first page, or
0, to the page of its last query token; pages outside that range are not fetched). The DMAs of the
next block, across items too, and the page-table row after it are in flight while a block is
computed; `pcjax.kernels.rpa_tpu_pipeline` has the schedule, the page-table blocks and how a
head's rows are read (32-bit sublane-strided loads; bf16 through a u32 view of row pairs, no
strided bf16 load). Each page DMA lands at a page index of the buffer (a leading, untiled dim),
so every page size is aligned. Scores and the online softmax (running max m, sum l, accumulator:
VMEM scratch) are f32. Columns outside the fetched pages or past the item's last query token
(stale or NaN) are masked in the scores and zeroed in V.

CPU. Under ``interpret=True`` the kernel becomes an XLA loop whose DMAs are synchronous copies.
There a second body (``xla_loop``) (a) fetches each block right before use, all C pages
unconditionally (prefetching gains nothing there and each `pl.when` is a costly XLA conditional),
reading the scalar-prefetched page table (no SMEM limit on a CPU); (b) reads a block as
f[K, C * P, H] for one dot batched over the K heads; and (c) takes the packed queries whole and
indexes item w itself (XLA copies a blocked input's whole array on every grid step: O(W^2) for a
prefill). The math is the same. ``tpu_code_path=True`` runs the TPU body under ``interpret=True``
too, and a ``pltpu.InterpretParams`` interpreter always runs it (DMA semantics, race detection;
heads are read there by plain indexing, the same elements: it supports no reshaped or bitcast
refs).

Limits (TPU): H <= 128 or a multiple of 128; ``pages_per_block`` a power of two (it must divide
TB); VMEM and SMEM as sized by `pcjax.kernels.rpa_tpu_budget` (the wrapper raises the scoped VMEM
limit when a configuration needs it and refuses one over the cap). Verified in interpret mode, by
lowering for an abstract TPU v5e, and by compiling with Mosaic for TPU v5e on a CPU host where
libtpu is installed (``tests/kernels/test_rpa_tpu_compile.py``); never run on a TPU.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pcjax.kernels import rpa_blocks, rpa_tpu_budget
from pcjax.kernels.ragged_paged_attention import AttentionMetadata
from pcjax.kernels.rpa_tpu_budget import (
    LANES,
    TABLE_BLOCK,
    KernelShape,
    default_block_q,
    default_pages_per_block,
    kernel_shapes,
)
from pcjax.kernels.rpa_tpu_math import (
    KernelConfig,
    dot,
    finish,
    init_state,
    masks,
    softmax_step,
)
from pcjax.kernels.rpa_tpu_pipeline import ItemRefs, Stream, block_range, load_head


def _kernel_tpu(
    seq_ref, num_q_ref, first_pos_ref, kv_len_ref,  # scalar prefetch (SMEM): i32[W] each
    table_hbm,  # i32[B * NC, TB] (HBM)
    q_ref,  # f[K, R, H] (VMEM block of item w)
    k_hbm, v_hbm,  # f[NP, P, K, H] (HBM)
    o_ref,  # f[K, R, H] (VMEM block of item w)
    k_buf, v_buf,  # f[2, F, C, P, K, L] (VMEM)
    table_buf,  # i32[2, TB] (SMEM)
    state,  # i32[3] (SMEM): see rpa_tpu_pipeline.Stream
    sems,  # DMA[3, 2]: (K, V, table) x slot
    m_ref, l_ref,  # f32[K, R, 1] (VMEM): running max and sum
    acc_ref,  # f32[K, R, H] (VMEM): running output
    *,
    cfg: KernelConfig,
):  # fmt: skip
    items = ItemRefs(seq_ref, num_q_ref, first_pos_ref, kv_len_ref)
    stream = Stream(cfg, items, table_hbm, k_hbm, v_hbm, k_buf, v_buf, table_buf, state, sems)
    w = pl.program_id(0)
    pl.when(w == 0)(stream.prologue)
    init_state(m_ref, l_ref, acc_ref)
    pages = stream.blocks(w)
    first_pos, num_q, kv_len = first_pos_ref[w], num_q_ref[w], kv_len_ref[w]

    def body(b, carry):
        stream.start_next(w, b)
        slot = stream.wait(w, b)
        mask, col_ok = masks(cfg, q_ref.shape[1], b, pages, first_pos, num_q, kv_len)
        for h in range(q_ref.shape[0]):
            k = load_head(k_buf, slot, h, indexed=cfg.indexed_loads)
            v = jnp.where(col_ok, load_head(v_buf, slot, h, indexed=cfg.indexed_loads), 0)
            m_ref[h], l_ref[h], acc_ref[h] = softmax_step(
                cfg, dot("rh,sh->rs", q_ref[h], k), mask,
                m_ref[h], l_ref[h], acc_ref[h],
                lambda p, v=v: dot("rs,sh->rh", p.astype(v.dtype), v),
            )  # fmt: skip
        return carry

    lax.fori_loop(pages.first_block, pages.end_block, body, 0)
    finish(o_ref, l_ref, acc_ref)


def _kernel_xla_loop(
    seq_ref, num_q_ref, first_pos_ref, kv_len_ref,  # scalar prefetch: i32[W] each
    table_ref,  # i32[B * M] (scalar prefetch; CPU only)
    q_hbm,  # f[W, K, R, H] (whole)
    k_hbm, v_hbm,  # f[NP, P, K, H]
    o_ref,  # f[K, R, H] (block of item w)
    k_buf, v_buf,  # f[C, P, K, H]
    sems,  # DMA[2]
    m_ref, l_ref, acc_ref,
    *,
    cfg: KernelConfig,
):  # fmt: skip
    w = pl.program_id(0)
    q = q_hbm[w]  # f[K, R, H]
    seq, first_pos, num_q, kv_len = seq_ref[w], first_pos_ref[w], num_q_ref[w], kv_len_ref[w]
    pages = block_range(cfg, first_pos, num_q)
    num_kv_heads, rows, head_dim = q.shape
    init_state(m_ref, l_ref, acc_ref)

    def body(b, carry):
        for j in range(cfg.pages_per_block):
            index = jnp.minimum(b * cfg.pages_per_block + j, cfg.pages_per_seq - 1)
            page = table_ref[seq * cfg.pages_per_seq + index]
            for kv, (hbm, buf) in enumerate(((k_hbm, k_buf), (v_hbm, v_buf))):
                copy = pltpu.make_async_copy(hbm.at[page], buf.at[j], sems.at[kv])
                copy.start()
                copy.wait()
        mask, col_ok = masks(cfg, rows, b, pages, first_pos, num_q, kv_len)
        heads_major = lambda x: x.reshape(cfg.block_kv, num_kv_heads, head_dim).transpose(1, 0, 2)  # noqa: E731
        k, v = heads_major(k_buf[...]), jnp.where(col_ok[None], heads_major(v_buf[...]), 0)
        m_ref[...], l_ref[...], acc_ref[...] = softmax_step(
            cfg, dot("krh,ksh->krs", q, k), mask, m_ref[...], l_ref[...], acc_ref[...],
            lambda p: dot("krs,ksh->krh", p.astype(v.dtype), v),
        )  # fmt: skip
        return carry

    lax.fori_loop(pages.first_block, pages.end_block, body, 0)
    finish(o_ref, l_ref, acc_ref)


@functools.partial(
    jax.jit,
    static_argnames=(
        "sm_scale",
        "sliding_window",
        "soft_cap",
        "block_q",
        "pages_per_block",
        "table_block",
        "vmem_limit_bytes",
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
    table_block: int = TABLE_BLOCK,
    vmem_limit_bytes: int | None = None,
    interpret=False,
    tpu_code_path: bool | None = None,
) -> jax.Array:  # f[T, N, H]
    """Ragged paged attention, TPU kernel. See the module docstring.

    When ``md.max_q_len > 1`` the single-token sequences (decodes) of the batch get a kernel call
    of their own with one-token work items, so a decode in a mixed batch does not pay for
    ``block_q`` query rows (measured 1.6x on the mixed engine batch on CPU).

    Args:
      block_q: query tokens per work item (default `default_block_q(md.max_q_len)`, halved on
        the TPU code path until the kernel fits the scoped-VMEM default, see `kernel_shapes`).
      pages_per_block: pages per DMA'd kv block (default: about 128 tokens, a power of two).
      table_block: page ids per page-table row brought to SMEM; a multiple of pages_per_block,
        and of 128 when compiling for a TPU (DMA alignment). Smaller rows serve interpret-mode
        tests of the blocked table.
      vmem_limit_bytes: scoped VMEM to compile with (default: `rpa_tpu_budget.vmem_limit_for`).
      interpret: False on TPU; True (XLA loop on CPU, DMAs synchronous) or a
        `pltpu.InterpretParams` (DMA semantics, race detection; slow) elsewhere.
      tpu_code_path: run the TPU code path even under ``interpret=True`` (for tests; default:
        only when not ``interpret=True``, see "CPU" in the module docstring).

    Raises:
      ValueError: bad shapes or window; on the TPU code path also a head_dim over 128 that is
        not a multiple of 128, a pages_per_block that does not divide 128, or (compiling for a
        TPU) a configuration over the VMEM cap or SMEM (see `rpa_tpu_budget`).
    """
    rpa_blocks.check_inputs(q, k_pages, v_pages, md)
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
    _, page_size, num_kv_heads, head_dim = k_pages.shape
    pages_per_seq = md.page_table.shape[1]
    cfg = KernelConfig(
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        soft_cap=soft_cap,
        page_size=page_size,
        pages_per_seq=pages_per_seq,
        pages_per_block=pages_per_block or default_pages_per_block(page_size, pages_per_seq),
        block_q=block_q or default_block_q(md.max_q_len),
        table_block=table_block,
        xla_loop=interpret is True and not tpu_code_path,
        indexed_loads=isinstance(interpret, pltpu.InterpretParams),
    )
    shapes = (None, None)
    if not cfg.xla_loop:
        _check_tpu_config(cfg, head_dim, compiled=interpret is False)
        shapes = kernel_shapes(
            dtype=k_pages.dtype, num_tokens=q.shape[0], num_heads=q.shape[1],
            num_kv_heads=num_kv_heads, head_dim=head_dim, page_size=page_size,
            num_seqs=md.kv_lens.shape[0], pages_per_seq=pages_per_seq, max_q_len=md.max_q_len,
            block_q=block_q, pages_per_block=cfg.pages_per_block,
        )  # fmt: skip
        cfg = dataclasses.replace(cfg, block_q=shapes[0].rows * num_kv_heads // q.shape[1])
    call = functools.partial(
        _call, q=q, k_pages=k_pages, v_pages=v_pages, md=md, interpret=interpret,
        vmem_limit_bytes=vmem_limit_bytes,
    )  # fmt: skip
    if md.max_q_len == 1 or cfg.block_q == 1:
        return call(cfg, shape=shapes[0])
    decode = md.q_lens == 1  # bool[B]
    single = dataclasses.replace(cfg, block_q=1)
    return call(cfg, shape=shapes[0], select=~decode) + call(
        single, shape=shapes[1], select=decode, max_q_len=1
    )


def _check_tpu_config(cfg: KernelConfig, head_dim: int, *, compiled: bool) -> None:
    if head_dim > LANES and head_dim % LANES:
        raise ValueError(
            f"the TPU kernel needs head_dim <= {LANES} or a multiple of {LANES}, got {head_dim}"
        )
    if cfg.table_block % cfg.pages_per_block:
        raise ValueError(
            f"pages_per_block ({cfg.pages_per_block}) must divide table_block "
            f"({cfg.table_block}); the default table_block {TABLE_BLOCK} needs a power of two"
        )
    if compiled and cfg.table_block % TABLE_BLOCK:
        raise ValueError(f"table_block must be a multiple of {TABLE_BLOCK} on a TPU")


def _call(
    cfg: KernelConfig,
    q,
    k_pages,
    v_pages,
    md,
    *,
    interpret,
    shape: KernelShape | None,
    vmem_limit_bytes=None,
    select=None,
    max_q_len=None,
):
    """One pallas_call over the work items of the selected sequences; others' tokens get 0."""
    num_tokens, num_heads, _ = q.shape
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
    scalars = (items.seq, items.num_q, items.first_pos, items.kv_len)
    if cfg.xla_loop:
        out = _pallas_xla_loop(cfg, scalars, md.page_table, q_blocks, k_pages, v_pages)
    else:
        limit = vmem_limit_bytes
        if limit is None and interpret is False:
            limit = rpa_tpu_budget.vmem_limit_for(shape)
        out = _pallas_tpu(cfg, scalars, md.page_table, q_blocks, k_pages, v_pages, limit, interpret)
    return rpa_blocks.unpack_outputs(
        out, md, num_heads=num_heads, block_q=cfg.block_q, dtype=q.dtype, select=select
    )


def _pallas_tpu(
    cfg: KernelConfig, scalars, page_table, q_blocks, k_pages, v_pages, limit, interpret
):
    num_items, num_kv_heads, rows, head_dim = q_blocks.shape
    num_seqs, pages_per_seq = page_table.shape
    table_cols = pl.cdiv(pages_per_seq, cfg.table_block) * cfg.table_block
    table = jnp.pad(page_table, ((0, 0), (0, table_cols - pages_per_seq)))
    lanes = min(head_dim, LANES)
    folds = head_dim // lanes
    buf_shape = (2, folds, cfg.pages_per_block, cfg.page_size, num_kv_heads, lanes)
    block = pl.BlockSpec((None, num_kv_heads, rows, head_dim), lambda w, *_: (w, 0, 0, 0))
    hbm = pl.BlockSpec(memory_space=pl.ANY)
    stat = pltpu.VMEM((num_kv_heads, rows, 1), jnp.float32)
    return pl.pallas_call(
        functools.partial(_kernel_tpu, cfg=cfg),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=len(scalars),
            grid=(num_items,),
            in_specs=[hbm, block, hbm, hbm],
            out_specs=block,
            scratch_shapes=[
                pltpu.VMEM(buf_shape, k_pages.dtype), pltpu.VMEM(buf_shape, k_pages.dtype),
                pltpu.SMEM((2, cfg.table_block), jnp.int32), pltpu.SMEM((3,), jnp.int32),
                pltpu.SemaphoreType.DMA((3, 2)), stat, stat,
                pltpu.VMEM((num_kv_heads, rows, head_dim), jnp.float32),
            ],
        ),
        out_shape=jax.ShapeDtypeStruct(q_blocks.shape, q_blocks.dtype),
        # Grid steps prefetch for each other: they must run in order on one core.
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("arbitrary",), vmem_limit_bytes=limit
        ),
        interpret=interpret,
        name="ragged_paged_attention_tpu",
    )(*scalars, table.reshape(-1, cfg.table_block), q_blocks, k_pages, v_pages)  # fmt: skip


def _pallas_xla_loop(cfg: KernelConfig, scalars, page_table, q_blocks, k_pages, v_pages):
    num_items, num_kv_heads, rows, head_dim = q_blocks.shape
    buf = pltpu.VMEM((cfg.pages_per_block, *k_pages.shape[1:]), k_pages.dtype)
    stat = pltpu.VMEM((num_kv_heads, rows, 1), jnp.float32)
    hbm = pl.BlockSpec(memory_space=pl.ANY)
    block = pl.BlockSpec((None, num_kv_heads, rows, head_dim), lambda w, *_: (w, 0, 0, 0))
    return pl.pallas_call(
        functools.partial(_kernel_xla_loop, cfg=cfg),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=len(scalars) + 1,
            grid=(num_items,),
            in_specs=[hbm, hbm, hbm],
            out_specs=block,
            scratch_shapes=[
                buf, buf, pltpu.SemaphoreType.DMA((2,)), stat, stat,
                pltpu.VMEM((num_kv_heads, rows, head_dim), jnp.float32),
            ],
        ),
        out_shape=jax.ShapeDtypeStruct(q_blocks.shape, q_blocks.dtype),
        interpret=True,
        name="ragged_paged_attention_tpu",
    )(*scalars, page_table.reshape(-1), q_blocks, k_pages, v_pages)  # fmt: skip
