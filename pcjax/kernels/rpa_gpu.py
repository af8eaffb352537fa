"""Ragged paged attention for GPU: Pallas with the Triton lowering, split-KV online softmax.

Semantics: exactly `pcjax.kernels.ragged_paged_attention` (ragged mix of decode and prefill
chunks, causal over cached + new tokens, GQA, optional sliding window and soft cap).

Why Triton and not Mosaic GPU. Across the supported range (jax 0.11.2 ... 0.12) the Triton lowering
has a stable, small surface: `pallas_call` with BlockSpecs, scalar, gathered and masked loads and
stores by pointer arithmetic, `dot`, and `fori_loop` with dynamic bounds (lowered to `scf.for`,
which Triton software-pipelines). It runs on any CUDA GPU the jax wheels support. Mosaic GPU needs
Hopper or newer, warpgroup-level code with explicit TMA copies and barriers, and its API changed
between those releases; a paged gather (one TMA descriptor per page) is also awkward there.
Pallas' Triton backend is deprecated in both 0.11.2 and 0.12 (a DeprecationWarning at lowering)
but works; the day it goes, this kernel moves to Mosaic GPU behind the same wrapper.

Launches. A batch with prefill rows is two launches of the attention kernel: its prefill chunks
in work items of ``block_q`` query tokens (`rpa_blocks.plan_work_items`), then its decodes with one
token per item and a tuning of their own, so a decode never pays for ``block_q`` query rows. Both
write into one output buffer (aliased through the calls), and so does the merge kernel::

    attention grid (W, K, S)   work item w, kv head h, kv split s
    merge grid     (W, K)      when S > 1: folds the S partial outputs of (w, h)

Program (w, h, s) gathers its R = Gp * BQ query rows straight from q (row ``r = g * BQ + t`` is
query head ``h * G + g`` of the item's t-th token; rows with ``g >= G`` or ``t >= num_q`` are
padding, never loaded or stored), walks the s-th of S equal shares of the kv tiles its rows can
see (from the sliding window's start to its last query token: pages past kv_len and future
tokens are never read), and keeps a running max, sum and f32 accumulator per row. With S == 1 it
stores its normalized rows into the output; with S > 1 it writes an f32 partial output and
log-sum-exp, and the merge kernel reads only the splits that had tiles and only the real rows,
and stores the result.

Tiles are ``block_kv`` consecutive kv positions, aligned to multiples of ``block_kv``. Their slots
come from one page-table lookup per page: a scalar load when a page holds whole tiles, a vector
of ``block_kv / P`` page ids when a tile holds whole pages (P a power of two), and one lookup per
token only for other page sizes (33, say). Launch parameters (tile, stages, warps, splits) come
from `rpa_gpu_tuning.choose_tuning`, within the device's shared memory.

Precision: scores and the online softmax are f32; dots are IEEE f32 for f32 inputs (not TF32)
and bf16 x bf16 -> f32 for bf16.

Head dims that are not a power of two (Triton tensors need power-of-two dims) are padded in
registers (`rpa_gpu_kernels.load_heads`); the memory traffic stays that of the real head dim.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pcjax.kernels import rpa_blocks
from pcjax.kernels.ragged_paged_attention import AttentionMetadata
from pcjax.kernels.rpa_gpu_kernels import Static, attention_kernel, head_pad, merge_kernel
from pcjax.kernels.rpa_gpu_tuning import (
    GRID_ITEMSIZES,
    GpuTuning,
    LaunchCase,
    choose_tuning,
    device_facts,
    group_pad,
    launch_grid,
    page_lookup_mode,
)


def _launch(cfg: Static, items, q, k_cache, v_cache, page_table, out, *, interpret):
    """The attention kernel (+ the merge kernel when split) over `items`; returns `out` with the
    items' query rows written (every other row as it was)."""
    tuning = cfg.tuning
    num_items, num_kv_heads, head_pad = items.seq.shape[0], k_cache.shape[1], cfg.head_pad
    whole = pl.BlockSpec()
    params = plgpu.CompilerParams(num_warps=tuning.num_warps, num_stages=tuning.num_stages)
    scalars = (items.num_q, items.first_pos, items.kv_len, items.first_token)
    if tuning.kv_splits == 1:
        out_specs, out_shape, aliases = whole, jax.ShapeDtypeStruct(out.shape, out.dtype), {9: 0}
    else:
        parts = (tuning.kv_splits, num_items, num_kv_heads, tuning.rows)
        out_specs = [
            pl.BlockSpec(
                (None, None, None, tuning.rows, head_pad), lambda w, h, s: (s, w, h, 0, 0)
            ),
            pl.BlockSpec((None, None, None, tuning.rows), lambda w, h, s: (s, w, h, 0)),
        ]
        out_shape = [
            jax.ShapeDtypeStruct((*parts, head_pad), jnp.float32),
            jax.ShapeDtypeStruct(parts, jnp.float32),
        ]
        aliases = {}
    result = pl.pallas_call(
        functools.partial(attention_kernel, cfg=cfg),
        grid=(num_items, num_kv_heads, tuning.kv_splits),
        in_specs=[whole] * 10,
        out_specs=out_specs,
        out_shape=out_shape,
        input_output_aliases=aliases,
        compiler_params=params,
        interpret=interpret,
        name="ragged_paged_attention_gpu",
    )(items.seq, *scalars, page_table, q, k_cache, v_cache, out)
    if tuning.kv_splits == 1:
        return result
    return pl.pallas_call(
        functools.partial(merge_kernel, cfg=cfg),
        grid=(num_items, num_kv_heads),
        in_specs=[whole] * 7,
        out_specs=whole,
        out_shape=jax.ShapeDtypeStruct(out.shape, out.dtype),
        input_output_aliases={6: 0},
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name="ragged_paged_attention_gpu_merge",
    )(*scalars, *result, out)


def decode_items(md: AttentionMetadata, num_tokens: int, select=None) -> rpa_blocks.WorkItems:
    """One work item per sequence for sequences of at most one query token (no search)."""
    q_lens = md.q_lens if select is None else jnp.where(select, md.q_lens, 0)  # i32[B]
    real = q_lens > 0
    return rpa_blocks.WorkItems(
        seq=jnp.arange(q_lens.shape[0], dtype=jnp.int32),
        num_q=q_lens,
        first_pos=jnp.where(real, md.kv_lens - q_lens, 0),
        kv_len=jnp.where(real, md.kv_lens, 0),
        first_token=jnp.where(real, md.cu_q_lens[:-1], num_tokens),
    )


def launch_tuning(
    decode: bool,
    *,
    num_tokens: int,
    num_heads: int,
    head_dim: int,
    num_kv_heads: int,
    page_size: int,
    num_seqs: int,
    pages_per_seq: int,
    max_q_len: int,
    itemsize: int,
    overrides: dict | None = None,
) -> GpuTuning:
    """The tuning of one launch: `choose_tuning` for the device (read now: shared memory, SMs),
    then the caller's explicit `overrides` (None values keep the choice; ``block_q`` applies to
    the prefill launch only: decodes always get one-token items)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    group = num_heads // num_kv_heads
    block_q = 1 if decode else overrides.pop("block_q", None)
    overrides.pop("block_q", None)
    max_q_len = 1 if decode else max_q_len
    kind, num_sms = device_facts()
    chosen = choose_tuning(
        max_q_len=max_q_len,
        group=group,
        head_dim=head_pad(head_dim),  # tiles hold the padded head dim
        itemsize=itemsize,
        num_seqs=num_seqs,
        num_tokens=num_tokens,
        num_kv_heads=num_kv_heads,
        max_kv_len=pages_per_seq * page_size,
        device_kind=kind,
        num_sms=num_sms,
    )
    block_q = block_q or chosen.block_q
    tuning = dataclasses.replace(
        chosen, block_q=block_q, group_pad=group_pad(group, block_q), **overrides
    )
    _check_tuning(tuning)
    return tuning


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
    num_warps: int | None = None,
    num_stages: int | None = None,
    interpret: bool = False,
) -> jax.Array:  # f[T, N, H]
    """Ragged paged attention, GPU (Triton) kernel. See the module docstring.

    The tuning arguments default to `rpa_gpu_tuning.choose_tuning` for the device (read at trace
    time: shared memory, SM count); given ones override it for every launch (``block_q`` only
    for the prefill launch: decodes always get one-token items).

    Args:
      block_q: query tokens per prefill work item, a power of two.
      block_kv: kv tokens per tile, a power of two >= 16.
      kv_splits: programs per (work item, kv head) along kv.
      num_warps, num_stages: Triton launch parameters.
      interpret: run the kernels as XLA loops (CPU); the tuning args then only change speed.
    """
    rpa_blocks.check_inputs(q, k_pages, v_pages, md)
    num_tokens, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_pages.shape
    _check_gpu_args(sliding_window)
    overrides = dict(
        block_q=block_q,
        block_kv=block_kv,
        kv_splits=kv_splits,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    shapes = dict(
        num_tokens=num_tokens,
        num_heads=num_heads,
        head_dim=head_dim,
        num_kv_heads=num_kv_heads,
        page_size=page_size,
        num_seqs=md.page_table.shape[0],
        pages_per_seq=md.page_table.shape[1],
        max_q_len=md.max_q_len,
        itemsize=jnp.dtype(k_pages.dtype).itemsize,
    )
    static = functools.partial(
        Static,
        sm_scale=sm_scale,
        sliding_window=sliding_window,
        soft_cap=soft_cap,
        page_size=page_size,
        pages_per_seq=md.page_table.shape[1],
        num_heads=num_heads,
        group=num_heads // num_kv_heads,
        head_dim=head_dim,
    )
    caches = (
        q.reshape(num_tokens * num_heads, head_dim),
        k_pages.reshape(-1, num_kv_heads, head_dim),
        v_pages.reshape(-1, num_kv_heads, head_dim),
        md.page_table,
    )
    out = jnp.zeros(_buffer_shape(num_tokens * num_heads, head_dim, interpret), q.dtype)
    decode = None
    if md.max_q_len > 1:  # prefill chunks first, then the decodes in a launch of their own
        decode = md.q_lens == 1  # bool[B]
        cfg = static(tuning=launch_tuning(False, **shapes, overrides=overrides))
        items = rpa_blocks.plan_work_items(md, num_tokens, cfg.tuning.block_q, select=~decode)
        out = _launch(cfg, items, *caches, out, interpret=interpret)
    cfg = static(tuning=launch_tuning(True, **shapes, overrides=overrides))
    out = _launch(cfg, decode_items(md, num_tokens, decode), *caches, out, interpret=interpret)
    return out[: num_tokens * num_heads, :head_dim].reshape(num_tokens, num_heads, head_dim)


def _buffer_shape(rows: int, head_dim: int, interpret) -> tuple[int, int]:
    """The output buffer: f[T * N, H] on a GPU (masked lanes are not written, so the final
    reshape is free); interpreted, a spare row and the padded head dim, so that masked lanes,
    which interpret mode writes back with their old value, never share an index with a real
    element (see `rpa_gpu_kernels.store_rows`)."""
    return (rows + 1, head_pad(head_dim)) if interpret else (rows, head_dim)


def _check_gpu_args(sliding_window) -> None:
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")


def _check_tuning(tuning: GpuTuning) -> None:
    for name in ("block_q", "block_kv"):
        value = getattr(tuning, name)
        if value < 1 or value & (value - 1):
            raise ValueError(f"the Triton kernel needs a power-of-two {name}, got {value}")
    if tuning.block_kv < 16:
        raise ValueError(f"block_kv must be >= 16 (Triton dot), got {tuning.block_kv}")
    if tuning.kv_splits < 1 or tuning.num_stages < 1 or tuning.num_warps < 1:
        raise ValueError(f"kv_splits, num_stages and num_warps must be >= 1, got {tuning}")


def launch_configurations() -> dict[tuple, LaunchCase]:
    """The distinct kernel builds over the supported range (`rpa_gpu_tuning.launch_grid`) for
    the device `device_facts` reads now: one representative `LaunchCase` per key
    ``(decode, dtype, H, rows, block_kv, warps, split or not, page lookup mode)``."""
    configs = {}
    for case in launch_grid():
        tuning = launch_tuning(
            case.decode,
            num_tokens=case.num_tokens,
            num_heads=case.group * case.num_kv_heads,
            head_dim=case.head_dim,
            num_kv_heads=case.num_kv_heads,
            page_size=case.page_size,
            num_seqs=case.num_seqs,
            pages_per_seq=case.pages_per_seq,
            max_q_len=case.max_q_len,
            itemsize=GRID_ITEMSIZES[case.dtype],
        )
        mode = page_lookup_mode(case.page_size, tuning.block_kv)
        key = (
            case.decode, case.dtype, case.head_dim, tuning.rows, tuning.block_kv,
            tuning.num_warps, tuning.kv_splits > 1, mode,
        )  # fmt: skip
        configs.setdefault(key, case)
    return configs
