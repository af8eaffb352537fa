"""Launch parameters of the GPU (Triton) attention kernel, chosen within a shared-memory budget.

A pure function of static shapes and the device (no timing at run time), so tests can check every
supported configuration on a machine without a GPU.

Shared memory model, an upper bound. If Triton's software pipeliner keeps ``num_stages`` copies
of the K and V tiles (``block_kv`` rows of ``head_dim``), the query block and the probabilities
(the second dot's A operand) are staged once, and the online softmax's layout conversions need
about one f32 score tile, a program needs::

    smem = stages * 2 * block_kv * H * itemsize      K and V tiles in flight
         + R * H * itemsize                          queries (R = Gp * block_q rows)
         + R * block_kv * (itemsize + 4)             probabilities + score layout conversion

On an H200 Triton needed less: a decode launch this formula puts at 272 KiB (bf16, H=128,
block_kv=128, 4 stages) compiled and ran (experiments/results/h200/tune_attention.json), and all
72 configurations the grid below yields compiled (compile_kernels.json there). So the formula is
used as it stands against the device's limit, with no further margin. Worked example (decode,
bf16, H=128, G=4 -> R=16): block_kv=128, 3 stages -> 3*2*128*128*2 = 192 KiB + 4 KiB + 12 KiB =
208 KiB <= 227 KiB.

Tiles. Decode reads each K/V byte once, so a tile is as large as fits: ``_KV_BYTES_PER_STAGE`` of
K + V per stage, 128 tokens at bf16 / H=128. On the H200, 128-token tiles beat 64-token ones at
every split count (B=8: 79 against 93 us per layer at 8k tokens, 284 against 323 us at 32k).

Splits. A decode step has only B * K (sequence, kv head) programs, 64 at B=8 / K=8, against 132
SMs: the kv axis is split into S shares, S minimizing a time model fitted to the H200 sweep::

    per_program = ceil(tiles / S) + c                   c = 4 tiles: start-up and write-out
    time = P * per_program / min(P, 2 * SMs)            P = pairs * S programs; 2 per SM
                                                        saturate HBM bandwidth
         + per_program * idle / slots                   when P > slots = 3 * SMs (resident at
                                                        once): the last wave's idle slots

The sweep's order is the model's: at B=8, 8k and 32k tokens, S = 4 < 8 < 16 < 2 (79 / 87 / 96 /
101 us at 8k); at B=64, S=2 beats S=1 (0.57 against 0.68 ms at 8k, 2.14 against 2.60 at 32k).
No split gets fewer than ``_MIN_TILES_PER_SPLIT`` tiles (the merge kernel reads every split's
partial output). Fitted on one device kind; `experiments/tune_attention.py` re-checks it on any.
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
_KV_BYTES_PER_STAGE = 64 * 1024  # K + V tile bytes per pipeline stage (decode)
_MAX_BLOCK_KV = 128
_MIN_BLOCK_KV = 16
_STAGES = 3  # >= 3: the page-table load of a tile is issued a stage before its K/V copies
_PROGRAM_OVERHEAD_TILES = 4  # the splits' time model, fitted on an H200 (module docstring)
_SATURATING_PER_SM = 2
_RESIDENT_PER_SM = 3
_MIN_TILES_PER_SPLIT = 4
_MAX_SPLITS = 64


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
    limit = smem_limit(device_kind)
    block_q = 1 if max_q_len == 1 else min(pl.next_power_of_2(max_q_len), _rows_per_group(group))
    block_kv, stages = _fit_block_kv(head_dim, itemsize), _STAGES
    while _tile_smem(block_q, block_kv, stages, group, head_dim, itemsize) > limit:
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
    splits = choose_splits(num_items * num_kv_heads, tiles, num_sms)
    return GpuTuning(block_q, pad, block_kv, stages, num_warps, splits)


def choose_splits(pairs: int, tiles: int, num_sms: int) -> int:
    """The fewest splits S in [1, min(tiles / 4, 64)] whose modeled time (module docstring) is
    within 3% of the least, for `pairs` (item, kv head) programs of `tiles` tiles each."""
    most = max(1, min(tiles // _MIN_TILES_PER_SPLIT, _MAX_SPLITS))
    saturating, slots = _SATURATING_PER_SM * num_sms, _RESIDENT_PER_SM * num_sms

    def cost(splits: int) -> float:
        programs = pairs * splits
        per_program = math.ceil(tiles / splits) + _PROGRAM_OVERHEAD_TILES
        time = programs * per_program / min(programs, saturating)
        if programs > slots:
            idle = math.ceil(programs / slots) * slots - programs
            time += per_program * idle / slots
        return time

    costs = [cost(splits) for splits in range(1, most + 1)]
    return next(s for s, c in enumerate(costs, 1) if c <= 1.03 * min(costs))


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
