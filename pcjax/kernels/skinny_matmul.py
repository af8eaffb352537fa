"""``x @ w.T`` for the few rows of a decode step, as a native XLA FFI call on CPU.

`dot_nt_skinny(x, w)` computes what `pcjax.models.transformer.dot_nt` does (x f[M, in], w
f[out, in], float32 sums) for M <= `MAX_ROWS`, in `csrc/skinny_matmul.cc`: each weight row is
streamed once against all rows of x. XLA:CPU's dot on such shapes repacks or transposes the
weights on every call (YNNPACK's transpose was ~40% of a pcjax-small decode step), so a decode
step read its weights about twice. bfloat16 on a CPU with AVX512-BF16 multiplies bfloat16 pairs
with vdpbf16ps instead of converting the weights to f32 first (smollm2-135m's decode projections,
8 rows: 20.6 -> 18.3 ms per step on a 2-core Zen 4).

Availability: built on first use like the attention kernel (`pcjax.kernels.native`); lowers on
the CPU platform only.
"""

import jax
import jax.numpy as jnp

from pcjax.kernels import native

MAX_ROWS = 16
_SOURCE = "skinny_matmul.cc"
_TARGET = "pcjax_skinny_matmul_cpu"
_SYMBOLS = (("PcjaxSkinnyMatmulCpu", _TARGET),)


def require() -> None:
    """Builds and loads the kernel, or raises `NativeUnavailable` saying why it cannot."""
    native.load(_SOURCE, _SYMBOLS)


def dot_nt_skinny(x: jax.Array, w: jax.Array, out_dtype=None) -> jax.Array:
    """``x @ w.T`` for x f[M, in] (M <= MAX_ROWS) and w f[out, in] of one dtype (f32 or bf16).

    Returns f[M, out] in `out_dtype` (float32, or None for x's dtype), summed in float32.
    Raises `NativeUnavailable` where the kernel cannot be built, ValueError on bad shapes.
    """
    require()
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"want x [M, K] and w [N, K], got {x.shape} and {w.shape}")
    if x.shape[0] > MAX_ROWS:
        raise ValueError(f"x has {x.shape[0]} rows; the skinny matmul takes at most {MAX_ROWS}")
    out = jax.ShapeDtypeStruct((x.shape[0], w.shape[0]), jnp.dtype(out_dtype or x.dtype))
    return jax.ffi.ffi_call(_TARGET, out)(x, w.astype(x.dtype))
