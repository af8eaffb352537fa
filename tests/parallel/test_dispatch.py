"""Replica dispatch (host only): prefix affinity against load, as the module docstring states;
requests stay on their replica; the tree is not touched by asking it (`RadixTree.peek`)."""

import numpy as np
import pytest

from pcjax.cache.page_pool import PagePool
from pcjax.cache.radix_tree import RadixTree
from pcjax.engine.kv_manager import KVManager
from pcjax.engine.request import Request, RequestGroup, Status
from pcjax.engine.scheduler import Scheduler
from pcjax.parallel.dispatch import ReplicaKV, ReplicaScheduler
from pcjax.sampling import SamplingParams
from tests.cache.tree_utils import cache_request, check, make_tree

P = 4


def make_replicas(num: int = 2, num_pages: int = 200) -> tuple[ReplicaScheduler, ReplicaKV]:
    kvs = [
        KVManager(PagePool(num_pages), RadixTree(PagePool(num_pages), P), P, caching=True)
        for _ in range(num)
    ]
    for kv in kvs:
        kv.cache.pool = kv.pool  # one pool per replica, shared by its tree and its manager
    scheduler = ReplicaScheduler(
        [Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=512) for kv in kvs]
    )
    return scheduler, ReplicaKV(kvs, scheduler)


def make_group(rid: str, tokens, *, n: int = 1, max_tokens: int = 16, salt=None) -> RequestGroup:
    params = SamplingParams(n=n, max_tokens=max_tokens, temperature=0)
    group = RequestGroup(rid, None, list(tokens), "final", [])
    for i in range(n):
        group.children.append(
            Request(
                f"{i}_{rid}",
                list(tokens),
                params,
                i,
                frozenset(),
                cache_salt=salt,
                index=i,
                group=group,
            )
        )
    return group


def submit(scheduler: ReplicaScheduler, group: RequestGroup) -> list[int]:
    for child in group.children:
        scheduler.add(child)
    return [child.replica for child in group.children]


def warm(kv: KVManager, tokens) -> None:
    cache_request(kv.cache, list(tokens))


def test_without_cached_prefixes_requests_spread_by_load():
    scheduler, _ = make_replicas(3)
    replicas = [
        submit(scheduler, make_group(str(i), range(100 * i, 100 * i + 40)))[0] for i in range(6)
    ]
    assert replicas == [0, 1, 2, 0, 1, 2]
    assert scheduler.num_dispatched == [2, 2, 2]


@pytest.mark.parametrize(("pending_on_warm", "expected"), [(200, 1), (100, 0)])
def test_the_worked_example_of_the_module_docstring(pending_on_warm, expected):
    scheduler, kvs = make_replicas(2)
    prefix = list(range(1000, 1096))  # 96 tokens, 24 pages
    warm(kvs.kvs[0], prefix)
    submit(scheduler, make_group("load0", range(5000, 5000 + pending_on_warm - 16)))
    submit(scheduler, make_group("load1", range(6000, 6024)))  # 24 + 16 = 40 pending
    prompt = prefix + [7, 7, 7, 7]  # 100 tokens, 96 of them cached on replica 0
    assert submit(scheduler, make_group("new", prompt))[0] == expected


def test_a_burst_sharing_a_new_prefix_stays_together_when_loads_allow():
    scheduler, _ = make_replicas(2)
    shared = list(range(2000, 2200))  # 200 tokens
    submit(scheduler, make_group("other", range(9000, 9300)))  # replica 0 gets unrelated load
    first = submit(scheduler, make_group("a", shared + [1, 2]))[0]
    second = submit(scheduler, make_group("b", shared + [3, 4]))[0]
    assert first == 1 and second == 1  # b's 200 shared tokens are coming on replica 1


def load(scheduler: ReplicaScheduler, replica: int, num_tokens: int) -> None:
    """Queues a request of ``num_tokens`` + 16 pending tokens on ``replica`` directly."""
    req = make_group(f"load{replica}", range(8000, 8000 + num_tokens)).children[0]
    req.replica = replica
    scheduler.schedulers[replica].add(req)


@pytest.mark.parametrize(("salt", "expected"), [(None, 1), ("tenant", 0)])
def test_a_cached_prefix_attracts_only_its_own_salt(salt, expected):
    scheduler, kvs = make_replicas(2)
    prompt = list(range(300, 340))
    warm(kvs.kvs[1], prompt)
    load(scheduler, 1, 8)  # replica 1: 24 pending, 36 of the prompt's 40 tokens cached
    assert submit(scheduler, make_group("r", prompt, salt=salt))[0] == expected


def test_the_samples_of_one_request_share_its_replica():
    scheduler, kvs = make_replicas(2)
    prompt = list(range(300, 340))
    warm(kvs.kvs[1], prompt)
    assert submit(scheduler, make_group("n3", prompt, n=3)) == [1, 1, 1]
    assert scheduler.num_dispatched == [0, 3]


def test_steps_and_page_accounting_per_replica():
    scheduler, kvs = make_replicas(2, num_pages=40)
    groups = [make_group(str(i), range(50 * i, 50 * i + 10)) for i in range(4)]
    for group in groups:
        submit(scheduler, group)
    step = scheduler.schedule()
    assert [req.replica for req, _ in step.entries] == [0, 0, 1, 1]
    assert [req.pages for req, _ in step.entries][::2] == [[1, 2, 3]] * 2  # replica-local ids
    kvs.check_integrity(scheduler.running)
    for req, n in step.entries:
        req.num_computed_tokens += n
        req.prompt_cached = True
        kvs.cache_computed(req)
    scheduler.finish(step.entries[2][0])
    assert step.entries[2][0].status is Status.FINISHED
    kvs.check_integrity(scheduler.running)
    stats = kvs.stats()
    assert stats["num_pages"] == 80 and len(stats["replicas"]) == 2
    assert stats["replicas"][1]["running"] == 1 and stats["running"] == 3
    assert stats["cached_pages"] == sum(r["cached_pages"] for r in stats["replicas"]) == 8


def test_peek_finds_what_match_finds_and_changes_nothing():
    rng = np.random.default_rng(0)
    tree = make_tree(P, capacity=64)
    prompts = [rng.integers(0, 3, int(rng.integers(4, 30))).tolist() for _ in range(12)]
    for prompt in prompts[:6]:
        cache_request(tree, prompt[: len(prompt) - len(prompt) % P])
    for prompt in prompts:
        clock = tree.clock
        stamps = [(n.last_access, n.hits, len(n.key)) for n in _nodes(tree)]
        for limit in (None, len(prompt) - 1, 3):
            found = tree.peek(prompt, max_tokens=limit)
            assert clock == tree.clock
            assert stamps == [(n.last_access, n.hits, len(n.key)) for n in _nodes(tree)]
            assert found == tree.match(prompt, max_tokens=limit).num_tokens
            stamps = [(n.last_access, n.hits, len(n.key)) for n in _nodes(tree)]
            clock = tree.clock
    check(tree)


def _nodes(tree):
    out, stack = [], [tree.root]
    while stack:
        node = stack.pop()
        out.append(node)
        stack += sorted(node.children.values(), key=lambda n: n.key)
    return out
