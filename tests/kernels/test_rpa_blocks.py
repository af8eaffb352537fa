"""Query blocking shared by the Pallas kernels: work items, packing and unpacking."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcjax.kernels import rpa_blocks
from pcjax.kernels.ragged_paged_attention import AttentionMetadata


def _metadata(q_lens, kv_lens, num_tokens, max_q_len, pages_per_seq=4):
    q_lens = np.asarray(q_lens, np.int32)
    return AttentionMetadata(
        slot_mapping=jnp.zeros(num_tokens, jnp.int32),
        page_table=jnp.zeros((len(q_lens), pages_per_seq), jnp.int32),
        kv_lens=jnp.asarray(kv_lens, jnp.int32),
        cu_q_lens=jnp.asarray(np.concatenate([[0], np.cumsum(q_lens)]), jnp.int32),
        max_q_len=max_q_len,
    )


def test_work_items_worked_example():
    # The module docstring's example: BQ = 4, q_lens = [6, 1, 0], 2 tokens of padding.
    md = _metadata([6, 1, 0], [10, 5, 0], num_tokens=9, max_q_len=6)
    items = rpa_blocks.plan_work_items(md, 9, block_q=4)
    # W = min(3 * ceil(6 / 4), ceil(9 / 4) + 3) = 6
    np.testing.assert_array_equal(items.seq, [0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(items.num_q, [4, 2, 1, 0, 0, 0])
    np.testing.assert_array_equal(items.first_pos, [4, 8, 4, 0, 0, 0])
    np.testing.assert_array_equal(items.kv_len, [10, 10, 5, 0, 0, 0])
    np.testing.assert_array_equal(items.first_token, [0, 4, 6, 9, 9, 9])


@functools.partial(jax.jit, static_argnames=("block_q", "group_pad"))
def _round_trip(q, md, *, block_q, group_pad):
    items = rpa_blocks.plan_work_items(md, q.shape[0], block_q)
    packed = rpa_blocks.pack_queries(q, items, num_kv_heads=2, block_q=block_q, group_pad=group_pad)
    return rpa_blocks.unpack_outputs(
        packed, md, num_heads=q.shape[1], block_q=block_q, dtype=q.dtype
    )


@settings(max_examples=15, deadline=None)
@given(
    q_lens=st.lists(st.integers(0, 8), min_size=4, max_size=4).filter(lambda x: sum(x) <= 20),
    block_q=st.sampled_from([1, 4]),
)
def test_pack_then_unpack_is_identity_on_real_tokens(q_lens, block_q):
    num_tokens = 20
    md = _metadata(q_lens, [8] * 4, num_tokens, max_q_len=8)
    q = jnp.arange(num_tokens * 6 * 2, dtype=jnp.float32).reshape(num_tokens, 6, 2) + 1
    out = _round_trip(q, md, block_q=block_q, group_pad=4)  # G = 3 padded to 4
    real = np.arange(num_tokens) < sum(q_lens)
    np.testing.assert_array_equal(out[real], q[real])
    np.testing.assert_array_equal(out[~real], 0)


@pytest.mark.parametrize(
    ("num_seqs", "num_tokens", "max_q_len", "block_q", "want"),
    [(8, 8, 1, 1, 8), (8, 519, 512, 64, 17), (1, 512, 512, 64, 8), (4, 3, 1, 1, 4)],
)
def test_num_work_items(num_seqs, num_tokens, max_q_len, block_q, want):
    assert rpa_blocks.num_work_items(num_seqs, num_tokens, max_q_len, block_q) == want


def test_check_inputs_rejects_mismatched_shapes():
    md = _metadata([1, 1], [3, 3], num_tokens=2, max_q_len=1)
    q = jnp.zeros((2, 4, 8))
    pages = jnp.zeros((5, 4, 2, 8))
    rpa_blocks.check_inputs(q, pages, pages, md)  # consistent: no error
    with pytest.raises(ValueError, match="head_dim"):
        rpa_blocks.check_inputs(jnp.zeros((2, 4, 16)), pages, pages, md)
    with pytest.raises(ValueError, match="multiple"):
        rpa_blocks.check_inputs(jnp.zeros((2, 3, 8)), pages, pages, md)
    with pytest.raises(ValueError, match="differ"):
        rpa_blocks.check_inputs(q, pages, jnp.zeros((5, 4, 1, 8)), md)
    with pytest.raises(ValueError, match="slot_mapping"):
        rpa_blocks.check_inputs(jnp.zeros((3, 4, 8)), pages, pages, md)
