"""The engine's greedy tokens equal Hugging Face transformers' on the golden checkpoints.

The references (tests/golden/<family>/reference.json) were produced by transformers'
`generate(do_sample=False)` on torch; see tests/golden/make_golden.py. Each family runs with the
prefix cache off, then twice with it on (cold, then warm: the second run reuses the prompt's
pages), and with a page size that is not a power of two.
"""

import json
import pathlib

import jax
import pytest

from pcjax import Engine, SamplingParams
from pcjax.kernels import cpu_native_available

GOLDEN = pathlib.Path(__file__).parents[1] / "golden"
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "llama_sharded"]


def _reference(family: str) -> dict:
    return json.loads((GOLDEN / family / "reference.json").read_text())


@pytest.mark.parametrize("family", FAMILIES)
def test_engine_greedy_equals_transformers(family):
    ref = _reference(family)
    params = SamplingParams(temperature=0, max_tokens=len(ref["greedy"]), ignore_eos=True)
    prompt = ref["prompt_ids"]
    results = {}
    for name, kwargs in {
        "off": dict(enable_prefix_caching=False),
        "on": dict(enable_prefix_caching=True),
        "page5": dict(enable_prefix_caching=True, page_size=5),
    }.items():
        engine = Engine(
            model=str(GOLDEN / family),
            max_model_len=128,
            max_num_seqs=2,
            num_pages=64,
            attention_impl="reference",
            debug=True,
            **kwargs,
        )
        cold = engine.generate([prompt], params, use_tqdm=False)[0]
        warm = engine.generate([prompt], params, use_tqdm=False)[0]
        results[name] = (cold.token_ids, warm.token_ids, warm.num_cached_tokens)
    for name, (cold, warm, cached) in results.items():
        assert cold == ref["greedy"], name
        assert warm == ref["greedy"], name
        if name != "off":
            assert cached > 0, name


@pytest.mark.parametrize(
    ("impl", "resolved"),
    [
        ("pallas", "pallas_tpu"),
        ("cpu_xla", "cpu_xla"),
        ("auto", "cpu_native" if cpu_native_available() else "cpu_xla"),
    ],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_engine_kernel_attention_equals_reference(family, impl, resolved):
    """The Pallas kernel path (interpret mode on CPU), the XLA CPU path (jnp decode + that kernel
    for prefill) and CPU's auto choice (the native kernels: attention, and the skinny matmul for
    decode steps) reproduce the references cold and warm."""
    ref = _reference(family)
    params = SamplingParams(temperature=0, max_tokens=len(ref["greedy"]), ignore_eos=True)
    engine = Engine(
        model=str(GOLDEN / family),
        max_model_len=128,
        max_num_seqs=2,
        num_pages=64,
        attention_impl=impl,
        debug=True,
    )
    cold = engine.generate([ref["prompt_ids"]], params, use_tqdm=False)[0]
    warm = engine.generate([ref["prompt_ids"]], params, use_tqdm=False)[0]
    assert engine.attention_impl == resolved
    assert cold.token_ids == ref["greedy"]
    assert warm.token_ids == ref["greedy"]
    assert warm.num_cached_tokens > 0


@pytest.mark.accelerator
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the Pallas Triton backend's
@pytest.mark.parametrize("page_size", [16, 5])
@pytest.mark.parametrize("family", FAMILIES)
def test_engine_pallas_on_device_equals_transformers(family, page_size):
    """On a GPU/TPU: the platform's compiled Pallas kernel reproduces the references cold and
    warm, in full f32 (the device's default f32 matmuls are TF32 on recent GPUs; the references
    are IEEE f32)."""
    ref = _reference(family)
    params = SamplingParams(temperature=0, max_tokens=len(ref["greedy"]), ignore_eos=True)
    with jax.default_matmul_precision("highest"):
        engine = Engine(
            model=str(GOLDEN / family), max_model_len=128, max_num_seqs=2, num_pages=64,
            attention_impl="pallas", page_size=page_size, debug=True,
        )  # fmt: skip
        cold = engine.generate([ref["prompt_ids"]], params, use_tqdm=False)[0]
        warm = engine.generate([ref["prompt_ids"]], params, use_tqdm=False)[0]
    assert engine.attention_impl in ("pallas_gpu", "pallas_tpu")
    assert cold.token_ids == ref["greedy"]
    assert warm.token_ids == ref["greedy"]
    assert warm.num_cached_tokens > 0
