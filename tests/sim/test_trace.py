"""Trace records, the two file formats, block chaining and the infinite-cache bound."""

import json

import pytest

from pcjax.sim import trace_registry
from pcjax.sim.trace import (
    BlockChainer,
    Request,
    Trace,
    load_trace,
    mooncake_path,
    prefix_hits,
    save_generic,
    trace_stats,
)

HAVE_TRACES = trace_registry.find_local("conversation") is not None
needs_traces = pytest.mark.skipif(not HAVE_TRACES, reason="no local copy of the Mooncake traces")


def test_chainer_gives_equal_ids_exactly_to_equal_prefixes():
    c = BlockChainer()
    assert c.chain(["sys", "a", "b"]) == (0, 1, 2)
    assert c.chain(["sys", "a", "c"]) == (0, 1, 3)
    assert c.chain(["x", "a"]) == (4, 5)  # "a" after "x" is another prefix
    assert c.chain(["sys", "a", "b"]) == (0, 1, 2)
    assert c.num_blocks == 6


def test_rechaining_chained_ids_keeps_the_sharing():
    first = BlockChainer().chain([7, 8, 9])
    again = BlockChainer()
    assert again.chain(first) == (0, 1, 2)
    assert again.chain([first[0], first[1], 99]) == (0, 1, 3)


def _write_jsonl(path, records):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def test_loads_mooncake_records(tmp_path):
    path = tmp_path / "mooncake.jsonl"
    _write_jsonl(
        path,
        [
            {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [10, 11]},
            {"timestamp": 3000, "input_length": 1100, "output_length": 7, "hash_ids": [10, 11, 12]},
        ],
    )
    trace = load_trace(str(path))
    assert trace.block_tokens == 512 and trace.name == "mooncake.jsonl"
    assert trace.requests == [Request(0.0, 600, 5, (0, 1)), Request(3000.0, 1100, 7, (0, 1, 2))]
    assert load_trace(str(path), limit=1).requests == trace.requests[:1]


def test_generic_format_with_tokens_cuts_blocks_and_keeps_the_partial_one(tmp_path):
    path = tmp_path / "generic.jsonl"
    _write_jsonl(
        path,
        [
            {"format": "pcjax-trace", "block_tokens": 2},
            {"timestamp": 1, "output_length": 3, "tokens": [5, 6, 7, 8, 9]},  # 56 78 9
            {"timestamp": 2, "output_length": 3, "tokens": [5, 6, 7, 8, 9, 4]},  # 56 78 94
            {"timestamp": 3, "input_length": 4, "block_ids": ["p", "q"]},
        ],
    )
    trace = load_trace(str(path))
    assert trace.block_tokens == 2
    ids = [r.block_ids for r in trace.requests]
    assert ids[0] == (0, 1, 2) and ids[1] == (0, 1, 3)  # the partial "9" is not "94"
    assert [r.input_length for r in trace.requests] == [5, 6, 4]
    assert trace.requests[2].output_length == 0  # optional fields default


def test_generic_round_trip(tmp_path):
    trace = Trace("t", 16, [Request(0.0, 20, 1, (0, 1)), Request(5.5, 40, 2, (0, 2, 3))])
    save_generic(trace, str(tmp_path / "t.jsonl"))
    assert load_trace(str(tmp_path / "t.jsonl"), name="t") == trace


def test_trace_stats_on_a_hand_made_trace():
    # blocks of 4 tokens: a hit on the partial last block counts its real length only
    requests = [
        Request(0, 6, 0, (0, 1)),  # 0 hits
        Request(1, 6, 0, (0, 1)),  # 2 blocks hit: min(8, 6) = 6 tokens
        Request(2, 9, 0, (0, 2, 3)),  # 1 block hit: 4 tokens
    ]
    s = trace_stats(Trace("t", 4, requests))
    assert (s.total_blocks, s.unique_blocks, s.total_tokens) == (7, 4, 21)
    assert s.infinite_block_hit_rate == pytest.approx(3 / 7)
    assert s.infinite_token_hit_rate == pytest.approx(10 / 21)


def test_prefix_hits_stop_at_the_first_miss():
    assert prefix_hits((1, 2, 3), {1, 3}) == 1
    assert prefix_hits((1, 2), {1, 2}) == 2
    assert prefix_hits((), set()) == 0


@needs_traces
@pytest.mark.parametrize(
    "name, block, token", [("conversation", 0.366, 0.374), ("synthetic", 0.640, 0.651)]
)
def test_infinite_cache_hit_rates_match_the_traces_readme(name, block, token):
    """The self-check of loader and accounting: the README's table, on the full traces."""
    s = trace_stats(load_trace(mooncake_path(name)))
    assert round(s.infinite_block_hit_rate, 3) == block
    assert round(s.infinite_token_hit_rate, 3) == token
    assert s.infinite_block_hit_rate == pytest.approx(1 - s.unique_blocks / s.total_blocks)


@needs_traces
def test_mooncake_block_counts_match_input_lengths():
    trace = load_trace(mooncake_path("conversation"), limit=500)
    assert len(trace.requests) == 500
    assert all(len(r.block_ids) == -(-r.input_length // 512) for r in trace.requests)
    assert all(r.block_ids[0] == 0 for r in trace.requests)  # the shared system prompt
