"""The host tier keeps greedy outputs exact: prefixes served from device, host or recomputed.

Engines run in debug mode, so after every step the pool, the tree (both tiers) and the host slot
pool are checked, and freed device pages and host slots are NaN-filled: a copy that read or wrote
the wrong page would change the tokens.
"""

import pytest

from pcjax import SamplingParams
from tests.engine.conftest import GREEDY, SMALL_CACHE_PAGES, make_engine

PAGE_BYTES = 2048  # pcjax-tiny, page_size 4, float32: 2 layers x K, V x 4 x 2 x 16 x 4 bytes


def swap_space(num_slots: int) -> float:
    """GB for ``num_slots`` host slots (slot 0, unused, included)."""
    return (num_slots + 0.5) * PAGE_BYTES / 1e9


def _tokens(outputs):
    return [o.token_ids for o in outputs]


def _delta(engine, before: dict, key: str) -> int:
    return engine.stats()[key] - before[key]


@pytest.mark.parametrize("write_policy", ["write_back", "write_through"])
def test_device_host_and_recompute_give_the_same_tokens(prompts, reference_tokens, write_policy):
    engine = make_engine(swap_space=swap_space(64), write_policy=write_policy)
    tree = engine.kv.cache
    assert _tokens(engine.generate(prompts, GREEDY, use_tqdm=False)) == reference_tokens
    assert engine.stats()["host_bytes_capacity"] == 64 * PAGE_BYTES <= 64.5 * PAGE_BYTES

    before = engine.stats()  # served from device
    assert _tokens(engine.generate(prompts, GREEDY, use_tqdm=False)) == reference_tokens
    assert _delta(engine, before, "prefix_cache_hit_tokens") > 0
    assert _delta(engine, before, "prefix_cache_host_hit_tokens") == 0

    tree.evict(tree.num_evictable_pages)  # everything to the host
    engine.kv.flush()
    assert tree.num_cached_pages == 0 and tree.num_host_pages > 0
    before = engine.stats()  # served from host
    outputs = engine.generate(prompts, GREEDY, use_tqdm=False)
    assert _tokens(outputs) == reference_tokens
    host_hits = _delta(engine, before, "prefix_cache_host_hit_tokens")
    assert host_hits > 0 and _delta(engine, before, "swapped_in_pages") * 4 == host_hits
    assert _delta(engine, before, "computed_prompt_tokens") == sum(
        len(o.prompt_token_ids) - o.num_cached_tokens for o in outputs
    )

    tree.reset()  # nowhere: recomputed
    assert tree.num_cached_pages == tree.num_host_pages == 0
    before = engine.stats()
    assert _tokens(engine.generate(prompts, GREEDY, use_tqdm=False)) == reference_tokens
    assert _delta(engine, before, "prefix_cache_hit_tokens") < before["prefix_cache_hit_tokens"]
    assert _delta(engine, before, "prefix_cache_host_hit_tokens") == 0
    stats = engine.stats()
    assert stats["swapped_out_bytes"] == stats["swapped_out_pages"] * PAGE_BYTES > 0


@pytest.mark.parametrize(("host_slots", "write_policy"), [(64, "write_back"), (6, "write_through")])
def test_eviction_every_step_with_a_host_tier_keeps_outputs(
    prompts, reference_tokens, host_slots, write_policy
):
    # as test_eviction_every_step_keeps_outputs, with victims going to a roomy or tiny host store
    engine = make_engine(
        num_pages=SMALL_CACHE_PAGES,
        max_num_seqs=2,
        swap_space=swap_space(host_slots),
        write_policy=write_policy,
    )
    outputs = engine.generate(prompts * 2, GREEDY, use_tqdm=False)
    assert _tokens(outputs) == reference_tokens * 2
    stats = engine.stats()
    assert stats["evicted_pages"] > 0 and stats["swapped_out_pages"] > 0
    assert stats["host_pages"] <= host_slots
    assert (
        stats["host_bytes_in_use"] <= stats["host_bytes_capacity"] <= swap_space(host_slots) * 1e9
    )
    if host_slots == 64:
        assert stats["prefix_cache_host_hit_tokens"] > 0


def test_preemption_with_a_host_tier_keeps_outputs(prompts):
    engine = make_engine(num_pages=SMALL_CACHE_PAGES, max_num_seqs=4, swap_space=swap_space(64))
    long = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    expected = _tokens(make_engine(enable_prefix_caching=False).generate(prompts, long, False))
    outputs = engine.generate(prompts, long, use_tqdm=False)
    stats = engine.stats()
    assert stats["preemptions"] > 0 and stats["prefix_cache_host_hit_tokens"] > 0
    # victims go out in one batch per step, or per load within the step (offloads precede loads)
    assert 0 < stats["swap_out_calls"] <= stats["num_steps"] + stats["swap_in_calls"]
    assert _tokens(outputs) == expected


def test_swap_space_too_small_for_one_page_is_rejected():
    with pytest.raises(ValueError, match="swap_space"):
        make_engine(swap_space=PAGE_BYTES / 1e9)


@pytest.mark.parametrize("policy", ["slru", "s3fifo", "gdsf", "deadline", "learned_hold"])
def test_stateful_policies_with_a_host_tier_keep_outputs(prompts, reference_tokens, policy):
    """Size- and state-aware policies also rank host-only nodes (no device pages)."""
    engine = make_engine(
        num_pages=SMALL_CACHE_PAGES,
        max_num_seqs=2,
        eviction_policy=policy,
        swap_space=swap_space(64),
    )
    before = engine.stats()
    outputs = engine.generate(prompts * 2, GREEDY, use_tqdm=False)
    assert _tokens(outputs) == reference_tokens * 2
    assert _delta(engine, before, "swapped_out_pages") > 0
