"""The TPU kernel's code paths in interpret mode against the jnp reference, and their races.

The paths: page tables brought to SMEM in rows (several rows per sequence, a table width that is
no multiple of the row), the kv-block stream that prefetches across work items (one-block decode
items back to back, prefill chunks of one sequence, sliding windows that start past page 0, a
padded sequence between real ones), and the head reads: 32-bit strided, bf16 through u32 row
pairs, indexed (bf16 with K odd, f32 with K = 3), and head dims in 128-lane folds. (bf16 pairs
with folds, K = 8 and more shapes are compiled by Mosaic in `test_rpa_tpu_compile.py`.)
"""

import jax
import numpy as np
import pytest
from jax import numpy as jnp
from jax.experimental.pallas import tpu as pltpu

from pcjax.kernels.rpa_tpu import ragged_paged_attention_tpu
from pcjax.kernels.rpa_tpu_pipeline import strided_loads
from pcjax.kernels.testing import assert_matches_reference, make_batch, written_and_reference

# (q_len, kv_len): decodes back to back (one-block items), a padded sequence in the middle, a
# prefill chunk over a cached prefix (several items), a long decode crossing table rows.
MIX = ((1, 9), (1, 1), (0, 0), (7, 30), (1, 44), (5, 5))

CASES = {  # name: (dtype, page_size, N, K, H, window, tuning); ~10-20 s each to compile
    "f32-k2-h256-folds-rows-of-4": (jnp.float32, 3, 4, 2, 256, None, dict(table_block=4)),
    "f32-k3-indexed-window": (jnp.float32, 4, 6, 3, 32, 6, dict(table_block=4)),
    "bf16-k2-u32-pairs-table-128": (jnp.bfloat16, 1, 4, 2, 128, None, dict(table_block=128)),
    "bf16-k1-indexed-window": (jnp.bfloat16, 2, 4, 1, 64, 9, dict(table_block=4)),
}


def _batch(name, seed=0):
    dtype, page_size, num_heads, num_kv_heads, head_dim, window, _ = CASES[name]
    q_lens, kv_lens = zip(*MIX, strict=True)
    if page_size == 1:  # 150 pages per sequence: two rows of the default 128-id table
        kv_lens = tuple(min(150, 3 * k + 10) if k else 0 for k in kv_lens)
    batch = make_batch(
        seed, q_lens, kv_lens, num_heads=num_heads, num_kv_heads=num_kv_heads,
        head_dim=head_dim, page_size=page_size, dtype=dtype, num_tokens=sum(q_lens) + 3,
        pages_per_seq=-(-max(kv_lens) // page_size) + 2,
    )  # fmt: skip
    args = dict(sm_scale=head_dim**-0.5, sliding_window=window)
    k_pages, v_pages, want = written_and_reference(batch, **args)
    return (batch.q, k_pages, v_pages, batch.md), args, want


def _check(out, q, md, want):
    real = int(md.cu_q_lens[-1])
    assert np.isfinite(np.asarray(out[:real], np.float32)).all(), "a NaN page leaked in"
    np.testing.assert_array_equal(np.asarray(out[real:], np.float32), 0)
    assert_matches_reference(out, want)


def test_cases_cover_every_head_read():
    kinds = {
        (CASES[n][0], strided_loads(CASES[n][3], jnp.dtype(CASES[n][0]).itemsize)) for n in CASES
    }
    assert kinds == {(t, s) for t in (jnp.float32, jnp.bfloat16) for s in (True, False)}
    (_, _, _, md), _, _ = _batch("bf16-k2-u32-pairs-table-128")
    assert md.page_table.shape[1] > 128  # two rows of the default 128-id table


@pytest.mark.parametrize("case", CASES)
def test_tpu_code_path_matches_reference(case):
    (q, k_pages, v_pages, md), args, want = _batch(case)
    tuning = CASES[case][-1]
    out = ragged_paged_attention_tpu(
        q, k_pages, v_pages, md, **args, **tuning, block_q=4, pages_per_block=2,
        interpret=True, tpu_code_path=True,
    )  # fmt: skip
    _check(out, q, md, want)


def _assert_no_race(run):
    """Runs `run` under the race-detecting interpreter (jax >= 0.12 raises on a race)."""
    try:
        return jax.block_until_ready(run())
    except Exception as e:
        pltpu.reset_tpu_interpret_mode_state()
        if "RACE DETECTED" in str(e):
            pytest.fail(f"race detected: {e}")
        raise


@pytest.mark.parametrize(("dtype", "window"), [(jnp.float32, None), (jnp.bfloat16, 4)])
def test_blocked_table_and_cross_item_prefetch_have_no_races(dtype, window, capfd):
    # Tiny shapes (the race detector is ~1000x slower): 2-id table rows, 1-page blocks, so the
    # stream changes table row every other block and prefetches across every item boundary.
    batch = make_batch(
        3, [1, 0, 3, 1, 2], [5, 0, 6, 8, 2], num_heads=4, num_kv_heads=2, head_dim=8,
        page_size=2, dtype=dtype, num_tokens=9, pages_per_seq=5,
    )  # fmt: skip
    args = dict(sm_scale=0.3, sliding_window=window)
    k_pages, v_pages, want = written_and_reference(batch, **args)
    out = _assert_no_race(
        lambda: ragged_paged_attention_tpu(
            batch.q,
            k_pages,
            v_pages,
            batch.md,
            block_q=2,
            pages_per_block=1,
            table_block=2,
            interpret=pltpu.InterpretParams(detect_races=True),
            **args,
        )  # fmt: skip
    )
    printed = capfd.readouterr()
    assert "RACE DETECTED" not in printed.out + printed.err
    _check(out, batch.q, batch.md, want)
