"""The TPU kernel's static VMEM/SMEM budget over the supported grid, and hand-computed sizes.

The grid (`GRID`): head_dim 64/128/256, f32/bf16, page sizes 16/32/33/64/128, four GQA shapes,
batch 1-256, context 2k-128k, decode steps and 512-token prefill chunks. The default tuning must
fit TPU v5e's scoped-VMEM default and its SMEM everywhere.
"""

import itertools

import jax.numpy as jnp
import pytest

from pcjax.kernels import rpa_tpu_budget as budget
from pcjax.kernels.rpa_tpu_budget import KernelShape

HEAD_DIMS = (64, 128, 256)
DTYPES = (jnp.float32, jnp.bfloat16)
PAGE_SIZES = (16, 32, 33, 64, 128)
HEADS = ((32, 8), (8, 1), (16, 2), (64, 8))  # (N, K)
BATCHES = (1, 8, 64, 256)
CONTEXTS = (2048, 32768, 131072)
STEPS = {"decode": (1, None), "prefill": (512, 8192)}  # max_q_len, tokens (None: one per seq)


def _shapes(dtype, head_dim, page_size, heads, batch, context, step):
    max_q_len, num_tokens = STEPS[step]
    return budget.kernel_shapes(
        dtype=dtype,
        num_tokens=num_tokens or batch,
        num_heads=heads[0],
        num_kv_heads=heads[1],
        head_dim=head_dim,
        page_size=page_size,
        num_seqs=batch,
        pages_per_seq=-(-context // page_size),
        max_q_len=max_q_len,
    )


GRID = list(itertools.product(DTYPES, HEAD_DIMS, PAGE_SIZES, HEADS, BATCHES, CONTEXTS, STEPS))


def test_default_tuning_fits_v5e_everywhere():
    scoped, vmem, smem = budget.chip_limits("v5e")
    assert (scoped, vmem, smem) == (16 << 20, 128 << 20, 1 << 20)
    worst_vmem = worst_smem = 0
    for point in GRID:
        for shape in _shapes(*point):
            need = budget.vmem_bytes(shape).total
            assert need <= scoped, (point, shape, budget.vmem_bytes(shape))
            assert budget.smem_bytes(shape) <= smem, (point, shape)
            assert budget.vmem_limit_for(shape) is None  # the compiler default suffices
            worst_vmem, worst_smem = (
                max(worst_vmem, need),
                max(worst_smem, budget.smem_bytes(shape)),
            )
    # The grid reaches the limits' neighbourhood (the budget is not trivially small).
    assert worst_vmem > scoped // 2 and worst_smem < 64 << 10


@pytest.mark.parametrize("step", STEPS)
def test_smem_does_not_grow_with_context(step):
    """The page table is no longer held whole in SMEM: 128k context costs what 2k does."""
    at = lambda context: [budget.smem_bytes(s) for s in _shapes(  # noqa: E731
        jnp.bfloat16, 128, 16, (32, 8), 256, context, step)]  # fmt: skip
    assert at(131072) == at(2048)
    old = 256 * (131072 // 16) * 4  # the whole scalar-prefetched table: 8 MiB
    assert max(at(131072)) * 100 < old


def test_hand_computed_sizes():
    # The module docstring's example: bf16, P = 16, K = 8, H = 128, C = 8 -> 1 MiB of kv buffers.
    shape = KernelShape("bfloat16", 16, 8, 128, rows=4, pages_per_block=8, num_items=8)
    assert budget.vmem_bytes(shape).kv_buffers == 2 * (2 * 8 * 16 * 8 * 128 * 2)
    assert budget.tile_rows(3, 4) == 4 and budget.tile_rows(1, 2) == 2
    assert budget.tile_rows(8, 2) == 8 and budget.tile_rows(40, 4) == 8
    assert budget.padded_bytes((3, 64), 4) == 4 * 128 * 4  # rows to a 4-row tile, lanes to 128
    assert budget.padded_bytes((2, 5, 1, 64), 4) == 2 * 5 * 1 * 128 * 4
    assert budget.padded_bytes((200,), 4) == 256 * 4
    # f32[K=4, R=3, 1] running max: R pads to 4 rows, the single lane to 128.
    state = KernelShape("float32", 16, 4, 64, rows=3, pages_per_block=1, num_items=1)
    assert budget.vmem_bytes(state).softmax_state == 2 * 4 * 4 * 128 * 4 + 4 * 4 * 128 * 4
    assert budget.smem_bytes(state) == 4 * 512 + 2 * 512 + 512


def test_default_block_q_shrinks_to_fit():
    wide = dict(num_tokens=8192, num_heads=64, num_kv_heads=8, head_dim=256, page_size=16)
    wide |= dict(num_seqs=16, pages_per_seq=512, max_q_len=512)
    prefill, decode = budget.kernel_shapes(dtype=jnp.float32, **wide)
    assert prefill.rows == 8 * 16 and decode.rows == 8  # block_q 64 would need ~22 MiB
    tuned = budget.kernel_shapes(dtype=jnp.float32, block_q=64, **wide)[0]
    assert budget.vmem_bytes(tuned).total > 16 << 20
    assert budget.vmem_limit_for(tuned) % (1 << 20) == 0  # asks the compiler for more


def test_oversized_configurations_are_refused():
    huge_vmem = KernelShape("float32", 128, 16, 256, rows=4096, pages_per_block=1, num_items=8)
    with pytest.raises(ValueError, match="VMEM"):
        budget.vmem_limit_for(huge_vmem)
    huge_smem = KernelShape("float32", 16, 1, 128, rows=1, pages_per_block=8, num_items=1 << 16)
    with pytest.raises(ValueError, match="SMEM"):
        budget.vmem_limit_for(huge_smem)
    with pytest.raises(ValueError, match="unknown TPU chip"):
        budget.chip_limits("v9x")
    with pytest.raises(ValueError, match="rows"):
        KernelShape("float32", 16, 1, 128, rows=0, pages_per_block=1, num_items=1)
