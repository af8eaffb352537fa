"""Attention over the paged KV cache: the interface, the jnp reference, the Pallas kernels and the
native CPU kernels (with them, `dot_nt_skinny`: the projections of decode steps on that path).

Implementations (the `impl` of `ragged_paged_attention`):

=============  ================================================================================
reference      plain jnp (`ref_ragged_paged_attention`): gathers all M pages of every sequence
pallas_tpu     `rpa_tpu`: Mosaic TPU kernel (page-table rows in SMEM, prefetched page DMAs);
               interpret mode (an XLA loop) off TPU
pallas_gpu     `rpa_gpu`: Triton GPU kernel (split-KV); interpret mode off GPU
pallas         the platform's kernel: pallas_tpu on TPU, pallas_gpu on GPU, and on CPU the
               faster one in interpret mode, pallas_tpu (see `resolve_attention_impl`)
cpu_native     `rpa_cpu`: a C++ kernel called through XLA's FFI, compiled on first use
               (`native`); reads pages in place, lane-wise online softmax, XLA's thread pool;
               the model's decode-step projections then use `skinny_matmul` too
cpu_xla        decode steps (static ``max_q_len == 1``) run the page-blocked jnp decode
               (`rpa_decode_xla`), other steps pallas_tpu in interpret mode
cpu            cpu_native where it builds (a C++ compiler is present), else cpu_xla
=============  ================================================================================
"""

import jax

from pcjax.config import KERNEL_IMPLS
from pcjax.kernels import rpa_cpu, skinny_matmul
from pcjax.kernels.native import NativeUnavailable
from pcjax.kernels.ragged_paged_attention import (
    AttentionMetadata,
    ref_ragged_paged_attention,
    write_kv,
)
from pcjax.kernels.rpa_cpu import ragged_paged_attention_cpu
from pcjax.kernels.rpa_decode_xla import decode_paged_attention
from pcjax.kernels.rpa_gpu import ragged_paged_attention_gpu
from pcjax.kernels.rpa_tpu import ragged_paged_attention_tpu
from pcjax.kernels.skinny_matmul import MAX_ROWS as SKINNY_MAX_ROWS
from pcjax.kernels.skinny_matmul import dot_nt_skinny

__all__ = [
    "IMPLS",
    "NativeUnavailable",
    "SKINNY_MAX_ROWS",
    "AttentionMetadata",
    "cpu_native_available",
    "decode_paged_attention",
    "dot_nt_skinny",
    "ragged_paged_attention",
    "ragged_paged_attention_cpu",
    "ragged_paged_attention_gpu",
    "ragged_paged_attention_tpu",
    "ref_ragged_paged_attention",
    "require_cpu_native",
    "resolve_attention_impl",
    "write_kv",
]

IMPLS = KERNEL_IMPLS

# On CPU the Pallas kernels run in interpret mode; the TPU kernel's XLA loop is the faster of the
# two ("pallas" on CPU picks it). Neither is what a CPU wants: "auto" on CPU is "cpu", the native
# kernel where it builds, else cpu_xla. experiments/bench_attention (pcjax-small heads, f32, P=16,
# engine buckets, 2 shared cores; experiments/results/bench_attention_cpu.json), speed vs the
# reference, medians at 256 / 600 / 1024 kv tokens:
#   decode B=8           cpu_native 3.0 / 5.0 / 4.5x   cpu_xla 1.7 / 1.5 / 1.3x   pallas 0.9x
#   512-token chunk + 7  cpu_native 20 / 50 / 26x      cpu_xla 5.9 / 16 / 10x     pallas 5-12x
#   512-token chunk      cpu_native 2.3 / 10 / 5.0x    cpu_xla 1.3 / 4.4 / 2.2x   pallas 1.5-3.7x
# cpu_xla's page-blocked jnp decode beats the interpreted kernels at decode, and the interpreted
# TPU kernel beats the reference with prefill. A static choice (no timing at run time);
# re-measure when the kernels change.
_CPU_PALLAS = "pallas_tpu"


def _platform_kind(platform: str) -> str:
    kind = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
    if kind not in ("cpu", "gpu", "tpu"):
        raise ValueError(f"unknown platform {platform!r}; want cpu, gpu (cuda, rocm) or tpu")
    return kind


def require_cpu_native() -> None:
    """Builds and loads the native CPU kernels the cpu_native path runs (its attention, and the
    skinny matmul of its decode steps), or raises `NativeUnavailable` saying why it cannot."""
    rpa_cpu.require()
    skinny_matmul.require()


def cpu_native_available() -> bool:
    """Whether the cpu_native path can run here (built once per machine, the outcome kept)."""
    try:
        require_cpu_native()
    except NativeUnavailable:
        return False
    return True


def resolve_attention_impl(name: str, platform: str) -> str:
    """Maps an engine's `attention_impl` to a concrete implementation for `platform`.

    A static decision (no timing at run time); the CPU choice rests on the figures above. On CPU,
    "auto" and "cpu" build the native kernel if it is not built yet (seconds, once per machine).

    Args:
      name: "auto" (the platform's fastest), "pallas" (the platform's Pallas kernel, in interpret
        mode on CPU), "cpu" (cpu_native where it builds, else cpu_xla) or a name in `IMPLS`.
      platform: `jax.default_backend()` or a device's platform: "cpu", "gpu", "cuda", "rocm",
        "tpu".

    Returns:
      "reference", "pallas_tpu", "pallas_gpu", "cpu_native" or "cpu_xla".

    Raises:
      ValueError: an unknown name or platform, or "cpu_native" asked for where the native kernels
        cannot be built (the message says why).
    """
    kind = _platform_kind(platform)
    if name == "auto":
        name = {"tpu": "pallas_tpu", "gpu": "pallas_gpu", "cpu": "cpu"}[kind]
    if name == "pallas":
        return {"tpu": "pallas_tpu", "gpu": "pallas_gpu", "cpu": _CPU_PALLAS}[kind]
    if name == "cpu":
        return "cpu_native" if cpu_native_available() else "cpu_xla"
    if name == "cpu_native":
        try:
            require_cpu_native()
        except NativeUnavailable as error:
            raise ValueError(
                f"attention impl 'cpu_native' is not available here: {error}"
            ) from error
    if name in IMPLS:
        return name
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
    if impl == "cpu_native":
        if platform != "cpu":
            raise ValueError(f"attention impl 'cpu_native' runs on CPU only, not {platform}")
        return ragged_paged_attention_cpu(q, k_pages, v_pages, md, **args)
    if impl == "cpu_xla":
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
