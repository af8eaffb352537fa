"""Static VMEM and SMEM budget of the TPU attention kernel (`rpa_tpu`), and the chip limits.

A Pallas TPU kernel that asks for more scoped VMEM than its compiler limit, or more SMEM than the
chip has, fails when Mosaic compiles it on the device. The functions here size every buffer of one
kernel configuration from shapes alone (no device, no tracing), so a test can check the whole
supported grid on a CPU and the wrapper can pick tuning that fits.

Sizes follow Mosaic's memory layout on TPU v4 and later: an array's last two dims are stored in
tiles of ``(rows, 128)`` words; ``rows`` is the smallest power of two that covers the second-minor
dim, starting at the dtype's packing (1 for 32-bit, 2 for bf16) and capped at 8 rows of 32-bit
words (the same rule as Mosaic's memref layout inference, `jax.experimental.pallas.tpu.
infer_tiling`, but with the cap at ``8 * packing`` so that the estimate never undercounts). Lanes
pad to 128. Leading dims are not padded. One-dimensional SMEM arrays pad to 128 words.

Worked example (bf16, P = 16, K = 8, H = 128, C = 8 pages per block): one kv buffer is
f[2, 1, 8, 16, 8, 128]: tiles of (8, 128) bf16 with no padding, 2 * 8 * 16 * 8 * 128 * 2 B =
512 KiB; K and V together 1 MiB.

Chip figures come from `pltpu.get_tpu_info_for_chip` (VMEM 128 MiB and SMEM 1 MiB on v5e). The
scoped-VMEM default (the limit a kernel gets unless it passes ``vmem_limit_bytes``) is 16 MiB on
v4/v5e/v5p and 32 MiB on v6e (Pallas TPU documentation; checked for v5e by compiling for it).
"""

import dataclasses
import functools
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas import tpu as pltpu

from pcjax.kernels import rpa_blocks

LANES = 128
TABLE_BLOCK = 128  # page ids per SMEM page-table block: DMAs from HBM need 512-byte alignment
SCOPED_VMEM_DEFAULT = {"v4": 16 << 20, "v5e": 16 << 20, "v5p": 16 << 20, "v6e": 32 << 20}
# Calibrated against Mosaic (libtpu 0.0.50, v5e): f32, K = 8, H = 256, R = 64 needed 7.86 MiB
# where the buffers and one copy of each value came to 7.4 MiB; a second copy and this margin
# cover it (see test_rpa_tpu_compile).
MOSAIC_SCRATCH = 512 << 10
# The most scoped VMEM the wrapper asks for: leaves room for XLA's own buffers on a 128 MiB chip.
VMEM_LIMIT_CAP = 100 << 20


@dataclasses.dataclass(frozen=True)
class KernelShape:
    """The static shapes of one `rpa_tpu` pallas_call (each one changes the compiled kernel).

    Attributes:
      dtype: the dtype of q and of the KV pages (name, e.g. "bfloat16").
      page_size: P, tokens per page.
      num_kv_heads: K.
      head_dim: H.
      rows: Gp * BQ, query rows per kv head of a work item.
      pages_per_block: C, pages per DMA'd kv block.
      num_items: W, grid steps (work items); sizes the scalar-prefetched per-item arrays.
    """

    dtype: str
    page_size: int
    num_kv_heads: int
    head_dim: int
    rows: int
    pages_per_block: int
    num_items: int

    def __post_init__(self):
        for name in ("page_size", "num_kv_heads", "head_dim", "rows", "pages_per_block"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def itemsize(self) -> int:
        return jnp.dtype(self.dtype).itemsize

    @property
    def lane_block(self) -> int:
        """L: lanes per kv buffer fold (H, or 128 when H is a multiple of 128 above it)."""
        return min(self.head_dim, LANES)

    @property
    def folds(self) -> int:
        """F: 128-lane folds of the head dim (each fold has its own page DMA)."""
        return max(1, self.head_dim // LANES)


class VmemBudget(NamedTuple):
    """Bytes of scoped VMEM, by role."""

    kv_buffers: int  # K and V: two slots of C pages each
    q_out_blocks: int  # the pipelined q and output blocks, double-buffered by Pallas
    softmax_state: int  # running max, sum (f32[K, R, 1]) and accumulator (f32[K, R, H])
    temporaries: int  # twice one head's values (scores, p, K, V, p @ V) + Mosaic's own scratch

    @property
    def total(self) -> int:
        return sum(self)


def tile_rows(second_minor: int, itemsize: int) -> int:
    """Rows of one VMEM tile for an array whose second-minor dim is `second_minor`."""
    packing = max(1, 4 // itemsize)
    rows = packing
    while rows < min(second_minor, 8 * packing):
        rows *= 2
    return rows


def padded_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    """VMEM bytes of an array of `shape` after tiling its last two dims (see the module doc)."""
    *lead, second_minor, minor = (1, *shape) if len(shape) == 1 else shape
    tile = tile_rows(second_minor, itemsize)
    rows = -(-second_minor // tile) * tile
    lanes = -(-minor // LANES) * LANES
    return int(np.prod(lead, dtype=np.int64)) * rows * lanes * itemsize


def vmem_bytes(shape: KernelShape) -> VmemBudget:
    """Scoped VMEM the kernel configuration needs (an upper estimate; see the module doc)."""
    s = shape
    block_kv = s.pages_per_block * s.page_size
    buf = (2, s.folds, s.pages_per_block, s.page_size, s.num_kv_heads, s.lane_block)
    q_block = (s.num_kv_heads, s.rows, s.head_dim)
    f32 = 4
    # One head's scores and probabilities, K and V (read in folds, then joined), p @ V.
    values = (
        2 * padded_bytes((s.rows, block_kv), f32)
        + 2 * padded_bytes((block_kv, s.head_dim), f32)
        + padded_bytes((s.rows, s.head_dim), f32)
    )
    return VmemBudget(
        kv_buffers=2 * padded_bytes(buf, s.itemsize),
        q_out_blocks=2 * 2 * padded_bytes(q_block, s.itemsize),
        softmax_state=2 * padded_bytes((s.num_kv_heads, s.rows, 1), f32)
        + padded_bytes(q_block, f32),
        temporaries=2 * values + MOSAIC_SCRATCH,
    )


def smem_bytes(shape: KernelShape) -> int:
    """SMEM bytes: four scalar-prefetched i32[W] item arrays, two page-table blocks, the
    pipeline's state words."""
    words = lambda n: -(-n // LANES) * LANES * 4  # noqa: E731
    return 4 * words(shape.num_items) + 2 * words(TABLE_BLOCK) + words(4)


@functools.cache
def chip_limits(chip: str = "v5e") -> tuple[int, int, int]:
    """(scoped VMEM default, VMEM capacity, SMEM capacity) in bytes for a TPU generation."""
    if chip not in SCOPED_VMEM_DEFAULT:
        raise ValueError(f"unknown TPU chip {chip!r}; want one of {sorted(SCOPED_VMEM_DEFAULT)}")
    info = pltpu.get_tpu_info_for_chip(pltpu.ChipVersion(chip), 1)
    return SCOPED_VMEM_DEFAULT[chip], info.vmem_capacity_bytes, info.smem_capacity_bytes


def vmem_limit_for(shape: KernelShape, chip: str = "v5e") -> int | None:
    """The ``vmem_limit_bytes`` to compile with: None (the default) when the estimate fits the
    chip's scoped default, else the estimate rounded up to 1 MiB.

    Raises:
      ValueError: the configuration needs more than `VMEM_LIMIT_CAP` or the chip's SMEM.
    """
    scoped, _, smem = chip_limits(chip)
    need = vmem_bytes(shape).total
    if need > VMEM_LIMIT_CAP:
        raise ValueError(
            f"TPU kernel configuration {shape} needs ~{need >> 20} MiB of VMEM, over the "
            f"{VMEM_LIMIT_CAP >> 20} MiB cap: lower block_q or pages_per_block"
        )
    if smem_bytes(shape) > smem:
        raise ValueError(
            f"TPU kernel configuration {shape} needs {smem_bytes(shape)} bytes of SMEM, over "
            f"{chip}'s {smem}: too many work items ({shape.num_items}); raise block_q"
        )
    return None if need <= scoped else -(-need // (1 << 20)) << 20


# --- default tuning ---------------------------------------------------------------------------


def default_block_q(max_q_len: int) -> int:
    """Query tokens per work item: 1 for decode, up to 64 for prefill (measured on CPU)."""
    return min(1 << (max_q_len - 1).bit_length(), 64)


def default_pages_per_block(page_size: int, pages_per_seq: int) -> int:
    """About 128 kv tokens per block: a power of two (it divides the table rows), <= M."""
    pages = max(1, min(pages_per_seq, 128 // page_size))
    return 1 << (pages.bit_length() - 1)


def kernel_shapes(
    *,
    dtype,
    num_tokens: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    page_size: int,
    num_seqs: int,
    pages_per_seq: int,
    max_q_len: int,
    block_q: int | None = None,
    pages_per_block: int | None = None,
    chip: str = "v5e",
) -> tuple[KernelShape, ...]:
    """The static shape of each pallas_call the TPU code path makes for one step: the call over
    the batch's items, then (``max_q_len > 1``) the decodes' own one-token-item call.

    Tuning left None gets the defaults: `default_pages_per_block`, and `default_block_q` halved
    until the kernel fits `chip`'s scoped-VMEM default (`rpa_tpu_budget`).
    """
    group = num_heads // num_kv_heads
    pages = pages_per_block or default_pages_per_block(page_size, pages_per_seq)

    def shape(bq: int, max_q: int) -> KernelShape:
        return KernelShape(
            dtype=jnp.dtype(dtype).name,
            page_size=page_size,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            rows=group * bq,
            pages_per_block=pages,
            num_items=rpa_blocks.num_work_items(num_seqs, num_tokens, max_q, bq),
        )

    if block_q is None:
        block_q = default_block_q(max_q_len)
        scoped = chip_limits(chip)[0]
        while block_q > 1 and vmem_bytes(shape(block_q, max_q_len)).total > scoped:
            block_q //= 2
    if max_q_len == 1 or block_q == 1:
        return (shape(block_q, max_q_len),)
    return shape(block_q, max_q_len), shape(1, 1)
