"""The page-blocked jnp decode path against the reference, on NaN-poisoned decode batches."""

import jax.numpy as jnp
import numpy as np
import pytest

from pcjax.kernels import decode_paged_attention, ragged_paged_attention
from pcjax.kernels.testing import assert_matches_reference, make_batch, written_and_reference

# kv lengths of one decode step: at position 0, mid-page, exactly a page, long; one padded sequence
KV_LENS = (1, 37, 33, 70, 0)

CASES = {  # name: (dtype, page_size, N, K, H, sliding_window, soft_cap)
    "f32-p16-gqa1-h64": (jnp.float32, 16, 4, 4, 64, None, None),
    "f32-p33-gqa4-h128-window": (jnp.float32, 33, 8, 2, 128, 7, None),
    "bf16-p16-gqa8-h64-softcap": (jnp.bfloat16, 16, 8, 1, 64, None, 5.0),
}


@pytest.mark.parametrize("case", CASES)
def test_decode_path_matches_reference(case):
    dtype, page_size, num_heads, num_kv_heads, head_dim, window, soft_cap = CASES[case]
    q_lens = tuple(int(n > 0) for n in KV_LENS)
    batch = make_batch(
        7,
        q_lens,
        KV_LENS,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        page_size=page_size,
        dtype=dtype,
        num_tokens=sum(q_lens) + 3,
        pages_per_seq=6,
    )
    args = dict(sm_scale=head_dim**-0.5, sliding_window=window, soft_cap=soft_cap)
    k_pages, v_pages, want = written_and_reference(batch, **args)
    for out in (
        decode_paged_attention(batch.q, k_pages, v_pages, batch.md, **args),
        ragged_paged_attention(batch.q, k_pages, v_pages, batch.md, impl="cpu_xla", **args),
    ):
        assert not np.isnan(np.asarray(out, np.float32)).any()
        assert_matches_reference(out, want)


def test_decode_path_rejects_prefill_steps():
    batch = make_batch(0, [2], [5], num_heads=2, num_kv_heads=1, head_dim=8, page_size=4)
    with pytest.raises(ValueError, match="max_q_len == 1"):
        decode_paged_attention(batch.q, batch.k_pages, batch.v_pages, batch.md, sm_scale=1.0)
