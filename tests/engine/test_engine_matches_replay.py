"""The engine and trace replay count the same hits on the same workload (issue 15 item 4).

A trace is replayed sequentially through `pcjax.sim.replay` (one page per block) and through the
real engine (pcjax-tiny, one request at a time, every block ``P`` tokens plus one tail token so
every block can match), with the same capacity in pages. Per request, the blocks found cached must
agree, and so must the radix tree's logical clock at the end (one tick per match and per insert).
A scheduler test checks that a request waiting at the head of the queue is not counted again on
every step it waits.
"""

import numpy as np
import pytest

from pcjax import Engine, SamplingParams
from pcjax.cache.page_pool import PagePool
from pcjax.cache.radix_tree import RadixTree
from pcjax.engine.kv_manager import KVManager
from pcjax.engine.request import Request
from pcjax.engine.scheduler import Scheduler
from pcjax.sim import replay
from pcjax.sim.generators import generate

P = 4
MAX_BLOCKS = 12
CAPACITY_PAGES = 24  # replay's pages; the engine gets one more for the request's tail token


def _trace():
    trace = generate("mixed", 40, seed=3, block_tokens=P)
    cut = [r._replace(block_ids=r.block_ids[:MAX_BLOCKS]) for r in trace.requests]
    return trace._replace(requests=cut)


def _replay_hits(trace, policy: str) -> tuple[list[int], int]:
    """Per-request device hit blocks and the final clock of a sequential replay."""
    policy_obj, oracle = replay.resolve_policy(policy, trace, CAPACITY_PAGES)
    cache = replay.SimCache(CAPACITY_PAGES, policy_obj)
    tally, hits = replay.Tally(trace.block_tokens), []
    for i, r in enumerate(trace.requests):
        before = tally.hits
        replay._one_request(cache, None, oracle, i, r, tally, False)
        hits.append(tally.hits - before)
    cache.check()
    return hits, cache.tree.clock


def _prompts(trace) -> list[list[int]]:
    """Block id -> P distinct-per-id tokens, plus one tail token (never a whole page)."""
    rng = np.random.default_rng(0)
    table = {}
    prompts = []
    for r in trace.requests:
        tokens = []
        for b in r.block_ids:
            if b not in table:
                table[b] = rng.integers(3, 250, P).tolist()
            tokens += table[b]
        prompts.append(tokens + [2])
    return prompts


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_engine_and_replay_count_the_same_hits(policy):
    trace = _trace()
    expected_hits, expected_clock = _replay_hits(trace, policy)
    assert sum(expected_hits) > 0, "the workload must have hits to compare"
    engine = Engine(
        model="pcjax-tiny",
        page_size=P,
        num_pages=CAPACITY_PAGES + 2,  # + the null page + the tail token's page
        max_num_seqs=1,
        max_num_batched_tokens=MAX_BLOCKS * P + 1,
        max_model_len=MAX_BLOCKS * P + 2,
        eviction_policy=policy,
        attention_impl="reference",
    )
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    outputs = engine.generate(_prompts(trace), params, use_tqdm=False)
    engine.check_integrity()
    assert [o.num_cached_tokens // P for o in outputs] == expected_hits
    assert engine.kv.cache.clock == expected_clock
    assert engine.stats()["evicted_pages"] > 0, "the capacity must force evictions"


def _request(i: int, tokens: list[int]) -> Request:
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    return Request(str(i), tokens, params, seed=0, stop_token_ids=frozenset())


def test_waiting_head_request_counts_once_when_admitted():
    pool = PagePool(9)  # 8 usable pages of P tokens
    kv = KVManager(pool, RadixTree(pool, P, "lfu"), P, caching=True)
    scheduler = Scheduler(kv, max_num_seqs=4, max_num_batched_tokens=64)
    shared = list(range(10, 10 + 4 * P))
    first = _request(0, shared + [1])
    scheduler.add(first)
    scheduler.schedule()  # admits it: 5 pages
    first.num_computed_tokens = len(first.prompt_token_ids)
    kv.cache_computed(first)  # its 4 full pages are cached (and locked)
    big = _request(1, shared + list(range(100, 100 + 3 * P)) + [1])  # needs 4 more pages
    scheduler.add(big)
    clock = kv.cache.clock
    for _ in range(5):  # no room while `first` runs: `big` waits at the head
        scheduler.schedule()
        assert big in scheduler.waiting and big not in scheduler.running
        assert kv.cache.clock == clock, "a waiting request's tries must not tick the clock"
    node = kv.cache.match(shared, record=False).node
    assert node.hits == 0
    scheduler.finish(first)
    step = scheduler.schedule()
    assert [r for r, _ in step.entries] == [big]
    assert kv.cache.clock == clock + 1 and node.hits == 1, "counted once, at admission"
    assert big.num_cached_tokens == 4 * P
    kv.check_integrity(scheduler.running)
