"""Property: on random prefix-sharing traces no policy beats Belady's block hits, Belady never
beats the infinite cache, and every replay keeps the tree and pool consistent."""

from hypothesis import given, settings
from hypothesis import strategies as st

from pcjax.cache.policies import all_policies
from pcjax.sim.replay import replay
from pcjax.sim.trace import trace_stats
from tests.sim.hand_traces import make_trace

# prompts over a 3-letter alphabet share prefixes often; 1..5 blocks each
prompts = st.lists(st.text(alphabet="abc", min_size=1, max_size=5), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(prompts=prompts, capacity=st.integers(1, 8))
def test_no_policy_beats_belady(prompts, capacity):
    trace = make_trace(*prompts)
    best = replay(trace, capacity, "belady", check_every=1).hit_blocks
    stats = trace_stats(trace)
    assert best <= round(stats.infinite_block_hit_rate * stats.total_blocks)
    for policy in [*all_policies(), "oracle_lru"]:
        hits = replay(trace, capacity, policy, check_every=1).hit_blocks
        assert hits <= best, (policy, hits, best)


@settings(max_examples=30, deadline=None)
@given(prompts=prompts)
def test_a_cache_that_never_fills_reaches_the_infinite_bound(prompts):
    trace = make_trace(*prompts)
    stats = trace_stats(trace)
    for policy in ["lru", "deadline", "belady"]:
        r = replay(trace, stats.total_blocks, policy)
        assert r.hit_blocks == round(stats.infinite_block_hit_rate * stats.total_blocks)
