"""SLRU, S3-FIFO, GDSF and deadline: victim order on hand-made sequences, their adaptive state,
the registry, and the key contract under random operations (page sizes 1, 3 and 16; these also
run learned_hold, whose own tests are in test_learned_hold.py)."""

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize

from pcjax.cache.page_pool import PagePool
from pcjax.cache.policies import all_policies, make_policy
from pcjax.cache.policies_extra import (
    MAIN,
    PROTECTED,
    SMALL,
    DeadlinePolicy,
    GDSFPolicy,
    S3FIFOPolicy,
    SLRUPolicy,
)
from pcjax.cache.radix_tree import RadixTree
from pcjax.config import EVICTION_POLICIES
from tests.cache.test_policies import eviction_order
from tests.cache.test_radix_tree_model import CAPACITY, TreeMachine
from tests.cache.tree_utils import check, make_tree

EXTRA = ["slru", "s3fifo", "gdsf", "deadline", "learned_hold"]


def build(policy, steps, capacity=32):
    """Runs steps on a page-size-1 tree: "+x" caches the key x (evicting when short), "?x"
    matches it."""
    tree = make_tree(1, capacity, policy=policy)
    build_more(tree, steps)
    return tree


def build_more(tree, steps):
    """More steps of `build` on an existing tree."""
    for step in steps.split():
        if step[0] == "+":
            cache(tree, step[1:])
        else:
            tree.match(step[1:])
        check(tree)


def cache(tree, key):
    m = tree.match(key)
    tree.lock(m.node)
    need = len(key) - len(m.pages)
    tree.evict(max(0, need - tree.pool.num_free))
    tree.insert(key, m.pages + tree.pool.allocate(need))
    tree.unlock(m.node)


def test_slru_protects_hit_entries_by_its_window():
    policy = SLRUPolicy()
    policy.window.value = 100  # protected entries outlive 100 ticks of newer probation ones
    tree = build(policy, "+a +b ?a +c +d")
    assert tree.root.children[("a",)].policy_data[0] == PROTECTED
    assert eviction_order(tree, "abcd") == list("bcda")
    lru = build(make_policy("lru"), "+a +b ?a +c +d")
    assert eviction_order(lru, "abcd") == list("bacd")


def test_slru_window_grows_while_the_protected_segment_is_under_its_share():
    policy = SLRUPolicy(protected_share=0.8)
    build(policy, "+a +b +c +d +e +f", capacity=3)  # 3 evictions, nothing protected
    assert policy.window.value == 3 and policy.pages == [3, 0]
    policy = SLRUPolicy(protected_share=0.0)  # always over: shrinks, never below 0
    build(policy, "+a ?a +b ?b +c ?c +d", capacity=3)
    assert policy.window.value == 0


def test_s3fifo_small_queue_is_fifo_and_a_hit_moves_an_entry_to_main():
    tree = build(S3FIFOPolicy(), "+a +b +c ?a ?b ?c ?c")  # a, b, c all hit: main, LRU by access
    assert all(c.policy_data[0] == MAIN for c in tree.root.children.values())
    assert eviction_order(tree, "abc") == list("abc")
    tree = build(S3FIFOPolicy(), "+a +b +c ?c ?b ?a")  # window 0: main keys = last access
    assert eviction_order(tree, "abc") == list("cba")
    tree = build(S3FIFOPolicy(), "+a +b +c")  # never hit: insertion order
    assert all(c.policy_data[0] == SMALL for c in tree.root.children.values())
    assert eviction_order(tree, "abc") == list("abc")


def test_s3fifo_readmits_a_ghost_into_main():
    policy = S3FIFOPolicy()
    tree = build(policy, "+a +b +c", capacity=2)  # c evicts a from the small queue: a ghost
    assert len(policy.ghost) == 1
    cache(tree, "a")  # b goes; a comes back straight into main
    assert tree.root.children[("a",)].policy_data[0] == MAIN
    assert policy.pages == [1, 1]


def test_gdsf_evicts_the_least_frequent_and_inflates():
    policy = GDSFPolicy()
    tree = build(policy, "+a +b ?a ?a ?b")  # H: a = 3 (two hits), b = 2
    assert eviction_order(tree, "ab") == list("ba")
    assert policy.inflation == pytest.approx(3.0, rel=1e-3)  # the last victim's H


def test_gdsf_charges_deep_pages_more():
    # tokens_per_unit = ctx_tokens: a page's cost is 1 + its depth in units
    policy = GDSFPolicy(tokens_per_unit=8192, ctx_tokens=8192)
    tree = build(policy, "+xyz +b")  # leaf "xyz" (units 0-2): mean cost 2.5, "b": 1.5
    assert [c.policy_data[1] for c in tree.root.children.values()] == [2.5, 1.5]
    assert eviction_order(tree, "b")[:1] == ["b"]


def test_deadline_evicts_a_diverged_from_branch_first():
    # "abc" is split by a match of "abq": its tail "c" was never hit -> goes before "xyz"
    tree = build(DeadlinePolicy(), "+xyz +abc ?abq")
    tree.evict(1)
    assert tree.match("abc").num_tokens == 2 and tree.match("xyz").num_tokens == 3
    lru = build(make_policy("lru"), "+xyz +abc ?abq")
    lru.evict(1)  # LRU trims "xyz", the oldest
    assert lru.match("xyz").num_tokens == 2


def test_deadline_gives_a_proven_leaf_one_lag():
    policy = DeadlinePolicy()
    policy.lag = 10.0
    tree = build(policy, "+a ?a ?a ?a +b")  # "a" is proven (3 hits count as one proof)
    a, b = tree.root.children[("a",)], tree.root.children[("b",)]
    assert a.policy_data[0] == (1, a.last_access + 10.0)
    assert b.policy_data[0] == (1, b.last_access)
    assert eviction_order(tree, "ab") == list("ba")  # "a" is older, but proven


def test_deadline_counts_a_quick_return_after_eviction_as_a_proof():
    policy = DeadlinePolicy()
    tree = build(policy, "+a +b +c +a", capacity=2)  # "c" evicts "a", which comes back
    data = tree.root.children[("a",)].policy_data
    assert data[3] == 1 and len(policy.ghost) == 1  # "b" is the ghost now
    assert data[0] == (1, tree.root.children[("a",)].last_access + policy.lag)
    tree = build(DeadlinePolicy(), "+a +b +c +d", capacity=2)
    assert tree.root.children[("d",)].policy_data[3] == 0


def test_deadline_ghost_holds_twice_the_pages_the_cache_held():
    # capacity 2: "c", "d", "e" and "+a" evict "a", "b", "c", "d" -- four ghosts, "a" still one
    policy = DeadlinePolicy()
    tree = build(policy, "+a +b +c +d +e +a", capacity=2)
    assert tree.root.children[("a",)].policy_data[3] == 1 and len(policy.ghost) == 3
    policy = DeadlinePolicy(ghost_scale=1.0)  # two ghosts: "a" was forgotten
    tree = build(policy, "+a +b +c +d +e +a", capacity=2)
    assert tree.root.children[("a",)].policy_data[3] == 0


def test_deadline_lag_follows_the_eviction_frontier():
    policy = DeadlinePolicy(lag_ema=1.0)  # no smoothing
    # clock +1 per match and insert: "a" gets key 2, "b" 4; "+c" evicts "a" at clock 5 (its
    # match) and "+d" evicts "b" at clock 7: the frontier trails the clock by 3 ticks.
    build(policy, "+a +b +c +d", capacity=2)
    assert policy.lag == 3.0


def test_deadline_sheds_fresh_leaves_outside_the_kept_share_first():
    policy = DeadlinePolicy()
    tree = build(policy, "+a +b")
    policy.keep = 0.0  # every fresh leaf is shed from now on
    cache(tree, "c")
    c = tree.root.children[("c",)]
    assert c.policy_data[4] and c.policy_data[0] == (0, c.last_access)
    assert eviction_order(tree, "abc") == list("cab")  # the newest goes first
    policy = DeadlinePolicy()
    policy.keep = 0.0
    tree = build(policy, "+a +b")  # "a" and "b" are shed, FIFO among them
    tree.match("b")  # a hit proves "b": live again, its deadline one lag late
    b = tree.root.children[("b",)]
    assert b.policy_data[3] == 1 and b.policy_data[0] == (1, b.last_access + policy.lag)
    assert eviction_order(tree, "ab") == list("ab")


def test_deadline_steers_the_kept_share_by_the_fate_of_kept_fresh_leaves():
    policy = DeadlinePolicy(miss_target=0.25, keep_step=0.4)
    # "+c" evicts "a" and "+a" evicts "b", both kept and fresh: "a" coming back after its
    # eviction lowers keep by 0.4 * 0.75 (and is proven by the ghost); "?c" is the first hit of
    # a kept fresh leaf, caught in time: keep rises by 0.4 * 0.25; its second hit changes nothing
    tree = build(policy, "+a +b +c +a", capacity=2)
    assert policy.keep == pytest.approx(0.7)
    assert tree.root.children[("a",)].policy_data[3:] == [1, False]
    build_more(tree, "?c ?c")
    assert policy.keep == pytest.approx(0.8)
    policy = DeadlinePolicy(keep_step=4.0)  # one late return: 1 - 4 * 0.5, clamped to min_keep
    build(policy, "+a +b +c +a", capacity=2)
    assert policy.keep == 0.2


def test_deadline_keeps_every_fresh_leaf_while_returns_are_caught():
    policy = DeadlinePolicy()
    build(policy, "+a +b ?a ?b +c ?c")
    assert policy.keep == 1.0 and len(policy.kept_ghost) == 0


def test_every_engine_policy_is_registered_and_listed_in_the_config():
    assert set(all_policies()) == set(EVICTION_POLICIES)
    assert "belady" not in EVICTION_POLICIES
    for name in EVICTION_POLICIES:
        assert make_policy(name).name == name
    assert make_policy("GDSF", tokens_per_unit=512).scale == 512 / 8192
    assert make_policy("lru", tokens_per_unit=512).name == "lru"  # ignored where unused


@pytest.mark.parametrize("name", EVICTION_POLICIES)
@pytest.mark.parametrize("page_size", [1, 16])
def test_random_requests_keep_the_tree_consistent(name, page_size):
    """Engine-like traffic: shared prefixes, partial matches, locks held across evictions."""
    rng = np.random.default_rng(0)
    tree = RadixTree(PagePool(24 + 1), page_size, make_policy(name))
    prefixes = [rng.integers(0, 50, 4 * page_size).tolist() for _ in range(3)]
    held = []
    for _ in range(150):
        tokens = (
            prefixes[rng.integers(3)] + rng.integers(0, 3, rng.integers(0, 5) * page_size).tolist()
        )
        m = tree.match(tokens, max_tokens=int(rng.integers(0, len(tokens) + 1)))
        tree.lock(m.node)
        need = len(tokens) // page_size - len(m.pages)
        if tree.pool.num_free < need:
            tree.evict(need - tree.pool.num_free)
        if tree.pool.num_free >= need:
            r = tree.insert(tokens, m.pages + tree.pool.allocate(need))
            tree.pool.free(r.duplicate_pages)
            tree.lock(r.node)
            held.append(r.node)
        tree.unlock(m.node)
        if held and (len(held) > 3 or rng.random() < 0.5):
            tree.unlock(held.pop(int(rng.integers(len(held)))))
        check(tree)


class ExtraPolicyMachine(TreeMachine):
    """The radix tree's model-based state machine, run with the policies of this module."""

    @initialize(policy=st.sampled_from(EXTRA))
    def setup(self, policy):
        self.tree = RadixTree(PagePool(CAPACITY + 1), self.page_size, policy)
        self.model, self.pending, self.held = {}, [], []


def _test_case(page_size):
    machine = type(f"ExtraMachineP{page_size}", (ExtraPolicyMachine,), {"page_size": page_size})
    machine.TestCase.settings = settings(max_examples=25, stateful_step_count=40, deadline=None)
    return machine.TestCase


TestExtraP1 = _test_case(1)
TestExtraP3 = _test_case(3)
