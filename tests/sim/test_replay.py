"""Replay on hand-made traces whose answers are worked out here: sequential, Belady, two tiers,
timed. A trace block is one token (``block_tokens=1``) unless a test says otherwise."""

import pytest

from pcjax.sim.belady import NEVER, next_uses
from pcjax.sim.replay import replay
from pcjax.sim.timed import DurationModel, replay_timed
from pcjax.sim.trace import Request, Trace
from tests.sim.hand_traces import make_trace

# Two users take turns after a shared block "s"; the cache holds 2 blocks.
#   LRU:    sx (miss s x) | sy (hit s; y evicts x) | sx (hit s; x evicts y) | sy (hit s)  -> 3
#   Belady: sx (s next r1, x next r2) | sy (y next r3 > x's r2: bypassed) | sx (hit s x)
#           | sy (hit s; y never used again: bypassed)                                  -> 4
ALTERNATING = ("sx", "sy", "sx", "sy")


@pytest.mark.parametrize(
    "policy, hits", [("lru", 3), ("fifo", 3), ("lfu", 3), ("deadline", 3), ("belady", 4)]
)
def test_alternating_users_in_a_two_block_cache(policy, hits):
    r = replay(make_trace(*ALTERNATING), 2, policy, check_every=1)
    assert r.hit_blocks == hits and r.total_blocks == 8
    assert r.block_hit_rate == hits / 8 and r.token_hit_rate == hits / 8


def test_belady_bypasses_blocks_that_are_never_used_again():
    # cap 2: a (next r3), b (next r4), c (never: bypassed) -> a, b both hit later.
    # LRU: c evicts a, a evicts b, b evicts c -> no hits.
    trace = make_trace("a", "b", "c", "a", "b")
    assert replay(trace, 2, "belady", check_every=1).hit_blocks == 2
    assert replay(trace, 2, "lru").hit_blocks == 0
    assert replay(trace, 2, "oracle_lru").hit_blocks == 2  # admits a, b only; LRU keeps both


def test_belady_evicts_the_leaf_used_furthest_in_the_future():
    # cap 3. "ab" (both next used at r3) fills 2 pages; "cd" (next r5): c takes the free page,
    # d would have to evict b (next r3 < r5): bypassed. "ef": e (next r4) evicts c (next r5,
    # the furthest), f (never) is bypassed. Then "ab" hits 2, "e" hits 1, "cd" misses.
    trace = make_trace("ab", "cd", "ef", "ab", "e", "cd")
    assert replay(trace, 3, "belady", check_every=1).hit_blocks == 3
    # LRU: cd trims b; ef takes a and d; ab takes c and f; e hits; cd misses.
    assert replay(trace, 3, "lru").hit_blocks == 1


def test_next_uses_point_at_the_next_request_holding_the_block():
    trace = make_trace("sx", "sy", "sx")
    assert next_uses(trace) == [[1, 2], [2, NEVER], [NEVER, NEVER]]


def test_token_hits_count_a_partial_last_block_by_its_length():
    # blocks of 4 tokens; the second request repeats the first (6 tokens in 2 blocks)
    trace = Trace("t", 4, [Request(0, 6, 0, (0, 1)), Request(1, 6, 0, (0, 1))])
    r = replay(trace, 8, "lru")
    assert r.hit_blocks == 2 and r.hit_tokens == 6 and r.token_hit_rate == 0.5


def test_a_request_longer_than_the_cache_caches_what_fits():
    r = replay(make_trace("abcd", "abcd"), 3, "lru", check_every=1)
    assert r.hit_blocks == 3


def test_policies_differ_where_frequency_matters():
    # cap 3: "h" is hit once, then a scan p q r. LRU evicts h (oldest access) for r and
    # misses it at the end; LFU keeps h (1 hit) and evicts p.
    trace = make_trace("h", "h", "p", "q", "r", "h")
    assert replay(trace, 3, "lru").hit_blocks == 1
    assert replay(trace, 3, "lfu").hit_blocks == 2
    assert replay(trace, 3, "belady").hit_blocks == 2


def test_two_tier_serves_device_victims_from_the_host():
    # device 1 block, host 4: "b" evicts "a" to the host, where "a" is then found.
    r = replay(make_trace("a", "b", "a"), 1, "lru", host_capacity_blocks=4, check_every=1)
    assert (r.hit_blocks, r.host_hit_blocks, r.host_hit_tokens) == (1, 1, 1)
    assert replay(make_trace("a", "b", "a"), 1, "lru").hit_blocks == 0


def test_two_tier_host_hits_continue_after_the_device_prefix():
    # device 2: "sx" then "sy" evicts x to the host (with its path s); "sx" hits s on the
    # device and x on the host.
    r = replay(make_trace("sx", "sy", "sx"), 2, "lru", host_capacity_blocks=4)
    assert (r.hit_blocks, r.host_hit_blocks) == (1 + 2, 1)


def test_write_through_fills_the_host_on_admission():
    # device 1, host 2 (write-through): "a" and "b" both reach the host when admitted, and
    # the host's LRU keeps them both; the device alone holds only "b".
    trace = make_trace("a", "b", "a")
    r = replay(trace, 1, "lru", host_capacity_blocks=2, write_through=True)
    assert (r.hit_blocks, r.host_hit_blocks) == (1, 1)


FAST = DurationModel(prefill_tokens_per_s=1000.0, decode_tokens_per_s=1000.0)  # 1 token per ms


def test_timed_requests_in_flight_together_compute_their_blocks_twice():
    # r0 at 0 ms prefills "ab" until 2 ms; r1 arrives at 1 ms and misses, computes its own
    # copy and finds r0's at insert (2 duplicates); r2 at 10 ms hits both.
    trace = make_trace("ab", "ab", "ab", times=[0, 1, 10])
    r = replay_timed(trace, 8, "lru", durations=FAST, check_every=1)
    assert (r.hit_blocks, r.duplicate_blocks, r.peak_in_flight) == (2, 2, 2)
    assert replay(trace, 8, "lru").hit_blocks == 4  # sequentially r1 hits too


def test_timed_requests_pin_their_pages_until_they_finish():
    # cap 2: r0 "ab" decodes 100 tokens (until 102 ms), so r1 "cd" at 5 ms finds no room and
    # is not cached; after r0 finished, "cd" misses again and evicts "ab", which then misses.
    trace = make_trace("ab", "cd", "cd", "ab", times=[0, 5, 200, 300], outputs=[100, 0, 0, 0])
    r = replay_timed(trace, 2, "lru", durations=FAST, check_every=1)
    assert r.hit_blocks == 0
    assert replay(trace, 2, "lru").hit_blocks == 2  # sequentially r2 hits "cd"


def test_timed_belady_is_never_worse_than_timed_lru_here():
    trace = make_trace(*ALTERNATING, times=[0, 10, 20, 30])
    assert replay_timed(trace, 2, "belady", durations=FAST, check_every=1).hit_blocks == 4
    assert replay_timed(trace, 2, "lru", durations=FAST).hit_blocks == 3
