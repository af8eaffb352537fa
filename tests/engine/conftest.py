"""Shared engine fixtures: small prompt sets with shared prefixes, on the pcjax-tiny preset."""

import numpy as np
import pytest

from pcjax import Engine, SamplingParams

PAGE_SIZE = 4
MAX_MODEL_LEN = 96
# 25 usable pages: one full-length sequence (24 pages) fits, four growing ones do not. Tests that
# need eviction or preemption share this size (and so their compiled programs).
SMALL_CACHE_PAGES = 26


def make_engine(**overrides) -> Engine:
    """A pcjax-tiny engine in debug mode (NaN-filled free pages, integrity checked every step)."""
    kwargs = dict(
        model="pcjax-tiny",
        page_size=PAGE_SIZE,
        max_model_len=MAX_MODEL_LEN,
        num_pages=SMALL_CACHE_PAGES * 2,
        max_num_seqs=4,
        max_num_batched_tokens=64,
        debug=True,
        attention_impl="reference",
    )
    kwargs.update(overrides)
    return Engine(**kwargs)


def shared_prefix_prompts(seed: int, num: int = 6) -> list[list[int]]:
    """Prompts in two families sharing prefixes of different lengths, plus one unrelated."""
    rng = np.random.default_rng(seed)
    a = rng.integers(3, 200, 13).tolist()
    b = rng.integers(3, 200, 9).tolist()
    prompts = []
    for i in range(num):
        base = a if i % 2 == 0 else b
        prompts.append(base + rng.integers(3, 200, 2 + i).tolist())
    prompts.append(rng.integers(3, 200, 7).tolist())
    return prompts


GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def prompts():
    return shared_prefix_prompts(0)


@pytest.fixture(scope="module")
def reference_tokens(prompts):
    """Greedy tokens with prefix caching off: what every other configuration must reproduce."""
    engine = make_engine(enable_prefix_caching=False)
    return [o.token_ids for o in engine.generate(prompts, GREEDY, use_tqdm=False)]
