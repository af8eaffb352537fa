"""The platform's Pallas kernel compiled for the real device (Triton on GPU, Mosaic on TPU) against
the jnp reference. Marked `accelerator`: skipped, with the reason, on a CPU-only machine.

Cases: the NaN-poisoned ragged mixes of `test_rpa_kernels` (decodes, prefills with and without a
cached prefix, a chunk ending on a page boundary, padding) under several tunings, and engine-shaped
batches long enough for kv splits and the merge kernel (decode B=8 over 2k tokens, a 256-token
chunk over a 1k-token prefix beside 7 decodes) in every page-table lookup mode of the GPU kernel
(a page holding whole tiles, a tile holding whole pages, one lookup per token).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcjax.kernels.rpa_gpu import ragged_paged_attention_gpu
from pcjax.kernels.rpa_tpu import ragged_paged_attention_tpu
from pcjax.kernels.testing import assert_matches_reference, make_batch, written_and_reference
from tests.kernels.test_rpa_kernels import CASES, _case

pytestmark = [
    pytest.mark.accelerator,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # the Pallas Triton backend's
]

TUNINGS = {  # name: GPU tuning args (the TPU kernel takes its defaults)
    "default": {},
    "splits": dict(block_q=4, block_kv=16, kv_splits=3),
    "pages-per-tile": dict(block_q=2, block_kv=32, kv_splits=2),
}

# name: (dtype, page_size, N, K, H, q_lens, kv_lens)
ENGINE_CASES = {
    "decode-b8-2k-bf16-h128-p16": (
        jnp.bfloat16, 16, 32, 8, 128, [1] * 8, [2048 - 37 * i for i in range(8)],
    ),
    "mixed-chunk256-bf16-h128-p16": (
        jnp.bfloat16, 16, 32, 8, 128, [256] + [1] * 7, [1280] + [1500 + 3 * i for i in range(7)],
    ),
    "decode-b4-f32-h64-p64": (jnp.float32, 64, 12, 4, 64, [1] * 4, [1900, 700, 1, 64]),
    "decode-b4-bf16-h256-p16": (jnp.bfloat16, 16, 8, 2, 256, [1] * 4, [1500, 1499, 16, 17]),
    "mixed-f32-h128-p33": (jnp.float32, 33, 8, 2, 128, [40, 1, 1, 0], [900, 600, 33, 0]),
}  # fmt: skip


def _platform_kernel():
    backend = jax.default_backend()
    if backend == "tpu":
        return functools.partial(ragged_paged_attention_tpu, interpret=False), "tpu"
    return ragged_paged_attention_gpu, "gpu"


def _check(out, want, md):
    assert out.shape == want.shape and out.dtype == want.dtype
    real = int(md.cu_q_lens[-1])
    assert np.isfinite(np.asarray(out[:real], np.float32)).all(), "a NaN page leaked in"
    np.testing.assert_array_equal(np.asarray(out[real:], np.float32), 0)
    assert_matches_reference(out, want)


@pytest.mark.parametrize("tuning", TUNINGS)
@pytest.mark.parametrize("case", CASES)
def test_kernel_on_device_matches_reference(case, tuning):
    kernel, platform = _platform_kernel()
    if platform == "tpu" and tuning != "default":
        pytest.skip("GPU tunings")
    (q, k_pages, v_pages, md), args, want = _case(case)
    out = jax.block_until_ready(kernel(q, k_pages, v_pages, md, **args, **TUNINGS[tuning]))
    _check(out, want, md)


@pytest.mark.parametrize("case", ENGINE_CASES)
def test_kernel_on_device_engine_shapes(case):
    kernel, _ = _platform_kernel()
    dtype, page_size, num_heads, num_kv_heads, head_dim, q_lens, kv_lens = ENGINE_CASES[case]
    batch = make_batch(
        len(case), q_lens, kv_lens, num_heads=num_heads, num_kv_heads=num_kv_heads,
        head_dim=head_dim, page_size=page_size, dtype=dtype, num_tokens=sum(q_lens) + 3,
        max_q_len=1 << (max(q_lens) - 1).bit_length(),
    )  # fmt: skip
    args = dict(sm_scale=head_dim**-0.5)
    k_pages, v_pages, want = written_and_reference(batch, **args)
    out = jax.block_until_ready(kernel(batch.q, k_pages, v_pages, batch.md, **args))
    _check(out, want, batch.md)
