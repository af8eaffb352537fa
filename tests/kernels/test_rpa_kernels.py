"""The Pallas kernels (in interpret mode) and the native CPU kernel against the jnp reference;
the TPU kernel's races.

Every case is one ragged batch mixing decodes, prefills with and without a cached prefix, a
sequence ending exactly on a page boundary, a padded sequence and padded tokens, over randomly
permuted page tables whose unused pages, slots past kv_len and null page are NaN.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pcjax.kernels import cpu_native_available, rpa_cpu
from pcjax.kernels.rpa_gpu import ragged_paged_attention_gpu
from pcjax.kernels.rpa_tpu import ragged_paged_attention_tpu
from pcjax.kernels.testing import assert_matches_reference, make_batch, written_and_reference

# (q_len, kv_len): decode, decode at position 0, prefill without cache, prefill chunk over a
# cached prefix, padding, a chunk ending exactly on a page boundary (page size 16 or 33).
MIX = ((1, 37), (1, 1), (20, 20), (9, 70), (0, 0), (3, 66))

CASES = {  # name: (dtype, page_size, N, K, H, sliding_window, soft_cap)
    "f32-p16-gqa1-h64": (jnp.float32, 16, 4, 4, 64, None, None),
    "f32-p33-gqa4-h128-window": (jnp.float32, 33, 8, 2, 128, 7, None),
    "bf16-p16-gqa8-h64-softcap": (jnp.bfloat16, 16, 8, 1, 64, None, 5.0),
    "bf16-p33-gqa4-h128-window": (jnp.bfloat16, 33, 4, 1, 128, 40, None),
}

KERNELS = {  # name: (kernel, tuning args giving several items, kv blocks and splits per sequence)
    "tpu": (ragged_paged_attention_tpu, dict(interpret=True)),
    "tpu-small-blocks": (
        ragged_paged_attention_tpu,
        dict(interpret=True, block_q=4, pages_per_block=2),
    ),
    "tpu-code-path": (  # the TPU code path (strided reads, double buffering) interpreted
        ragged_paged_attention_tpu,
        dict(interpret=True, tpu_code_path=True, block_q=4, pages_per_block=2),
    ),
    "gpu-splits": (
        ragged_paged_attention_gpu,
        dict(interpret=True, block_q=4, block_kv=16, kv_splits=3),
    ),
    "cpu-native": (rpa_cpu.ragged_paged_attention_cpu, {}),
}


@functools.cache
def _case(name):
    """The case's batch after write_kv, and the reference output (computed once per case)."""
    dtype, page_size, num_heads, num_kv_heads, head_dim, window, soft_cap = CASES[name]
    q_lens, kv_lens = zip(*MIX, strict=True)
    batch = make_batch(
        sum(map(ord, name)),
        q_lens,
        kv_lens,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        page_size=page_size,
        dtype=dtype,
        num_tokens=sum(q_lens) + 5,
        pages_per_seq=6,
    )
    args = dict(sm_scale=head_dim**-0.5, sliding_window=window, soft_cap=soft_cap)
    k_pages, v_pages, want = written_and_reference(batch, **args)
    return (batch.q, k_pages, v_pages, batch.md), args, want


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference(kernel, case):
    if kernel == "cpu-native" and not cpu_native_available():
        pytest.skip("the native CPU kernel does not build here (no C++ compiler)")
    (q, k_pages, v_pages, md), args, want = _case(case)
    fn, tuning = KERNELS[kernel]
    out = fn(q, k_pages, v_pages, md, **args, **tuning)
    assert out.shape == q.shape and out.dtype == q.dtype
    real = int(md.cu_q_lens[-1])
    assert np.isfinite(np.asarray(out[:real], np.float32)).all(), "a NaN page leaked in"
    np.testing.assert_array_equal(np.asarray(out[real:], np.float32), 0)
    assert_matches_reference(out, want)


@pytest.mark.parametrize("head_dim", [24, 48])
def test_gpu_kernel_pads_other_head_dims(head_dim):
    """Triton tensors need power-of-two dims: other head dims are padded in registers."""
    batch = make_batch(
        head_dim, [1, 7, 1], [5, 40, 90], num_heads=4, num_kv_heads=2, head_dim=head_dim,
        page_size=16, num_tokens=12,
    )  # fmt: skip
    args = dict(sm_scale=head_dim**-0.5)
    k_pages, v_pages, want = written_and_reference(batch, **args)
    for tuning in ({}, dict(block_q=4, block_kv=16, kv_splits=3)):
        out = ragged_paged_attention_gpu(
            batch.q, k_pages, v_pages, batch.md, interpret=True, **args, **tuning
        )
        assert_matches_reference(out, want)


# --- race detection (the TPU kernel's DMAs, semaphores and double buffering) -----------------


def _assert_no_race(run, capfd):
    """Runs `run` under the TPU interpreter's race detector and fails on a reported race.

    jax >= 0.12 raises on a race (``on_race="raise"``, surfacing as a runtime error whose
    message says RACE DETECTED); jax 0.11 prints RACE DETECTED and carries on.
    """
    try:
        out = jax.block_until_ready(run())
    except Exception as e:
        pltpu.reset_tpu_interpret_mode_state()
        if "RACE DETECTED" in str(e):
            pytest.fail(f"race detected: {e}")
        raise
    printed = capfd.readouterr()
    if "RACE DETECTED" in printed.out + printed.err:
        pytest.fail(f"race detected: {printed.out + printed.err}")
    return out


def _racy_kernel(x_hbm, o_ref, buf, sem):
    copy = pltpu.make_async_copy(x_hbm, buf, sem.at[0])
    copy.start()
    o_ref[...] = buf[...]  # reads the DMA's destination before waiting for it
    copy.wait()


def test_race_detector_catches_a_read_before_wait(capfd):
    """The harness above can fail: a read of a DMA destination before its wait is flagged."""
    x = jnp.ones((8, 128), jnp.float32)
    racy = pl.pallas_call(
        _racy_kernel,
        out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
        scratch_shapes=[pltpu.VMEM(x.shape, x.dtype), pltpu.SemaphoreType.DMA((1,))],
        interpret=pltpu.InterpretParams(detect_races=True),
    )
    with pytest.raises(pytest.fail.Exception, match="race"):
        _assert_no_race(lambda: racy(x), capfd)


@pytest.mark.parametrize(
    ("dtype", "window", "soft_cap"), [(jnp.float32, None, None), (jnp.bfloat16, 5, 3.0)]
)
def test_tpu_kernel_has_no_races(dtype, window, soft_cap, capfd):
    # Tiny shapes: the race-detecting interpreter is ~1000x slower than interpret=True. Page
    # size 3 and 2 pages per block give several double-buffered blocks per sequence. The 6-token
    # prefill comes first: its first item's only kv block holds a page it must not fetch, over
    # VMEM the interpreter fills with NaN.
    batch = make_batch(
        1,
        [6, 1, 4, 0],
        [6, 7, 9, 0],
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        page_size=3,
        dtype=dtype,
        num_tokens=13,
    )
    args = dict(sm_scale=0.3, sliding_window=window, soft_cap=soft_cap)
    k_pages, v_pages, want = written_and_reference(batch, **args)
    out = _assert_no_race(
        lambda: ragged_paged_attention_tpu(
            batch.q,
            k_pages,
            v_pages,
            batch.md,
            block_q=2,
            pages_per_block=2,
            interpret=pltpu.InterpretParams(detect_races=True),
            **args,
        ),
        capfd,
    )
    assert_matches_reference(out, want)


# --- lowering for GPU and TPU without either ---------------------------------------------------

LOWERING_CASES = {  # name: (dtype, page_size, N, K, H, q_lens, kv_lens, window, soft_cap, gpu args)
    "f32-p33-window-softcap": (
        jnp.float32,
        33,
        4,
        4,
        64,
        [1, 5, 0, 3],
        [7, 40, 0, 3],
        7,
        5.0,
        dict(kv_splits=1),
    ),
    "bf16-decode": (jnp.bfloat16, 16, 32, 8, 128, [1] * 8, [700] * 8, None, None, {}),
    "bf16-mixed-gqa8": (jnp.bfloat16, 16, 8, 1, 128, [1, 64], [900, 300], None, None, {}),
}

LOWERING_TARGETS = {  # name: (kernel, platform, device kind, the custom call it lowers to)
    "gpu-h200": (ragged_paged_attention_gpu, "cuda", "NVIDIA H200", "__gpu$xla.gpu.triton"),
    "tpu-v5e": (ragged_paged_attention_tpu, "tpu", "TPU v5 lite", "tpu_custom_call"),
}


@pytest.mark.parametrize("target", LOWERING_TARGETS)
@pytest.mark.parametrize("case", LOWERING_CASES)
def test_kernel_lowers_for_its_device(case, target):
    """Lowers (does not compile) a kernel for its platform on this CPU-only machine.

    An abstract device stands in for the real one. This runs the Pallas Triton / Mosaic lowering
    rules, which check that every primitive has a rule and (Triton) that every loaded or stored
    tensor has a power-of-two size. What the Triton and Mosaic compilers themselves would say
    (PTX, TPU layouts) stays unverified here.
    """
    dtype, page_size, num_heads, num_kv_heads, head_dim, q_lens, kv_lens, window, cap, gpu_args = (
        LOWERING_CASES[case]
    )
    kernel, platform, device_kind, custom_call = LOWERING_TARGETS[target]
    batch = make_batch(
        0, q_lens, kv_lens, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
        page_size=page_size, dtype=dtype, num_tokens=sum(q_lens) + 3,
    )  # fmt: skip
    tuning = gpu_args if platform == "cuda" else {}
    fn = functools.partial(kernel, sm_scale=0.1, sliding_window=window, soft_cap=cap, **tuning)
    device = jax.sharding.AbstractDevice(device_kind=device_kind, num_cores=1, platform=platform)
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    with jax.sharding.use_abstract_mesh(mesh), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the Triton backend's deprecation
        traced = jax.jit(fn).trace(batch.q, batch.k_pages, batch.v_pages, batch.md)
        text = traced.lower(lowering_platforms=(platform,)).as_text()
    # The TPU kernel makes two calls for a mixed batch (decodes get one-token items).
    assert custom_call in text
