"""Synthetic workloads: seeded, time-ordered, and with the sharing each one promises."""

import pytest

from pcjax.sim.generators import GENERATORS, _blocks, chat, few_shot, generate, system_prompts
from pcjax.sim.sources import open_trace, prompts_from_trace
from pcjax.sim.trace import Request, Trace, trace_stats


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_are_seeded_sorted_and_sized(name):
    trace = generate(name, 120, seed=3, block_tokens=64)
    assert trace == generate(name, 120, seed=3, block_tokens=64)
    assert trace != generate(name, 120, seed=4, block_tokens=64)
    assert len(trace.requests) == 120 and trace.block_tokens == 64
    times = [r.timestamp_ms for r in trace.requests]
    assert times == sorted(times)
    assert all(len(r.block_ids) == -(-r.input_length // 64) for r in trace.requests)
    assert trace_stats(trace).infinite_block_hit_rate > 0.2  # every workload shares prefixes


def test_blocks_cut_a_segment_stream_like_tokens():
    blocks, n = _blocks([("s", 3), ("u", 4)], 4)
    assert n == 7
    assert blocks == [(("s", 0, 3), ("u", 0, 1)), (("u", 1, 4),)]


def test_chat_turns_extend_the_previous_prompts_full_blocks():
    trace = chat(400, seed=0, block_tokens=32)
    seen, extended = set(), 0
    for r in trace.requests:
        extended += any(r.block_ids[:k] in seen for k in range(2, len(r.block_ids)))
        seen.add(r.block_ids[: r.input_length // 32])
    assert extended > 100  # most turns follow a turn of the same conversation
    assert len({r.block_ids[0] for r in trace.requests}) == 1  # one global system prompt


def test_system_prompt_popularity_is_skewed():
    trace = system_prompts(1000, seed=0, block_tokens=64, num_prompts=50)
    firsts = [r.block_ids[0] for r in trace.requests]
    counts = sorted((firsts.count(f) for f in set(firsts)), reverse=True)
    assert counts[0] > 5 * counts[len(counts) // 2]


def test_few_shot_requests_share_their_tasks_examples():
    trace = few_shot(300, seed=1, block_tokens=64, num_tasks=5)
    assert trace_stats(trace).infinite_block_hit_rate > 0.5


def test_open_trace_resolves_generators_and_rejects_unknown_specs(tmp_path):
    assert (
        open_trace("agent", num_requests=50, limit=20).requests
        == generate("agent", 50).requests[:20]
    )
    with pytest.raises(ValueError, match="neither a file"):
        open_trace("no_such_trace")


def test_prompts_from_trace_keep_the_sharing_and_the_partial_block():
    trace = Trace("t", 512, [Request(0, 1024, 1, (0, 1)), Request(1, 1300, 1, (0, 1, 2))])
    a, b = prompts_from_trace(trace, 4, token_range=(10, 1000), seed=0)
    assert len(a) == 8 and len(b) == 11  # 1300 tokens of 512 -> ceil(1300 * 4 / 512)
    assert b[:8] == a
    assert all(10 <= t < 1000 for t in a + b)
    short = prompts_from_trace(trace, 4, token_range=(10, 1000), max_blocks=1)
    assert short == [a[:4], a[:4]]


def test_agentic_sessions_share_prompts_append_context_and_branch_sub_agents():
    from pcjax.sim.generators import agentic

    kw = dict(block_tokens=100, system_tokens=1000, tool_prompt_tokens=2000, num_tool_sets=1)
    plain = agentic(600, seed=0, subagent_rate=0.0, **kw)
    assert plain == agentic(600, seed=0, subagent_rate=0.0, **kw)
    heads = {r.block_ids[:30] for r in plain.requests}
    assert len(heads) == 1  # one system prompt + one tool prompt before every call
    seen, extended = set(), 0
    for r in plain.requests:
        extended += any(r.block_ids[:k] in seen for k in range(31, len(r.block_ids)))
        seen.add(r.block_ids[: r.input_length // 100])
    assert extended > 500  # nearly every call appends to the previous call's context
    branched = agentic(600, seed=0, subagent_rate=0.3, **kw)
    assert len({r.block_ids[:10] for r in branched.requests}) == 1  # the shared system prompt
    sub = [r for r in branched.requests if r.block_ids[:30] not in heads]
    assert 30 < len(sub) < 600  # sub-agents: their own tool prompt after the system prompt
