"""The class bound (`pcjax.sim.headroom`): worked examples, its limits, refinement never hurts,
and the hindsight replay of its hold times."""

import numpy as np
import pytest

from pcjax.sim.generators import generate
from pcjax.sim.headroom import CLASSIFIERS, NEVER, class_bound, intervals
from pcjax.sim.replay import replay
from pcjax.sim.timed import replay_timed
from pcjax.sim.trace import trace_stats
from tests.sim.hand_traces import make_trace


def test_worked_example():
    """Blocks "a b a c a d a", one per request, one token each, a cache of one block.

    Intervals (start: gap): a@0: 2, a@2: 2, a@4: 2, a@6: never (1 request left), b@1: never (6
    left), c@3: never (4), d@5: never (2). The cache is full from request 0: budget 1 * 7 = 7.

    ``none``, one class: holding every interval for T = 2 catches the 3 returns at a cost of
    3 * 2 + (1 + 2 + 2 + 2) = 13, so 7 / 13 of that: 21 / 13 tokens of 7.

    ``uses``: a's intervals are classes 2, 3 (one return each, cost 2: slope 1/2) and 4 (no
    return); class 1 is a@0 (return at cost 2) with b, c, d (2 each while T = 2): slope 1/8.
    Classes 2 and 3 take 4 of the budget, class 1 gets 3/8 of its segment: 2 + 3/8 tokens.
    """
    trace = make_trace("a", "b", "a", "c", "a", "d", "a")
    iv = intervals(trace)
    assert iv.gap.tolist() == [2, NEVER, 2, NEVER, 2, NEVER, NEVER]
    assert iv.uses.tolist() == [1, 1, 2, 1, 3, 1, 4]
    assert iv.prev_gap.tolist() == [0, 0, 2, 0, 2, 0, 2]

    none = class_bound(iv, CLASSIFIERS["none"](iv), capacity_blocks=1)
    assert none.fill_request == 0
    assert none.hit_tokens == pytest.approx(21 / 13)
    assert none.token_hit_rate == pytest.approx(21 / 13 / 7)
    assert none.holds == {0: (0, 2, pytest.approx(7 / 13))}

    uses = class_bound(iv, CLASSIFIERS["uses"](iv), capacity_blocks=1)
    assert uses.hit_tokens == pytest.approx(2 + 3 / 8)
    assert uses.holds == {2: (0, 2, 1.0), 3: (0, 2, 1.0), 1: (0, 2, pytest.approx(3 / 8))}


def test_warm_up_hits_are_free_and_the_budget_starts_when_the_cache_fills():
    """Capacity 2 in "a b a c b": "a" and "b" fill it at request 1, so a@0 (back at request 2)
    starts before the fill and is a free hit; the later intervals share a budget of 2 * (5 - 1)
    = 8 block-requests."""
    trace = make_trace("a", "b", "a", "c", "b")
    iv = intervals(trace)
    bound = class_bound(iv, CLASSIFIERS["none"](iv), capacity_blocks=2)
    assert bound.fill_request == 1
    # early: a@0 (hit). late: b@1 back after 3, a@2 never (3 left), c@3 never (2 left), b@4
    # never (1 left). T = 3 catches b@1 at cost 3 + 3 + 2 + 1 = 9 > 8: 8/9 of one token.
    assert bound.hit_tokens == pytest.approx(1 + 8 / 9)


@pytest.mark.parametrize("name", ["chat", "agent", "mixed"])
def test_bounded_by_the_infinite_cache_and_equal_to_it_when_nothing_is_evicted(name):
    trace = generate(name, 150, seed=3, block_tokens=16)
    iv = intervals(trace)
    infinite = trace_stats(trace).infinite_token_hit_rate
    for classify in CLASSIFIERS.values():
        classes = classify(iv)
        for capacity in (8, 64, 512):
            assert class_bound(iv, classes, capacity).token_hit_rate <= infinite + 1e-12
        unbounded = class_bound(iv, classes, capacity_blocks=int(iv.fill[-1]) + 1)  # no eviction
        assert unbounded.token_hit_rate == pytest.approx(infinite)


@pytest.mark.parametrize("seed", range(4))
def test_finer_classes_never_lower_the_bound(seed):
    """Each classifier refines the one before it, and any hold-time mix for a class can be
    applied to each of its parts, so the bound can only grow."""
    trace = generate("mixed", 200, seed=seed, block_tokens=16)
    iv = intervals(trace)
    rng = np.random.default_rng(seed)
    for capacity in rng.integers(4, 400, size=3):
        rates = [class_bound(iv, f(iv), int(capacity)).token_hit_rate for f in CLASSIFIERS.values()]
        assert rates == sorted(rates)
        split = CLASSIFIERS["uses"](iv) * 2 + rng.integers(0, 2, size=len(iv.start))
        assert class_bound(iv, split, int(capacity)).token_hit_rate >= rates[1] - 1e-12


def test_rejects_classes_of_the_wrong_length():
    iv = intervals(make_trace("ab", "ab"))
    with pytest.raises(ValueError, match="3 classes for 4 intervals"):
        class_bound(iv, np.zeros(3, np.int64), 1)


def test_hindsight_replay_of_a_bound_on_a_cycle():
    """ "a b c a b c", capacity 2: LRU thrashes (0 hits), Belady bypasses "c" and hits "a" and
    "b" (2). The ``uses`` bound counts a@0 as a free warm-up hit (the cache fills at request 1)
    and holds class 1 (b@1, c@2, back after 3 requests, cost 6 of a budget of 2 * 5) for 3
    hits: above Belady, as the average-capacity relaxation allows. Replayed for real, class 1
    held 3 requests and class 2 not at all: "c" evicts "a" (earliest deadline), "a" evicts "b",
    "b" evicts "a" (class 2, not held), and "c" hits: 1."""
    trace = make_trace("a", "b", "c", "a", "b", "c")
    iv = intervals(trace)
    bound = class_bound(iv, CLASSIFIERS["uses"](iv), capacity_blocks=2)
    assert bound.hit_tokens == 3 and bound.holds == {1: (0, 3, 1.0)}
    hits = {p: replay(trace, 2, p, check_every=1).hit_blocks for p in ("lru", "belady")}
    hindsight = replay(trace, 2, "hindsight:uses", check_every=1)
    assert (hits["lru"], hindsight.hit_blocks, hits["belady"]) == (0, 1, 2)
    assert hindsight.policy == "hindsight:uses"


def test_hindsight_needs_a_known_classifier_and_sequential_replay():
    trace = make_trace("a", "b")
    with pytest.raises(ValueError, match="unknown classifier 'nope'"):
        replay(trace, 2, "hindsight:nope")
    with pytest.raises(ValueError, match="sequential replay only"):
        replay_timed(trace, 2, "hindsight:uses")
