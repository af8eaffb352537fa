"""Speed check of the host cache code: replays a Mooncake trace through RadixTree + PagePool.

Not a cache-policy experiment (those live with `pcjax.sim`): it times the per-request path the
engine takes (match -> lock -> allocate, evicting when short -> insert -> free duplicates ->
unlock) with one 512-token trace block per key unit and ``page_size=1``, requests run one at a time.

    PYTHONPATH=. python experiments/bench_radix_tree.py --capacity=6000 --policy=lru
"""

import json
import os
import time

from absl import app, flags

from pcjax.cache.page_pool import PagePool
from pcjax.cache.policies import make_policy
from pcjax.cache.radix_tree import RadixTree
from pcjax.sim.trace import mooncake_path

_TRACE = flags.DEFINE_string(
    "trace", "conversation", "JSONL trace file or registered trace name (pcjax.sim.trace_registry)"
)
_CAPACITY = flags.DEFINE_integer("capacity", 6000, "cache pages (blocks), null page excluded")
_POLICY = flags.DEFINE_string("policy", "lru", "eviction policy name")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed replays; the best is reported")
_CHECK = flags.DEFINE_bool("check", False, "check integrity after the replay")


def replay(requests: list[list[int]], capacity: int, policy: str) -> tuple[float, int, int]:
    """Returns (seconds, blocks reused, blocks total)."""
    pool = PagePool(capacity + 1)
    tree = RadixTree(pool, 1, make_policy(policy))
    hits = total = 0
    start = time.perf_counter()
    for ids in requests:
        m = tree.match(ids, max_tokens=len(ids) - 1)
        tree.lock(m.node)
        need = len(ids) - m.num_tokens
        if pool.num_free < need:
            tree.evict(need - pool.num_free)
        new = pool.allocate(need)
        r = tree.insert(ids, m.pages + new)
        pool.free(r.duplicate_pages)
        tree.lock(r.node)
        tree.unlock(m.node)
        tree.unlock(r.node)  # the request finished
        hits += m.num_tokens
        total += len(ids)
    seconds = time.perf_counter() - start
    if _CHECK.value:
        tree.check_integrity()
        pool.check_integrity()
    return seconds, hits, total


def main(argv):
    del argv
    path = _TRACE.value if os.path.isfile(_TRACE.value) else mooncake_path(_TRACE.value)
    with open(path) as f:
        requests = [json.loads(line)["hash_ids"] for line in f]
    times = []
    for _ in range(_REPEATS.value):
        seconds, hits, total = replay(requests, _CAPACITY.value, _POLICY.value)
        times.append(seconds)
    print(
        f"{len(requests)} requests, {total} blocks, policy={_POLICY.value}, "
        f"capacity={_CAPACITY.value}: best {min(times):.3f} s of {len(times)} "
        f"({1e6 * min(times) / len(requests):.1f} us/request), hit rate {hits / total:.3f}"
    )


if __name__ == "__main__":
    app.run(main)
