"""Attention over the paged KV cache: the interface, the jnp reference, and the Pallas kernels.

Implementations (the `impl` of `ragged_paged_attention`):

=============  ================================================================================
reference      plain jnp (`ref_ragged_paged_attention`): gathers all M pages of every sequence
pallas_tpu     `rpa_tpu`: Mosaic TPU kernel (scalar prefetch, double-buffered page DMAs);
               interpret mode (an XLA loop) off TPU
pallas_gpu     `rpa_gpu`: Triton GPU kernel (split-KV); interpret mode off GPU
pallas         the platform's kernel: pallas_tpu on TPU, pallas_gpu on GPU, and on CPU the
               faster one in interpret mode, pallas_tpu (see `resolve_attention_impl`)
cpu            the CPU path: decode steps (static ``max_q_len == 1``) run the page-blocked jnp
               decode (`rpa_decode_xla`), other steps pallas_tpu in interpret mode
=============  ================================================================================
"""

import jax

from pcjax.config import KERNEL_IMPLS
from pcjax.kernels.ragged_paged_attention import (
    AttentionMetadata,
    ref_ragged_paged_attention,
    write_kv,
)
from pcjax.kernels.rpa_decode_xla import decode_paged_attention
from pcjax.kernels.rpa_gpu import ragged_paged_attention_gpu
from pcjax.kernels.rpa_tpu import ragged_paged_attention_tpu

__all__ = [
    "IMPLS",
    "AttentionMetadata",
    "decode_paged_attention",
    "ragged_paged_attention",
    "ragged_paged_attention_gpu",
    "ragged_paged_attention_tpu",
    "ref_ragged_paged_attention",
    "resolve_attention_impl",
    "write_kv",
]

IMPLS = KERNEL_IMPLS

# On CPU both kernels run in interpret mode; the TPU kernel's XLA loop is the faster of the two and
# at least as fast as the reference at the engine's shapes (experiments/bench_attention.py,
# pcjax-small N=12 K=4 H=64 P=16 f32, engine buckets, 2 shared cores, median of 20; ranges over 3
# runs): decode B=8 x ~600 tokens 1.1-2.0x the reference's speed (1024 tokens 1.1-1.2x; at 256
# tokens, where the page table fits exactly, 0.9-1.7x), a 512-token chunk over 512 cached tokens
# 2.6-4.0x, that chunk plus 7 decodes 9-17x; the GPU kernel interpreted is 1.3-10x slower than the
# TPU kernel. End to end (pcjax-small forward, 12 layers, B=8 decode at 600 tokens, M bucketed)
# ~1.5x faster (one run). Its cost: compiling that forward takes ~2-2.5x longer (decode 6 s vs
# 3 s, 512-token prefill 15 s vs 6 s, loaded machine), once per shape bucket. So "auto" on CPU
# picks it for steps with prefill. At decode, in the engine (pcjax-small, B=8, ~600-token
# contexts, M bucket 48, idle machine) the interpreted kernel's step was slower than the
# reference's (115 vs 93 ms per forward), and the page-blocked jnp decode of `rpa_decode_xla` is
# faster than both: "auto" on CPU is "cpu", which combines the two. Latest bench_attention run
# (experiments/results/bench_attention_cpu.json, medians): decode 256/600/1024 tokens, cpu
# 1.26/1.61/1.60x the reference (pallas 0.66/1.02/0.83x); mixed 6.1/15.4/10.8x; prefill
# 1.3/5.0/2.5x. End to end on experiments/bench_prefix_cache (caching on): cpu 12.0 s, reference
# 15.7 s, pallas 17.4 s. A static choice; re-measure when the kernels change.
_CPU_PALLAS = "pallas_tpu"
_CPU_AUTO = "cpu"


def _platform_kind(platform: str) -> str:
    kind = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
    if kind not in ("cpu", "gpu", "tpu"):
        raise ValueError(f"unknown platform {platform!r}; want cpu, gpu (cuda, rocm) or tpu")
    return kind


def resolve_attention_impl(name: str, platform: str) -> str:
    """Maps an engine's `attention_impl` to a concrete implementation for `platform`.

    A static decision (no timing at run time); the CPU choice rests on the figures above.

    Args:
      name: "auto" (the Pallas kernel where it is at least as fast as the reference), "pallas"
        (the platform's Pallas kernel, in interpret mode on CPU), or a name in `IMPLS`.
      platform: `jax.default_backend()` or a device's platform: "cpu", "gpu", "cuda", "rocm",
        "tpu".

    Returns:
      "reference", "pallas_tpu", "pallas_gpu" or "cpu".
    """
    kind = _platform_kind(platform)
    if name in IMPLS and name != "pallas":
        return name
    if name == "pallas":
        return {"tpu": "pallas_tpu", "gpu": "pallas_gpu", "cpu": _CPU_PALLAS}[kind]
    if name == "auto":
        return {"tpu": "pallas_tpu", "gpu": "pallas_gpu", "cpu": _CPU_AUTO}[kind]
    raise ValueError(f"unknown attention impl {name!r}; want 'auto' or one of {IMPLS}")


def ragged_paged_attention(
    q, k_pages, v_pages, md, *, sm_scale, sliding_window=None, soft_cap=None, impl="reference"
):
    """Dispatches to one implementation of the ragged paged attention (see the interface module).

    Args:
      impl: a name in `IMPLS` (or "auto"). A kernel runs natively on its own platform
        (`jax.default_backend()`) and in interpret mode anywhere else.
    """
    platform = _platform_kind(jax.default_backend())
    impl = resolve_attention_impl(impl, platform)
    args = dict(sm_scale=sm_scale, sliding_window=sliding_window, soft_cap=soft_cap)
    if impl == "reference":
        return ref_ragged_paged_attention(q, k_pages, v_pages, md, **args)
    if impl == "cpu":
        if md.max_q_len == 1:
            return decode_paged_attention(q, k_pages, v_pages, md, **args)
        impl = "pallas_tpu"
    if impl == "pallas_tpu":
        return ragged_paged_attention_tpu(
            q, k_pages, v_pages, md, interpret=platform != "tpu", **args
        )
    if platform == "gpu":
        return ragged_paged_attention_gpu(q, k_pages, v_pages, md, **args)
    # Interpreted, split-KV only adds a merge: one split.
    return ragged_paged_attention_gpu(q, k_pages, v_pages, md, interpret=True, kv_splits=1, **args)
