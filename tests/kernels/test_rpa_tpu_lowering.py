"""The TPU kernel lowers for an abstract TPU v5e over the supported grid (no TPU, no libtpu).

Lowering runs Pallas's Mosaic lowering rules (every primitive has a rule, refs and DMAs are
well-formed, the VMEM/SMEM budget check of the wrapper); Mosaic's own compile is
`test_rpa_tpu_compile.py`. One lowering per static kernel configuration: batch and context only
change array extents (work items W, table width M), so each configuration is lowered once, at
batch 256 and 128k context, as a mixed step (a prefill-chunk call and the decodes' call).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import pytest

from pcjax.kernels.ragged_paged_attention import AttentionMetadata
from pcjax.kernels.rpa_tpu import ragged_paged_attention_tpu

BATCH, CONTEXT, TOKENS, MAX_Q = 256, 131072, 8192, 512
# (page_size, (N, K)): K = 8 takes the strided loads (bf16: u32 pairs), K = 1 and 3 the indexed
# ones; 33 is a page size that is no multiple of a tile (with a sliding window), 128 gives
# one-page blocks. (~1.5 s per lowering on 2 cores: the grid is kept to these 30.)
LAYOUTS = [(16, (32, 8)), (16, (8, 1)), (16, (12, 3)), (33, (16, 2)), (128, (32, 8))]
CONFIGS = list(itertools.product((jnp.float32, jnp.bfloat16), (64, 128, 256), LAYOUTS))


def _lower(dtype, head_dim, page_size, heads, **kwargs):
    num_heads, num_kv_heads = heads
    sds = jax.ShapeDtypeStruct
    md = AttentionMetadata(
        slot_mapping=sds((TOKENS,), jnp.int32),
        page_table=sds((BATCH, -(-CONTEXT // page_size)), jnp.int32),
        kv_lens=sds((BATCH,), jnp.int32),
        cu_q_lens=sds((BATCH + 1,), jnp.int32),
        max_q_len=MAX_Q,
    )
    pages = sds((4096, page_size, num_kv_heads, head_dim), dtype)
    window = 4096 if page_size == 33 else None  # the sliding-window block range too
    fn = functools.partial(ragged_paged_attention_tpu, sm_scale=0.1, sliding_window=window)
    device = jax.sharding.AbstractDevice(device_kind="TPU v5 lite", num_cores=1, platform="tpu")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    with jax.sharding.use_abstract_mesh(mesh):
        traced = jax.jit(functools.partial(fn, **kwargs)).trace(
            sds((TOKENS, num_heads, head_dim), dtype), pages, pages, md
        )
        return traced.lower(lowering_platforms=("tpu",)).as_text()


@pytest.mark.parametrize(("dtype", "head_dim", "layout"), CONFIGS)
def test_lowers_for_tpu_v5e(dtype, head_dim, layout):
    text = _lower(dtype, head_dim, *layout)
    assert text.count("tpu_custom_call") == 2  # the prefill items' call and the decodes'
    assert "ragged_paged_attention_tpu" in text


def test_lowering_refuses_what_a_tpu_cannot_run():
    with pytest.raises(ValueError, match="head_dim <= 128 or a multiple of 128"):
        _lower(jnp.bfloat16, 192, 16, (8, 2))
    with pytest.raises(ValueError, match="must divide table_block"):
        _lower(jnp.bfloat16, 128, 16, (8, 2), pages_per_block=3)
    with pytest.raises(ValueError, match="multiple of 128 on a TPU"):
        _lower(jnp.bfloat16, 128, 16, (8, 2), pages_per_block=2, table_block=64)
    with pytest.raises(ValueError, match="VMEM"):  # the budget, checked before compiling
        _lower(jnp.float32, 256, 16, (64, 8), block_q=512)
