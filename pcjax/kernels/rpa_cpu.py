"""Ragged paged attention on CPU as a native XLA FFI call (`csrc/ragged_paged_attention.cc`).

Semantics: exactly those of `ref_ragged_paged_attention`, for any step (decodes, prefill chunks
over cached prefixes, mixes), GQA, sliding window, soft cap, float32 and bfloat16, any page size.

Why native. XLA:CPU has no way to read a sequence's pages where they lie: every jnp formulation
first gathers them into a copy (and then transposes it for the dots), and at decode that copy and
the small batched dots cost more than the whole read of the pages should (pcjax-small, B=8,
~600-token contexts: ~2.5-4 ms per layer for the gather-based decode, ~35-45 ms of a ~80 ms decode
step). The kernel reads each page once, in place, keeps the softmax online in registers and
splits the work over (sequence, kv head, query block) items on XLA's intra-op thread pool.
Decodes whose page tables begin with the same pages (prefix caching's shared system prompt) run
as a cascade: they attend to the shared pages together in a first pass, then each to its own
(smollm2-135m, B = 8 over a 512-token shared prefix: 31.8 -> 18.7 ms of attention per step).

Availability: the handler is compiled on first use (`pcjax.kernels.native`); `require()` builds it
or says why it cannot, and `pcjax.kernels.cpu_native_available()` asks for the whole native path.
The call lowers on the CPU platform only.
"""

import jax
import numpy as np

from pcjax.kernels import native
from pcjax.kernels.ragged_paged_attention import AttentionMetadata

_SOURCE = "ragged_paged_attention.cc"
_TARGET = "pcjax_ragged_paged_attention_cpu"
_SYMBOLS = (("PcjaxRaggedPagedAttentionCpu", _TARGET),)


def require() -> None:
    """Builds and loads the kernel, or raises `NativeUnavailable` saying why it cannot."""
    native.load(_SOURCE, _SYMBOLS)


def ragged_paged_attention_cpu(
    q: jax.Array,  # f[T, N, H]
    k_pages: jax.Array,  # f[NP, P, K, H]
    v_pages: jax.Array,  # f[NP, P, K, H]
    md: AttentionMetadata,
    *,
    sm_scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> jax.Array:  # f[T, N, H]
    """The native CPU kernel (see the module docstring); raises `NativeUnavailable` if unbuilt.

    q, k_pages and v_pages must share one dtype (float32 or bfloat16); the output has it too.
    Metadata out of range (a page id past NP, kv_len past the page table, query tokens past T) is
    reported as an error by the call instead of being read.
    """
    require()
    if sliding_window is not None and sliding_window <= 0:
        raise ValueError(f"sliding_window must be positive, got {sliding_window}")
    if soft_cap is not None and soft_cap <= 0:
        raise ValueError(f"soft_cap must be positive, got {soft_cap}")
    call = jax.ffi.ffi_call(_TARGET, jax.ShapeDtypeStruct(q.shape, q.dtype))
    return call(
        q,
        k_pages,
        v_pages,
        md.page_table.astype(np.int32),
        md.kv_lens.astype(np.int32),
        md.cu_q_lens.astype(np.int32),
        sm_scale=np.float32(sm_scale),
        sliding_window=np.int64(sliding_window or 0),
        soft_cap=np.float32(soft_cap or 0.0),
    )
