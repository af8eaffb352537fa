"""Greedy outputs are the same whether prefixes are computed, cached, evicted or preempted."""

from pcjax import SamplingParams
from tests.engine.conftest import GREEDY, PAGE_SIZE, SMALL_CACHE_PAGES, make_engine


def _tokens(outputs):
    return [o.token_ids for o in outputs]


def test_cold_and_warm_cache_match_no_cache(prompts, reference_tokens):
    engine = make_engine()
    cold = engine.generate(prompts, GREEDY, use_tqdm=False)
    warm = engine.generate(prompts, GREEDY, use_tqdm=False)
    assert _tokens(cold) == reference_tokens
    assert _tokens(warm) == reference_tokens
    # warm: every prompt's full pages (but never the last token) come from the cache
    for out in warm:
        assert out.num_cached_tokens >= (len(out.prompt_token_ids) - 1) // PAGE_SIZE * PAGE_SIZE
    stats = engine.stats()
    assert stats["prefix_cache_hit_tokens"] == sum(o.num_cached_tokens for o in cold + warm)


def test_computed_prompt_tokens_are_total_minus_hits(prompts):
    engine = make_engine()
    outputs = engine.generate(prompts + prompts, GREEDY, use_tqdm=False)
    total = sum(len(o.prompt_token_ids) for o in outputs)
    hits = sum(o.num_cached_tokens for o in outputs)
    assert hits > 0
    assert engine.stats()["computed_prompt_tokens"] == total - hits


def test_eviction_every_step_keeps_outputs(prompts, reference_tokens):
    # finished prompts fill the small cache at once, so admissions keep evicting
    engine = make_engine(num_pages=SMALL_CACHE_PAGES, max_num_seqs=2)
    outputs = engine.generate(prompts * 2, GREEDY, use_tqdm=False)
    assert _tokens(outputs) == reference_tokens * 2
    assert engine.stats()["evicted_pages"] > 0


def test_preemption_keeps_outputs(prompts, reference_tokens):
    # four running sequences grow past what the small cache holds
    engine = make_engine(num_pages=SMALL_CACHE_PAGES, max_num_seqs=4)
    long = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    ref = make_engine(enable_prefix_caching=False)
    expected = _tokens(ref.generate(prompts, long, use_tqdm=False))
    outputs = engine.generate(prompts, long, use_tqdm=False)
    assert engine.stats()["preemptions"] > 0
    assert _tokens(outputs) == expected


def test_chunked_prefill_keeps_outputs(prompts, reference_tokens):
    engine = make_engine(max_num_batched_tokens=8, max_num_seqs=4)
    assert _tokens(engine.generate(prompts, GREEDY, use_tqdm=False)) == reference_tokens


def test_multi_turn_reuses_generated_tokens(prompts):
    engine = make_engine()
    first = engine.generate([prompts[0]], GREEDY, use_tqdm=False)[0]
    follow_up = first.prompt_token_ids + first.token_ids + [5, 6, 7]
    second = engine.generate([follow_up], GREEDY, use_tqdm=False)[0]
    # everything but the last generated token had its KV written, in whole pages
    written = len(first.prompt_token_ids) + len(first.token_ids) - 1
    assert second.num_cached_tokens == written // PAGE_SIZE * PAGE_SIZE
