"""Victim order of each policy on hand-made sequences, name resolution, and the hook protocol."""

import pytest

from pcjax.cache.policies import (
    EvictionPolicy,
    FIFOPolicy,
    LFUPolicy,
    LRUPolicy,
    make_policy,
)
from tests.cache.tree_utils import SizeKeyedPolicy, cache_request, check, make_tree


def eviction_order(tree, names):
    """Evicts one page at a time and returns the cached names in the order they went."""
    order = []
    while tree.num_cached_pages:
        present = {n for n in names if _cached(tree, n)}
        tree.evict(1)
        check(tree)
        order += [n for n in sorted(present) if not _cached(tree, n)]
    return order


def _cached(tree, name):
    """Whether the one-page key ``name`` is cached (looks at the tree, records no access)."""
    return (name,) in tree.root.children


def build(policy, accesses):
    """Caches one-page keys "a", "b", "c" in that order, then matches the keys in ``accesses``."""
    tree = make_tree(1, policy=policy)
    for name in "abc":
        cache_request(tree, name)
    for name in accesses:
        assert tree.match(name).num_tokens == 1
    return tree


@pytest.mark.parametrize(
    "policy, accesses, expected",
    [
        (LRUPolicy(), "", "abc"),
        (LRUPolicy(), "a", "bca"),  # "a" used last
        (LRUPolicy(), "cab", "cab"),
        (FIFOPolicy(), "cab", "abc"),  # insertion order, whatever the accesses
        (FIFOPolicy(), "aaa", "abc"),
        (LFUPolicy(), "bba", "cab"),  # hits: c 0, a 1, b 2
        (LFUPolicy(), "ab", "cab"),  # a, b tie on one hit: the least recent ("a") first
        (LFUPolicy(), "ba", "cba"),
    ],
)
def test_victim_order(policy, accesses, expected):
    tree = build(policy, accesses)
    assert "".join(eviction_order(tree, "abc")) == expected


def test_lru_trims_the_least_recent_leaf_and_keeps_the_fresh_one_whole():
    tree = make_tree(1)
    cache_request(tree, "xyz")
    cache_request(tree, "abc")
    tree.match("abc")
    assert tree.evict(2) == 2
    check(tree)
    assert tree.match("xyz").num_tokens == 1 and tree.match("abc").num_tokens == 3


@pytest.mark.parametrize(
    "name, cls", [("lru", LRUPolicy), ("FIFO", FIFOPolicy), ("Lfu", LFUPolicy)]
)
def test_make_policy_resolves_names(name, cls):
    policy = make_policy(name)
    assert type(policy) is cls and policy.name == name.lower()
    assert make_policy(name) is not policy  # fresh objects: policies may hold state


def test_the_tree_takes_a_policy_name_and_defaults_to_lru():
    assert type(make_tree(1, policy="fifo").policy) is FIFOPolicy
    assert type(make_tree(1).policy) is LRUPolicy
    with pytest.raises(ValueError, match="unknown eviction policy"):
        make_tree(1, policy="no_such_policy")


@pytest.mark.parametrize("name", ["belady", "", None, 3])
def test_make_policy_rejects_unknown_names(name):
    with pytest.raises(ValueError, match="unknown eviction policy"):
        make_policy(name)


class RecordingPolicy(LRUPolicy):
    """Records every hook call: what an SLRU / S3-FIFO / Belady policy would build on."""

    def __init__(self):
        self.calls = []

    def on_insert(self, node, clock):
        self.calls.append(("insert", node.key, clock))

    def on_access(self, node, clock):
        self.calls.append(("access", node.key, clock))

    def on_split(self, prefix, suffix):
        self.calls.append(("split", prefix.key, suffix.key))

    def on_evict(self, node, num_pages, clock):
        self.calls.append(("evict", node.key, num_pages))


def test_hooks_are_called_with_the_nodes_involved():
    policy = RecordingPolicy()
    tree = make_tree(1, policy=policy)
    tree.insert("ab", tree.pool.allocate(2))
    tree.match("ax")
    tree.evict(1)
    assert policy.calls == [
        ("insert", ("a", "b"), 1),
        ("access", ("a", "b"), 1),
        ("split", ("a",), ("b",)),
        ("access", ("a",), 2),
        ("evict", ("b",), 1),
    ]
    check(tree)


def test_base_policy_hooks_are_no_ops_and_key_must_be_defined():
    policy = EvictionPolicy()
    assert policy.on_access(None, 0) is None
    with pytest.raises(NotImplementedError):
        policy.key(None)


class DriftingPolicy(EvictionPolicy):
    """Breaks the key contract: its key changes without the tree re-pushing the node."""

    name = "drifting"

    def __init__(self):
        self.epoch = 0

    def key(self, node):
        return self.epoch


def test_integrity_catches_a_policy_whose_key_changes_behind_the_trees_back():
    policy = DriftingPolicy()
    tree = make_tree(1, policy=policy)
    cache_request(tree, "ab")
    policy.epoch += 1
    with pytest.raises(AssertionError, match="stale heap key"):
        tree.check_integrity()


def test_a_size_keyed_policy_is_re_keyed_on_split_and_trim():
    tree = make_tree(1, policy=SizeKeyedPolicy())
    cache_request(tree, "abcd")
    cache_request(tree, "xyz")
    tree.match("abq")  # splits "abcd": the leaf "cd" now holds 2 pages, fewer than "xyz"
    check(tree)
    assert tree.evict(1) == 1  # the largest leaf ("xyz") loses its tail
    check(tree)
    assert tree.match("xyz").num_tokens == 2 and tree.match("abcd").num_tokens == 4
