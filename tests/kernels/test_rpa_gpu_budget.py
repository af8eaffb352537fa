"""The GPU kernel's launch parameters over the whole supported range, without a GPU: every
launch fits the device's shared memory, decode launches fill the SMs, and every distinct kernel
configuration lowers to Triton for an (abstract) H200."""

import functools
import warnings

import jax
import pytest

from pcjax.kernels import rpa_gpu_tuning as tuning_lib
from pcjax.kernels.rpa_gpu import launch_configurations, ragged_paged_attention_gpu
from pcjax.kernels.rpa_gpu_tuning import (
    GRID_ITEMSIZES,
    GpuTuning,
    choose_tuning,
    launch_grid,
    smem_bytes,
    smem_limit,
)
from pcjax.kernels.testing import abstract_launch_args

DEVICES = {"NVIDIA H200": 132, "NVIDIA A100-SXM4-80GB": 108, "NVIDIA L4": 58}


def _choose(case, device_kind, num_sms) -> GpuTuning:
    return choose_tuning(
        max_q_len=case.max_q_len, group=case.group, head_dim=case.head_dim,
        itemsize=GRID_ITEMSIZES[case.dtype], num_seqs=case.num_seqs, num_tokens=case.num_tokens,
        num_kv_heads=case.num_kv_heads, max_kv_len=case.pages_per_seq * case.page_size,
        device_kind=device_kind, num_sms=num_sms,
    )  # fmt: skip


def test_the_docstrings_worked_example():
    decode = tuning_lib.LaunchCase(True, "bfloat16", 128, 4, 8, 16, 8, 8192)
    tuning = _choose(decode, "NVIDIA H200", 132)
    assert (tuning.block_kv, tuning.num_stages, tuning.rows) == (128, 3, 16)
    assert smem_bytes(tuning, 128, 2) == 3 * 2 * 128 * 128 * 2 + 16 * 128 * 2 + 16 * 128 * 6


@pytest.mark.parametrize("device_kind", DEVICES)
def test_every_supported_launch_fits_shared_memory(device_kind):
    limit = smem_limit(device_kind)
    for case in launch_grid():
        tuning = _choose(case, device_kind, DEVICES[device_kind])
        itemsize = GRID_ITEMSIZES[case.dtype]
        assert smem_bytes(tuning, case.head_dim, itemsize) <= limit, (case, tuning)
        # >= 3: the page index is prefetched (2 only where 99 KiB cannot hold 3 stages)
        assert tuning.num_stages >= (3 if limit > 100 * 1024 else 2), (case, tuning)
        assert tuning.block_kv >= 16 and tuning.block_kv & (tuning.block_kv - 1) == 0
        assert tuning.rows >= 16 and tuning.group_pad >= case.group
        assert tuning.num_warps == (8 if tuning.rows * case.head_dim >= 128 * 128 else 4)


@pytest.mark.parametrize(
    ("batch", "context", "splits"), [(8, 8192, 4), (8, 32768, 4), (64, 8192, 2), (64, 32768, 3)]
)
def test_decode_splits_follow_the_h200_sweep(batch, context, splits):
    """The sweep's best (experiments/results/h200/tune_attention.json): S=4 at B=8 for 8k and
    32k tokens; at B=64 more than one split (2 beat 1 there)."""
    case = tuning_lib.LaunchCase(True, "bfloat16", 128, 4, 8, 16, batch, context)
    assert _choose(case, "NVIDIA H200", 132).kv_splits == splits


def test_decode_launches_saturate_the_device():
    """Every decode launch has about 2 programs per SM or more (the 3% tie rule may stop 10%
    short), unless even its most splits (>= 4 tiles each) would not reach that."""
    num_sms = DEVICES["NVIDIA H200"]
    for case in launch_grid():
        if not case.decode:
            continue
        tuning = _choose(case, "NVIDIA H200", num_sms)
        tiles = case.pages_per_seq * case.page_size // tuning.block_kv
        pairs = case.num_seqs * case.num_kv_heads
        most = max(1, min(tiles // 4, 64))
        programs = pairs * tuning.kv_splits
        assert programs >= 0.9 * 2 * num_sms or pairs * most < 2 * num_sms, (case, tuning)


def test_interpret_mode_tunes_for_an_h200():
    assert tuning_lib.device_facts() == ("NVIDIA H200", 132)


def test_every_kernel_configuration_lowers_for_an_h200():
    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=1, platform="cuda")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    with jax.sharding.use_abstract_mesh(mesh), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the Triton backend's
        configs = launch_configurations()
        assert len(configs) >= 36  # decode/prefill x dtype x head_dim x 3 page lookup modes
        for case in configs.values():
            fn = functools.partial(ragged_paged_attention_gpu, sm_scale=0.125)
            text = jax.jit(fn).trace(*abstract_launch_args(case))
            text = text.lower(lowering_platforms=("cuda",)).as_text()
            assert "__gpu$xla.gpu.triton" in text, case
