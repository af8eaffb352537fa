"""Launch parameters of the GPU (Triton) attention kernel, chosen within a shared-memory budget.

A pure function of static shapes and the device (no timing at run time), so tests can check every
supported configuration on a machine without a GPU.

Shared memory model. Triton's software pipeliner keeps ``num_stages`` copies of every tile it
prefetches with async copies: here the K and V tiles (``block_kv`` rows of ``head_dim``). The
query block and the probabilities (the second dot's A operand) are staged once, and the online
softmax's layout conversions need about one f32 score tile::

    smem = stages * 2 * block_kv * H * itemsize      K and V tiles in flight
         + R * H * itemsize                          queries (R = Gp * block_q rows)
         + R * block_kv * (itemsize + 4)             probabilities + score layout conversion

Worked example (decode, bf16, H=128, G=4 -> R=16): block_kv=64, 3 stages -> 3*2*64*128*2 = 96 KiB
+ 4 KiB + 6 KiB = 106 KiB: two programs fit in an H200 SM's 227 KiB, and three stages keep the
page-table lookup of tile i+2 and the K/V copies of tile i+1 in flight while tile i is computed.

Splits. A decode step has only B * K (sequence, kv head) programs, 64 at B=8 / K=8, against 132
SMs that each hold ``smem_limit // smem`` of them (264 slots at 106 KiB): the kv axis is split into
S shares. The time of a launch is about ``waves * (tiles per split + c)``, with
``waves = ceil(programs / slots)`` and c (`_PROGRAM_OVERHEAD_TILES`) the fixed cost of a program
(pipeline fill, query load, output write) in tiles; S minimizes it, so the grid fills whole waves
(B=8, K=8 at 8k tokens: S=4, 256 programs in one wave of 32 tiles each; 9 splits would be 3
waves, the last a fifth full), and no split gets fewer than ``_MIN_TILES_PER_SPLIT`` tiles (the
merge kernel reads every split's partial output). Measured on an H200 (experiments/results/
bench_attention_h200.json): see `experiments/tune_attention.py` for the sweep that checks it.
"""

import dataclasses
import math

import jax
from jax.experimental import pallas as pl

from pcjax.kernels.rpa_blocks import num_work_items

MIN_DOT_ROWS = 16  # Triton's tensor-core dots want M >= 16
SMEM_BYTES = {  # device kind substring -> max dynamic shared memory per block (bytes)
    "H100": 227 * 1024,
    "H200": 227 * 1024,
    "H800": 227 * 1024,
    "GH200": 227 * 1024,
    "B200": 227 * 1024,
    "A100": 163 * 1024,
    "A800": 163 * 1024,
    "L4": 99 * 1024,
    "L40": 99 * 1024,
    "RTX 4090": 99 * 1024,
}
DEFAULT_SMEM_BYTES = 99 * 1024  # any other GPU: the smallest of the recent ones
DEFAULT_NUM_SMS = 132  # H100/H200 SXM; only for interpret mode and abstract devices
REFERENCE_DEVICE_KIND = "NVIDIA H200"  # what interpret mode tunes for
_KV_BYTES_PER_STAGE = 32 * 1024  # K + V tile bytes per pipeline stage (decode)
_MAX_BLOCK_KV = 128
_MIN_BLOCK_KV = 16
_STAGES = 3  # >= 3: the page-table load of a tile is issued a stage before its K/V copies
_PROGRAM_OVERHEAD_TILES = 2
_MERGE_TILES_PER_SPLIT = 0.5  # a split's partial output, written and read back, in tiles
_MIN_TILES_PER_SPLIT = 4
_MAX_SPLITS = 64
_SMEM_MARGIN = 0.9  # of the device's limit: Triton's own scratch is not in the model


@dataclasses.dataclass(frozen=True)
class GpuTuning:
    """Static launch parameters of one kernel call (each one recompiles).

    Attributes:
      block_q: query tokens per work item (1: decode).
      group_pad: query heads per kv head, padded (a power of two, ``Gp * block_q >= 16``).
      block_kv: kv tokens per tile (a power of two).
      num_stages: Triton pipeline stages of the tile loop.
      num_warps: warps per program.
      kv_splits: programs per (work item, kv head) along the kv axis; > 1 adds the merge kernel.
    """

    block_q: int
    group_pad: int
    block_kv: int
    num_stages: int
    num_warps: int
    kv_splits: int

    @property
    def rows(self) -> int:  # R: query rows of one program (head-major: r = g * block_q + t)
        return self.group_pad * self.block_q


def smem_bytes(tuning: GpuTuning, head_dim: int, itemsize: int) -> int:
    """Shared memory one program of the attention kernel needs (the model in the docstring)."""
    tiles = tuning.num_stages * 2 * tuning.block_kv * head_dim * itemsize
    queries = tuning.rows * head_dim * itemsize
    scores = tuning.rows * tuning.block_kv * (itemsize + 4)
    return tiles + queries + scores


def smem_limit(device_kind: str) -> int:
    """Max dynamic shared memory per block of a device kind (bytes)."""
    return next((v for k, v in SMEM_BYTES.items() if k in device_kind), DEFAULT_SMEM_BYTES)


def device_facts() -> tuple[str, int]:
    """(device kind, SM count) the kernel is built for, read at trace time.

    The first device on a GPU; the abstract device when lowering under an abstract mesh (a GPU
    kind, its SM count unknown: `DEFAULT_NUM_SMS`); elsewhere (interpret mode on CPU) the kind
    the kernel is tuned for first, an H200, so interpret mode runs the same launches.
    """
    abstract = jax.sharding.get_abstract_mesh().abstract_device
    if abstract is not None and abstract.platform in ("cuda", "rocm", "gpu"):
        return abstract.device_kind, DEFAULT_NUM_SMS
    device = jax.devices()[0]
    if device.platform != "gpu":
        return REFERENCE_DEVICE_KIND, DEFAULT_NUM_SMS
    return device.device_kind, int(getattr(device, "core_count", 0) or DEFAULT_NUM_SMS)


def group_pad(group: int, block_q: int) -> int:
    """Query heads per kv head, padded to a power of two with >= 16 rows in total."""
    return max(pl.next_power_of_2(group), pl.cdiv(MIN_DOT_ROWS, block_q))


def choose_tuning(
    *,
    max_q_len: int,
    group: int,
    head_dim: int,
    itemsize: int,
    num_seqs: int,
    num_tokens: int,
    num_kv_heads: int,
    max_kv_len: int,
    device_kind: str,
    num_sms: int,
) -> GpuTuning:
    """The launch parameters for one call: the largest tiles that fit the budget, 3 stages,
    warps by accumulator size, splits that fill whole waves (see the module docstring).

    Args:
      max_q_len: the static q_len bound of the launched sequences (1: the decode kernel).
      group: query heads per kv head (G). head_dim: H. itemsize: bytes of a K/V element.
      num_seqs, num_tokens: B and T of the step (they bound the launch's work items).
      num_kv_heads: K.
      max_kv_len: the page table's width in tokens (M * P), bounding every sequence's kv_len.
      device_kind, num_sms: from `device_facts`.

    Raises:
      ValueError: no tile of >= 16 kv tokens fits the device's shared memory.
    """
    limit = int(_SMEM_MARGIN * smem_limit(device_kind))
    block_q = 1 if max_q_len == 1 else min(pl.next_power_of_2(max_q_len), _rows_per_group(group))
    block_kv, stages = _fit_block_kv(head_dim, itemsize), _STAGES
    while (need := _tile_smem(block_q, block_kv, stages, group, head_dim, itemsize)) > limit:
        if block_kv > _MIN_BLOCK_KV:
            block_kv //= 2
        elif block_q > 1:
            block_q //= 2
        elif stages > 2:  # small shared memories (L4: 99 KiB) with f32 and head_dim 256
            stages -= 1
        else:
            raise ValueError(
                f"no attention tile fits {limit} bytes of shared memory on {device_kind!r} "
                f"(head_dim={head_dim}, itemsize={itemsize}, group={group})"
            )
    pad = group_pad(group, block_q)
    # An f32 accumulator of rows x head_dim over 4 warps (128 threads) spills past 64 KiB.
    num_warps = 8 if pad * block_q * head_dim >= 128 * 128 else 4
    tiles = max(1, math.ceil(max_kv_len / block_kv))
    num_items = (
        num_seqs if max_q_len == 1 else num_work_items(num_seqs, num_tokens, max_q_len, block_q)
    )
    slots = num_sms * max(1, smem_limit(device_kind) // need)  # programs resident at once
    splits = choose_splits(num_items * num_kv_heads, tiles, slots)
    return GpuTuning(block_q, pad, block_kv, stages, num_warps, splits)


def choose_splits(pairs: int, tiles: int, slots: int) -> int:
    """The S in [1, min(tiles / 4, 64)] with the least ``waves(S) * (ceil(tiles / S) + c)``
    (fewest splits on ties), for `pairs` (item, kv head) programs of `tiles` tiles each."""
    most = max(1, min(tiles // _MIN_TILES_PER_SPLIT, _MAX_SPLITS))

    def cost(splits: int) -> tuple[float, int]:
        waves = math.ceil(pairs * splits / slots)
        merge = _MERGE_TILES_PER_SPLIT * pairs * splits / slots if splits > 1 else 0
        return waves * (math.ceil(tiles / splits) + _PROGRAM_OVERHEAD_TILES) + merge, splits

    return min(range(1, most + 1), key=cost)


def _rows_per_group(group: int) -> int:
    """Query tokens per prefill work item: about 128 rows (power of two, at least 1)."""
    return max(1, 128 // pl.next_power_of_2(group))


def _tile_smem(block_q, block_kv, stages, group, head_dim, itemsize) -> int:
    tuning = GpuTuning(block_q, group_pad(group, block_q), block_kv, stages, 4, 1)
    return smem_bytes(tuning, head_dim, itemsize)


def _fit_block_kv(head_dim: int, itemsize: int) -> int:
    """The largest power-of-two tile whose K + V take at most `_KV_BYTES_PER_STAGE`."""
    fit = _KV_BYTES_PER_STAGE // (2 * head_dim * itemsize)
    return max(_MIN_BLOCK_KV, min(_MAX_BLOCK_KV, 1 << max(0, fit.bit_length() - 1)))


# --- the supported range, for the budget and lowering checks (tests, experiments/device_check) --

GRID_HEAD_DIMS = (64, 128, 256)
GRID_ITEMSIZES = {"float32": 4, "bfloat16": 2}
GRID_PAGE_SIZES = (8, 16, 32, 64, 128, 256, 33)  # 33: a page size that is not a power of two
GRID_GROUPS = (1, 2, 4, 8, 16)
GRID_BATCHES = (1, 8, 64, 256)
GRID_CONTEXTS = (1024, 8192, 32768, 131072)
GRID_CHUNK = 512  # new tokens of a prefill launch's longest chunk


@dataclasses.dataclass(frozen=True)
class LaunchCase:
    """One launch of the supported range: static shapes that `choose_tuning` decides on."""

    decode: bool
    dtype: str
    head_dim: int
    group: int
    num_kv_heads: int
    page_size: int
    num_seqs: int
    context: int

    @property
    def max_q_len(self) -> int:
        return 1 if self.decode else GRID_CHUNK

    @property
    def num_tokens(self) -> int:  # T: the chunk plus one decode per other sequence (bucketed)
        return self.num_seqs if self.decode else pl.next_power_of_2(GRID_CHUNK + self.num_seqs)

    @property
    def pages_per_seq(self) -> int:  # M
        return pl.next_power_of_2(pl.cdiv(self.context, self.page_size))


def launch_grid(num_kv_heads: int = 8):
    """Every launch of the supported range (head_dim, dtype, page size, GQA, batch up to 256,
    context up to 128k, decode and prefill), as `LaunchCase`s."""
    for decode in (True, False):
        for dtype in GRID_ITEMSIZES:
            for head_dim in GRID_HEAD_DIMS:
                for group in GRID_GROUPS:
                    for page_size in GRID_PAGE_SIZES:
                        for batch in GRID_BATCHES:
                            for context in GRID_CONTEXTS:
                                yield LaunchCase(
                                    decode, dtype, head_dim, group, num_kv_heads, page_size,
                                    batch, context,
                                )  # fmt: skip


def page_lookup_mode(page_size: int, block_kv: int) -> str:
    """How the kernel finds a tile's slots: "scalar" (a page holds whole tiles), "vector" (a
    tile holds whole pages) or "per_token" (other page sizes)."""
    if page_size % block_kv == 0:
        return "scalar"
    return "vector" if block_kv % page_size == 0 else "per_token"
