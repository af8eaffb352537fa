"""The policy selector: it follows the candidate whose shadow cache does better, falls back to
LRU on weak evidence, keeps the live tree consistent across switches, and samples by trunk."""

import numpy as np
import pytest

from pcjax.cache.adaptive import AdaptivePolicy, Evidence, ShadowCache, sample_point, trunk_pages
from pcjax.cache.page_pool import PagePool
from pcjax.cache.policies import make_policy
from pcjax.cache.radix_tree import RadixTree
from pcjax.sim.replay import SimCache, replay
from pcjax.sim.trace import BlockChainer, Request, Trace


def hot_and_scan_trace(rounds: int = 120) -> Trace:
    """Four hot 2-block prompts, each asked twice in a row and then followed by three one-off
    2-block scans: every hot prompt comes back after 32 other blocks, so LRU on 10 blocks never
    keeps it till the next round, while LFU keeps it (the repeat hits it once)."""
    chainer, requests = BlockChainer(), []
    for r in range(rounds):
        for h in range(4):
            prompts = [(f"hot{h}", "x")] * 2 + [(f"scan{r}.{h}.{s}", "y") for s in range(3)]
            for p in prompts:
                requests.append(Request(float(len(requests)), 2, 0, chainer.chain(p)))
    return Trace("hot_and_scan", 1, requests)


def selector(**kw) -> AdaptivePolicy:
    kw = dict(candidates=("lru", "lfu"), min_lookups=20, decide_every=4, half_life=100) | kw
    return AdaptivePolicy(**kw)


def test_it_follows_the_candidate_that_clearly_wins():
    trace = hot_and_scan_trace()
    lru, lfu = (replay(trace, 10, p).hit_blocks for p in ("lru", "lfu"))
    assert lfu > lru + 600
    policy = selector()
    hits = replay(trace, 10, policy, check_every=7).hit_blocks
    assert policy.active_name == "lfu" and policy.switches == 1
    assert policy.leads()["lfu"] > 0.15 and policy.leads()["lru"] == 0
    assert hits > lfu - 150  # it switched early


def test_with_no_clear_winner_it_stays_with_lru():
    rng = np.random.default_rng(0)  # uniform random prompts: every policy is about as good
    chainer = BlockChainer()
    prompts = [tuple(rng.integers(0, 6, 3).tolist()) for _ in range(600)]
    trace = Trace("uniform", 1, [Request(0.0, 3, 0, chainer.chain(p)) for p in prompts])
    policy = selector(candidates=("lru", "fifo"), margin=0.05)
    replay(trace, 20, policy, check_every=50)
    assert policy.active_name == "lru" and policy.switches == 0


def test_switching_keeps_the_live_tree_consistent():
    """Forces a switch after every request, through every candidate, mid-replay."""
    rng = np.random.default_rng(1)
    chainer = BlockChainer()
    policy = AdaptivePolicy(candidates=("lru", "deadline", "learned_hold", "gdsf"))
    cache = SimCache(12, policy)
    names = policy.candidates
    for i in range(300):
        ids = chainer.chain(rng.integers(0, 3, int(rng.integers(1, 6))).tolist())
        m = cache.lookup(ids)
        cache.release(cache.admit(ids, m, len(ids) - len(m.pages)))
        policy._follow(names[i % len(names)], cache.tree)
        assert type(policy.active).name == names[i % len(names)]
        cache.check()
    assert policy.switches >= 300


def test_a_switch_adopts_what_the_winners_shadow_learned():
    """At rate 1 the shadows see every lookup; a forced switch hands the live tree to a
    candidate that starts with its shadow's lag (deadline) or holds and use counts (learned_hold),
    each page of the live tree counted once."""
    trace = hot_and_scan_trace(200)
    policy = AdaptivePolicy(candidates=("deadline", "learned_hold"), shadow_pages=64)
    cache = SimCache(10, policy)
    for r in trace.requests:
        m = cache.lookup(r.block_ids)
        cache.release(cache.admit(r.block_ids, m, len(r.block_ids) - len(m.pages)))
    deadline, held = (shadow.tree.policy for shadow in policy.shadows[1:])
    assert policy.rate == 1 and deadline.lag > 0 and held.holds is not None

    policy._follow("deadline", cache.tree)
    assert (policy.active.lag, policy.active.keep) == (deadline.lag, deadline.keep)
    policy._follow("learned_hold", cache.tree)
    assert policy.active.holds == held.holds and policy.active.start == held.start
    assert policy.active.history == held.history  # the live pages are the shadow's: no new uses
    assert policy.active.stats[2].returns == held.stats[2].returns
    cache.check()


def test_a_shadow_runs_on_the_live_clock():
    shadow = ShadowCache(make_policy("lru"), 1, 8)
    assert shadow.reference((1, 2), 8, clock=1000) == 0
    assert shadow.tree.clock >= 1000
    assert shadow.reference((1, 2, 3), 8, clock=5) == 2  # never moved back
    assert shadow.tree.root.children[(1,)].last_access > 1000


def test_shadows_stay_within_their_bound():
    trace = hot_and_scan_trace(200)
    policy = selector(shadow_pages=4)
    replay(trace, 40, policy)
    assert policy.rate == 4 / 40
    for shadow in policy.shadows:
        assert shadow.tree.num_cached_pages <= 4
        shadow.tree.check_integrity()


def test_trunk_is_the_shared_prompt_plus_one_page():
    tree = RadixTree(PagePool(20), 1, "lru")
    for key in ["sab", "scd", "sce"]:
        m = tree.match(tuple(key))
        tree.insert(tuple(key), m.pages + tree.pool.allocate(3 - len(m.pages)))
    assert trunk_pages(tree, tuple("sabzz"), 99) == 2  # "s" branches: "s" + "a"
    assert trunk_pages(tree, tuple("sxyz"), 99) == 2
    assert trunk_pages(tree, tuple("sabzz"), 1) == 1
    assert trunk_pages(tree, tuple("q"), 99) == 1
    alone = RadixTree(PagePool(20), 1, "lru")
    alone.insert(tuple("abc"), alone.pool.allocate(3))
    assert trunk_pages(alone, tuple("abcde"), 99) == 1  # nothing branches: the first page


def test_paired_evidence():
    ev = Evidence(2, half_life=1e9)
    for a, b in [(3, 1), (4, 2), (5, 2), (3, 2)] * 10:
        ev.add([a, b], 10)
    assert abs(ev.lead(0, 1) - 2.0 / 10) < 1e-9
    assert ev.z(0, 1) > 5 and ev.z(1, 0) < -5
    assert ev.z(0, 0) == 0.0


def test_it_is_registered_with_the_block_size():
    policy = make_policy("adaptive", tokens_per_unit=512)
    assert isinstance(policy, AdaptivePolicy) and policy.tokens_per_unit == 512


def test_deadline_starts_and_gives_way_to_lru_without_evidence():
    """Lookups that never hash into the sample (one shared trunk, outside the rate): after
    ``patience`` times the lookups in which ``min_lookups`` samples were expected, LRU."""
    policy = AdaptivePolicy(min_lookups=10, patience=2.0, shadow_pages=4)
    assert policy.active_name == "deadline"
    chainer = BlockChainer()
    base = next(  # a first block whose sample point lies above any rate used here
        b for b in range(1000) if sample_point(tuple(chainer.chain([b])[:1])) > 0.9
    )
    cache = SimCache(40, policy)
    ids = chainer.chain([base, 7])
    for i in range(200):  # the same prompt again and again: its trunk is its first block
        m = cache.lookup(ids)
        cache.release(cache.admit(ids, m, len(ids) - len(m.pages)))
        if policy.lookups * policy.rate < 2.0 * 10:
            assert policy.active_name == "deadline", i
    assert policy.sampled == 0 and policy.active_name == "lru" and policy.switches == 1
    with pytest.raises(ValueError, match="not among the candidates"):
        AdaptivePolicy(candidates=("lru",), start="deadline")
