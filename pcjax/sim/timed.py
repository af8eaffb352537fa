"""Timed replay: requests arrive at their timestamps and hold their pages while in flight.

Duration model (`DurationModel`; a request alone on its own hardware share, no queueing):

    prefill_s = (input_length - hit_tokens) / prefill_tokens_per_s
    decode_s  = output_length / decode_tokens_per_s

Per request, as three events on one clock (ms; completions before arrivals at equal times):

1. **arrival** at ``timestamp_ms``: match (the hit is counted here) and lock the matched path;
   allocate pages for the missed blocks, evicting by policy (fewer if pinned pages leave no room;
   Belady admits what its bypass rule accepts). The new pages are IN_USE, not yet shared.
2. **prefill done** ``prefill_s`` later: insert the blocks into the tree. A request that arrived
   meanwhile with the same prefix missed it and computed its own copy; its insert later finds the
   tree's pages and frees its duplicates (counted in ``duplicate_blocks``).
3. **finish** ``decode_s`` after that: unlock. Until then the path is pinned.

Everything else (the tree, the pool, the policies, hit accounting) is `pcjax.sim.replay`'s.
"""

import heapq
import time
from typing import NamedTuple

from tqdm.auto import tqdm

from pcjax.cache.policies import EvictionPolicy
from pcjax.sim.replay import ReplayResult, SimCache, Tally, resolve_policy
from pcjax.sim.trace import Trace

_DONE, _FINISH, _ARRIVAL = 0, 1, 2  # event order at equal times


class DurationModel(NamedTuple):
    """How long a request stays in flight (see the module docstring)."""

    prefill_tokens_per_s: float = 10_000.0
    decode_tokens_per_s: float = 50.0

    def prefill_ms(self, new_tokens: int) -> float:
        return 1000.0 * max(new_tokens, 0) / self.prefill_tokens_per_s

    def decode_ms(self, output_tokens: int) -> float:
        return 1000.0 * output_tokens / self.decode_tokens_per_s


def replay_timed(
    trace: Trace,
    capacity_blocks: int,
    policy: str | EvictionPolicy,
    *,
    durations: DurationModel | None = None,
    check_every: int = 0,
    progress: bool = False,
) -> ReplayResult:
    """Replays ``trace`` with arrivals, in-flight pinning and durations (module docstring)."""
    durations = durations or DurationModel()
    policy, oracle = resolve_policy(policy, trace)
    cache, tally = SimCache(capacity_blocks, policy), Tally(trace.block_tokens)
    events = [(r.timestamp_ms, _ARRIVAL, i, None) for i, r in enumerate(trace.requests)]
    heapq.heapify(events)
    in_flight = peak = arrivals = 0
    bar = tqdm(total=len(trace.requests), disable=not progress, leave=False, desc=policy.name)
    start = time.perf_counter()
    while events:
        now, kind, i, state = heapq.heappop(events)
        r = trace.requests[i]
        if kind == _ARRIVAL:
            in_flight, arrivals = in_flight + 1, arrivals + 1
            peak = max(peak, in_flight)
            m, pages = _arrive(cache, oracle, i, r.block_ids)
            tally.add(r, len(m.pages), 0)
            hit_tokens = min(len(m.pages) * trace.block_tokens, r.input_length)
            done = now + durations.prefill_ms(r.input_length - hit_tokens)
            heapq.heappush(events, (done, _DONE, i, (m, pages)))
            bar.update()
            if check_every and arrivals % check_every == 0:
                cache.check()
        elif kind == _DONE:
            node = cache.commit(r.block_ids, *state)
            heapq.heappush(events, (now + durations.decode_ms(r.output_length), _FINISH, i, node))
        else:
            cache.release(state)
            in_flight -= 1
    bar.close()
    seconds = time.perf_counter() - start
    return tally.result(
        trace,
        policy.name,
        capacity_blocks,
        cache.evicted,
        seconds,
        duplicate_blocks=cache.duplicates,
        peak_in_flight=peak,
    )


def _arrive(cache: SimCache, oracle, i: int, ids: tuple):
    """Match and lock, then reserve pages for the blocks to compute (a Belady-bypassed suffix
    is computed but never cached, so it takes no pages here)."""
    if oracle is not None:
        oracle.advance(i)
    m = cache.lookup(ids)
    want = len(ids) - len(m.pages)
    if oracle is not None:
        want = oracle.admit_count(cache.tree, ids, len(m.pages))
    return m, cache.reserve(want)
