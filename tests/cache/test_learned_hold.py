"""learned_hold: use-count classes across evictions, the knapsack refit, and the keys it gives."""

import pytest

from pcjax.cache.learned_hold import BIN_EDGES, LearnedHoldPolicy, _bin, _one_hold
from tests.cache.test_policies import eviction_order
from tests.cache.test_policies_extra import build


def test_a_class_counts_the_uses_of_a_page_across_evictions():
    policy = LearnedHoldPolicy()
    tree = build(policy, "+a ?a ?a +b")  # "a": inserted and hit twice, "b": inserted
    assert tree.root.children[("a",)].policy_data[3] == 3
    assert tree.root.children[("b",)].policy_data[3] == 1

    # Capacity 2; the clock ticks once per match and per insert. "a" is inserted at tick 2, "+c"
    # evicts it, and "+a" inserts it again at tick 8: a return after 6 ticks of a class-1 page.
    policy = LearnedHoldPolicy()
    tree = build(policy, "+a +b +c +a", capacity=2)
    assert tree.root.children[("a",)].policy_data[3] == 2
    assert policy.stats[1].returns[_bin(6)] == 1 and policy.stats[1].return_ages[_bin(6)] == 6
    assert policy.stats[1].opened == 3 and policy.stats[2].opened == 1


def test_lru_until_the_first_refit_and_a_diverged_from_branch_first():
    assert eviction_order(build(LearnedHoldPolicy(), "+a +b"), "ab") == ["a", "b"]
    tree = build(LearnedHoldPolicy(), "+xyz +abc ?abq")  # the match splits "abc" after "ab"
    tree.evict(1)  # "c", left behind and never used again, goes before the older "xyz"
    assert tree.match("abc").num_tokens == 2 and tree.match("xyz").num_tokens == 3


def test_refit_spends_the_cache_on_the_classes_by_hits_per_room():
    """100 ticks; one page of room. Class 2: 10 intervals, all back after 8 ticks. Class 1: 100
    intervals, 10 back after 8 ticks. Holding to the edge T of 8's bin (2**(13/4) = 9.51):
    class 2 costs 80 / 100 = 0.8 for 0.1 hits; class 1 costs (80 + 90 * T) / 100 = 9.36 for
    0.1. Class 2 is held; the 0.2 of room left holds a 0.2 / 9.36 share of class 1."""
    policy = LearnedHoldPolicy()
    policy.start, policy.most_cached = 0, 1
    edge = BIN_EDGES[_bin(8)]
    for cls, opened in ((1, 100), (2, 10)):
        policy.stats[cls].opened = opened
        policy.stats[cls].returns[_bin(8)] = 10
        policy.stats[cls].return_ages[_bin(8)] = 80
    policy.refit(clock=100)
    share = 0.2 / ((80 + 90 * edge) / 100)
    assert policy.holds == {2: (0.0, edge, 1.0), 1: (0.0, edge, pytest.approx(share))}


def test_a_class_on_the_margin_holds_all_its_leaves_in_between():
    assert _one_hold((10.0, 20.0, 0.25)) == (12.5, 12.5, 1.0)
    assert _one_hold((0.0, 20.0, 0.25)) == (0.0, 20.0, 0.25)  # an admission share stays one


def test_keys_give_each_class_its_hold():
    policy = LearnedHoldPolicy()
    policy.holds = {2: (50.0, 50.0, 1.0)}  # class 1 is not held at all
    tree = build(policy, "+a ?a +b")
    a, b = tree.root.children[("a",)], tree.root.children[("b",)]
    assert a.policy_data[0] == (1, a.last_access + 50.0)
    assert b.policy_data[0] == (0, b.last_access)
    assert eviction_order(tree, "ab") == ["b", "a"]  # "a" is older, but held


def test_adopt_takes_the_learned_state_and_scales_the_counts():
    """A policy that ran on a quarter of the lookups with a quarter of the room: its hold times
    carry over, its counts are scaled up, and a use the history holds already is not counted
    again when the live tree's nodes are handed over."""
    learned = LearnedHoldPolicy()
    tree = build(learned, "+a ?a ?a +b +c +d", capacity=2)
    learned.refit(tree.clock)
    policy = LearnedHoldPolicy()
    policy.adopt(learned, 0.25)
    assert policy.holds == learned.holds and policy.start == learned.start
    assert policy.stats[1].opened == 4 * learned.stats[1].opened
    assert policy.most_cached == 4 * learned.most_cached
    node = tree.root.children[("d",)]
    node.policy_data = None
    policy.on_insert(node, node.last_access)  # the handover: "d"'s insert is in the history
    assert policy.history == learned.history
    assert policy.stats[1].opened == 4 * learned.stats[1].opened
