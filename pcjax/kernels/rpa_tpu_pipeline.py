"""The TPU kernel's kv-block stream: which block comes next, its page DMAs, its page-table blocks,
and how one head's K or V rows are read out of a block buffer without strided bf16 loads.

Every grid step of `rpa_tpu` is one work item and walks the kv blocks its tokens can see. Taken
over the whole grid these blocks form one stream ``X0, X1, ...``; block ``b`` of an item holds
pages ``b * C ... b * C + C - 1`` of its sequence (blocks are C-aligned, so a block never spans
two page-table blocks). While block X_i is computed, the DMAs of X_{i+1} are in flight, also when
X_{i+1} is the first block of the *next* item (so an item does not start with an exposed wait),
and the page-table block of X_{i+2} is on its way to SMEM::

    step i:   wait table(X_{i+1}) if it is a new one -> start kv(X_{i+1}) -> start table(X_{i+2})
              if new -> wait kv(X_i) -> compute X_i

Grid steps therefore depend on each other: the grid must run in order on one core (dimension
semantics "arbitrary"; "parallel" on a two-core chip would hand half the items to a core that
never started their DMAs).

Page tables. The table is not scalar-prefetched whole (B * M * 4 bytes: 512 KiB at batch 64,
32k context, 16-token pages); it stays in HBM as rows of ``TB = 128`` page ids (i32[B * NC, TB],
``NC = ceil(M / TB)``; DMAs from HBM need 512-byte aligned offsets, and Mosaic rejects smaller
ones; interpret-mode tests use smaller rows) and two such rows live in SMEM. Worked example
(C = 8, TB = 128): block b = 20 of sequence 3 holds pages 160..167, found in table row
``3 * NC + 1`` at columns 32..39.

Reading one head. A kv buffer slot holds whole pages, f[C, P, K, L] per 128-lane fold of the head
dim (each page DMA lands at a page index, a leading dim, so any page size is aligned). Head h is
every K-th row of the slot viewed as f[C * P * K, L]:

- 32-bit: a sublane-strided load of rows ``h, h + K, ...`` (Mosaic's ``strided_load``).
- bf16 with K even: Mosaic packs row pairs (2m, 2m + 1), i.e. heads 2m and 2m + 1 of one token,
  into one 32-bit word (even row in the low half). The slot is viewed as u32[C * P * K / 2, L] and
  rows ``m, m + K / 2, ...`` are loaded (32-bit strided load); head 2m is the low halves, head
  2m + 1 the high ones, each moved into the top bits of an f32 that converts to bf16 exactly. This
  is the trick of JAX's ragged_paged_attention (there over K/V pairs); a strided bf16 load is
  what Mosaic rejects ("Only static indices are supported for packed types").
- otherwise (bf16 with K odd, K = 1 included; K rows that do not fill whole tiles, e.g. K = 3):
  ``slot[:, :, h, :]`` (Mosaic compiles it to per-row loads and sublane rotations; about 7x the
  instructions of the strided form for bf16, K = 8, measured on Mosaic's LLO dump).

Why this and not the alternatives: JAX's and tpu-inference's kernels interleave K and V heads in
one cache array, which the engine's separate f[NP, P, K, H] pages do not; DMAing per-head rows
(``k_pages[page, :, h]``) squeezes a tiled dim of the HBM array, which Mosaic rejects ("no tiled
dimensions can be squeezed"); the former layout (pages viewed as f[NP, P * K, H], DMAs at row
offsets ``j * P * K``) needs P * K to be a multiple of the tile rows and a reshape of the whole
cache outside the kernel, which merges a tiled dim (not a free view on TPU unless K fills tiles).
"""

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pcjax.kernels.rpa_tpu_budget import tile_rows


class ItemRefs(NamedTuple):
    """The scalar-prefetched per-item arrays (SMEM), all i32[W]."""

    seq: object
    num_q: object
    first_pos: object
    kv_len: object


class BlockRange(NamedTuple):
    """The kv pages and C-aligned blocks one work item reads (no blocks for an empty item)."""

    first_page: object  # i32: first page it can see (the sliding window's, or 0)
    end_page: object  # i32: one past the page of its last query token
    first_block: object  # i32: first_page // C
    end_block: object  # i32: ceil(end_page / C), or first_block when the item is empty


def block_range(cfg, first_pos, num_q) -> BlockRange:
    """The pages and blocks an item with these scalars can see (see `BlockRange`)."""
    if cfg.sliding_window is None:
        first_page = jnp.int32(0)
    else:
        first_page = jnp.maximum(first_pos - cfg.sliding_window + 1, 0) // cfg.page_size
    end_page = jnp.minimum((first_pos + num_q - 1) // cfg.page_size + 1, cfg.pages_per_seq)
    first_block = first_page // cfg.pages_per_block
    end_block = (end_page + cfg.pages_per_block - 1) // cfg.pages_per_block
    return BlockRange(
        first_page, end_page, first_block, jnp.where(num_q > 0, end_block, first_block)
    )


class Stream:
    """The kv-block stream of one kernel call (see the module docstring); methods run in-kernel.

    Args:
      cfg: the kernel's static config (`rpa_tpu._Config`).
      items: the per-item scalars.
      table_hbm: i32[B * NC, TB] (HBM): the page table in rows of TB page ids.
      k_hbm, v_hbm: f[NP, P, K, H] (HBM).
      k_buf, v_buf: f[2, F, C, P, K, L] (VMEM): two slots.
      table_buf: i32[2, TB] (SMEM): two page-table rows.
      state: i32[3] (SMEM): kv slot of the block being computed; table slot and table row of the
        block started last.
      sems: DMA[3, 2]: (K, V, table) x slot.
    """

    KV_SLOT, TABLE_SLOT, TABLE_ROW = range(3)

    def __init__(self, cfg, items, table_hbm, k_hbm, v_hbm, k_buf, v_buf, table_buf, state, sems):
        self.cfg, self.items = cfg, items
        self.table_hbm, self.table_buf, self.state, self.sems = table_hbm, table_buf, state, sems
        self.hbm, self.buf = (k_hbm, v_hbm), (k_buf, v_buf)
        self.num_items = items.seq.shape[0]

    def blocks(self, w) -> BlockRange:
        return block_range(self.cfg, self.items.first_pos[w], self.items.num_q[w])

    def next_block(self, w, b):
        """(w', b', exists): the block after block b of item w (the next item's first block
        after an item's last one; none after the last item with query tokens)."""
        last = b + 1 >= self.blocks(w).end_block
        nw = jnp.minimum(w + 1, self.num_items - 1)
        exists = jnp.logical_not(last) | ((w + 1 < self.num_items) & (self.items.num_q[nw] > 0))
        return jnp.where(last, nw, w), jnp.where(last, self.blocks(nw).first_block, b + 1), exists

    def table_row(self, w, b):
        """Row of table_hbm that holds the page ids of block b of item w."""
        rows_per_seq = pl.cdiv(self.cfg.pages_per_seq, self.cfg.table_block)
        first = b * self.cfg.pages_per_block
        return self.items.seq[w] * rows_per_seq + first // self.cfg.table_block

    def _table_copy(self, row, slot):
        src = self.table_hbm.at[row]
        return pltpu.make_async_copy(src, self.table_buf.at[slot], self.sems.at[2, slot])

    def _kv_copies(self, w, b, kv_slot, table_slot, op: str) -> None:
        """Starts (op="start") or waits for the page DMAs of block b of item w; only pages the
        item can see are copied. Waits do not read the table (page 0 stands in as the source)."""
        cfg, pages = self.cfg, self.blocks(w)
        lanes = self.buf[0].shape[-1]
        for j in range(cfg.pages_per_block):
            index = b * cfg.pages_per_block + j
            needed = (index >= pages.first_page) & (index < pages.end_page)
            page = 0 if op == "wait" else self.table_buf[table_slot, index % cfg.table_block]

            @pl.when(needed)
            def _(page=page, j=j):
                for kv in range(2):
                    for f in range(self.buf[kv].shape[1]):
                        src = self.hbm[kv].at[page, :, :, pl.ds(f * lanes, lanes)]
                        dst = self.buf[kv].at[kv_slot, f, j]
                        getattr(pltpu.make_async_copy(src, dst, self.sems.at[kv, kv_slot]), op)()

    def start(self, w, b, kv_slot, row, table_slot) -> None:
        """Starts block (w, b)'s page DMAs into `kv_slot` (its table row already in SMEM at
        `table_slot`) and the table row of the block after it when that is a new row."""
        self._kv_copies(w, b, kv_slot, table_slot, "start")
        self.state[self.TABLE_SLOT], self.state[self.TABLE_ROW] = table_slot, row
        nw, nb, exists = self.next_block(w, b)
        next_row = self.table_row(nw, nb)

        @pl.when(exists & (next_row != row))
        def _():
            self._table_copy(next_row, 1 - table_slot).start()

    def prologue(self) -> None:
        """At the first grid step: fetches the first block's table row and starts its DMAs."""
        b = self.blocks(0).first_block
        row = self.table_row(0, b)
        self.state[self.KV_SLOT] = 0

        @pl.when(self.items.num_q[0] > 0)
        def _():
            copy = self._table_copy(row, 0)
            copy.start()
            copy.wait()
            self.start(0, b, 0, row, 0)

    def start_next(self, w, b) -> None:
        """While block (w, b) is computed: starts the next block's DMAs into the other slot."""
        nw, nb, exists = self.next_block(w, b)
        kv_slot = 1 - self.state[self.KV_SLOT]

        @pl.when(exists)
        def _():
            row = self.table_row(nw, nb)
            new_row = row != self.state[self.TABLE_ROW]
            slot = self.state[self.TABLE_SLOT]
            table_slot = jnp.where(new_row, 1 - slot, slot)

            @pl.when(new_row)
            def _():
                self._table_copy(0, table_slot).wait()

            self.start(nw, nb, kv_slot, row, table_slot)

    def wait(self, w, b):
        """Waits for block (w, b)'s DMAs; returns its kv slot and flips the slot for the next."""
        kv_slot = self.state[self.KV_SLOT]
        self._kv_copies(w, b, kv_slot, None, "wait")
        self.state[self.KV_SLOT] = 1 - kv_slot
        return kv_slot


def strided_loads(num_kv_heads: int, itemsize: int) -> bool:
    """Whether heads are read with strided loads: the K rows of a page fill whole VMEM tiles (a
    padded tile cannot be viewed as flat rows), and for bf16 they pair up into 32-bit words."""
    dense = lambda rows, size: rows % tile_rows(rows, size) == 0  # noqa: E731
    if itemsize == 4:
        return dense(num_kv_heads, 4)
    return (
        itemsize == 2
        and num_kv_heads % 2 == 0
        and dense(num_kv_heads, 2)
        and dense(num_kv_heads // 2, 4)
    )


def load_head(buf, slot, h: int, *, indexed: bool = False):  # f[C * P, H]
    """Head h's rows of kv buffer `slot` (f[2, F, C, P, K, L]); see the module docstring.

    Args:
      indexed: read every head as ``buf[slot, f, :, :, h, :]`` (the race-detecting interpreter
        supports no reshaped or bitcast refs; it reads the same elements).
    """
    _, folds, pages, page_size, num_kv_heads, lanes = buf.shape
    rows = pages * page_size
    parts = []
    for f in range(folds):
        if indexed or not strided_loads(num_kv_heads, buf.dtype.itemsize):
            part = buf[slot, f, :, :, h, :].reshape(rows, lanes)
        elif buf.dtype.itemsize == 4:
            flat = buf.at[slot, f].reshape(rows * num_kv_heads, lanes)
            part = flat[pl.ds(h, rows, stride=num_kv_heads), :]
        else:
            words = buf.bitcast(jnp.uint32).at[slot, f].reshape(rows * num_kv_heads // 2, lanes)
            pair = words[pl.ds(h // 2, rows, stride=num_kv_heads // 2), :]
            bits = pair << 16 if h % 2 == 0 else pair & jnp.uint32(0xFFFF0000)
            part = pltpu.bitcast(bits, jnp.float32).astype(buf.dtype)
        parts.append(part)
    return parts[0] if folds == 1 else lax.concatenate(parts, 1)
