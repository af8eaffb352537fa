"""XLA:CPU compiler options for the model step: the projections' dots through oneDNN.

XLA:CPU hands its dots to YNNPACK by default; it can hand them to oneDNN instead (the library
vLLM's and PyTorch's CPU backends use), an experimental path of XLA's own. On smollm2-135m's
prefill projections (512 tokens, 2 Zen 4 cores with AVX512-BF16, compared in one process) oneDNN
took 7-10% less time in both float32 and bfloat16; a 512-token prefill step 417 -> 377 ms in
bf16 (`experiments/bench_forward.py --xla_options`). Decode steps run pcjax's own skinny matmul
(`pcjax.kernels.skinny_matmul`) and do not depend on it.

`compiler_options` is empty off CPU, where ``PCJAX_ONEDNN=0``, and where the installed jaxlib
does not know the options (it then compiles a tiny dot once to find out).

Example::

    step = jax.jit(forward, compiler_options=compiler_options())
"""

import functools
import os

import jax
import jax.numpy as jnp

ONEDNN_DOTS = {
    "xla_cpu_use_onednn": True,
    "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
}


@functools.cache
def compiler_options() -> dict:
    """The XLA options for jitting a model step here: `ONEDNN_DOTS` on CPU, else none."""
    if os.environ.get("PCJAX_ONEDNN", "1") == "0" or jax.default_backend() != "cpu":
        return {}
    try:
        probe = jax.jit(jnp.dot, compiler_options=ONEDNN_DOTS)
        probe(jnp.ones((2, 2)), jnp.ones((2, 2))).block_until_ready()
    except jax.errors.JaxRuntimeError:  # an older jaxlib without these options
        return {}
    return dict(ONEDNN_DOTS)
