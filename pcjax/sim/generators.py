"""Seeded synthetic workloads, emitted as the same `Trace` of `Request` records the loaders give.

A prompt is modelled as a list of *segments* ``(segment_id, num_tokens)`` -- a system prompt, a
user turn, the previous answer, a tool result -- and cut into ``block_tokens`` blocks like a real
token stream: a block's content is the list of segment pieces it covers, so a prompt that extends
another one shares its full blocks, while the other's partial last block (grown by the new tokens)
gets a new id, exactly as in the Mooncake traces. Lengths are drawn in tokens; times in ms.

Generators (``GENERATORS``; all take ``num_requests``, ``seed`` and ``block_tokens``):

============== ===================================================================================
system_prompts ``num_prompts`` system prompts with Zipf(``zipf_a``) popularity, one user message
               after it per request; Poisson arrivals.
chat           multi-turn conversations after one global system prompt; each turn appends the
               previous answer and a new user message; geometric turn counts, exponential think
               times.
few_shot       tasks with Zipf popularity; a request holds the task's instruction and its first
               ``k`` examples (so requests of a task share a prefix up to the smaller ``k``),
               then a question.
tree_of_thought problems expanded as trees (``branching`` x ``depth``): a child prompt is its
               parent's prompt + the parent's thought; siblings share the parent's prefix.
agent          agent sessions after one long shared tool prompt; each call's context is the
               previous call's + its output + a tool result, so it grows every call.
mixed          the five above, one fifth of the requests each, merged by arrival time.
agentic        agentic coding sessions: a shared system prompt and one of a few long tool prompts,
               hundreds of calls seconds apart each appending output + a tool result, sub-agents
               branching off with contexts of their own (rate, depth), compaction at a maximum
               context (`agentic`).
============== ===================================================================================
"""

import heapq
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from pcjax.sim.trace import BlockChainer, Request, Trace


class _Event(NamedTuple):
    timestamp_ms: float
    segments: list[tuple]  # [(segment_id, num_tokens), ...]
    output_length: int


def _blocks(segments: list[tuple], block_tokens: int) -> tuple[list[tuple], int]:
    """Block contents (segment pieces per block) and the prompt's token count."""
    blocks, current, room = [], [], block_tokens
    for seg, n in segments:
        start = 0
        while start < n:
            take = min(room, n - start)
            current.append((seg, start, start + take))
            start, room = start + take, room - take
            if room == 0:
                blocks.append(tuple(current))
                current, room = [], block_tokens
    if current:
        blocks.append(tuple(current))
    return blocks, sum(n for _, n in segments)


def _finish(name: str, events: list[_Event], num_requests: int, block_tokens: int) -> Trace:
    events = sorted(events, key=lambda e: e.timestamp_ms)[:num_requests]
    chainer, requests = BlockChainer(), []
    for e in events:
        contents, length = _blocks(e.segments, block_tokens)
        requests.append(Request(e.timestamp_ms, length, e.output_length, chainer.chain(contents)))
    return Trace(name, block_tokens, requests)


def _lengths(rng, low: int, high: int, size=None):
    """Token counts, log-uniform in [low, high]."""
    return np.exp(rng.uniform(np.log(low), np.log(high), size)).astype(int)


def system_prompts(
    num_requests: int = 2000,
    *,
    seed: int = 0,
    block_tokens: int = 512,
    num_prompts: int = 200,
    zipf_a: float = 1.1,
    prompt_tokens: tuple[int, int] = (1000, 16000),
    user_tokens: tuple[int, int] = (50, 2000),
    rate_per_s: float = 4.0,
) -> Trace:
    rng = np.random.default_rng(seed)
    sizes = _lengths(rng, *prompt_tokens, num_prompts)
    ranks = np.arange(1, num_prompts + 1)
    weights = ranks ** (-zipf_a) / np.sum(ranks ** (-zipf_a))
    times = np.cumsum(rng.exponential(1000 / rate_per_s, num_requests))
    picks = rng.choice(num_prompts, num_requests, p=weights)
    users = _lengths(rng, *user_tokens, num_requests)
    events = [
        _Event(t, [(("sp", int(k)), int(sizes[k])), (("u", i), int(u))], int(rng.integers(20, 500)))
        for i, (t, k, u) in enumerate(zip(times, picks, users, strict=True))
    ]
    return _finish("system_prompts", events, num_requests, block_tokens)


def chat(
    num_requests: int = 2000,
    *,
    seed: int = 0,
    block_tokens: int = 512,
    system_tokens: int = 700,
    mean_turns: float = 4.0,
    think_s: float = 60.0,
    user_tokens: tuple[int, int] = (30, 3000),
    answer_tokens: tuple[int, int] = (50, 800),
    rate_per_s: float = 1.5,
) -> Trace:
    rng, events, t0 = np.random.default_rng(seed), [], 0.0
    while len(events) < num_requests:
        t0 += rng.exponential(1000 / rate_per_s)
        c, t = len(events), t0
        segments = [(("chat-sys",), system_tokens)]
        for turn in range(rng.geometric(1 / mean_turns)):
            segments = segments + [(("q", c, turn), int(_lengths(rng, *user_tokens)))]
            answer = int(_lengths(rng, *answer_tokens))
            events.append(_Event(t, segments, answer))
            segments = segments + [(("a", c, turn), answer)]
            t += answer * 20 + rng.exponential(1000 * think_s)  # ~50 tokens/s, then think
    return _finish("chat", events, num_requests, block_tokens)


def few_shot(
    num_requests: int = 2000,
    *,
    seed: int = 0,
    block_tokens: int = 512,
    num_tasks: int = 50,
    zipf_a: float = 1.0,
    max_examples: int = 16,
    example_tokens: tuple[int, int] = (100, 1500),
    rate_per_s: float = 4.0,
) -> Trace:
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, num_tasks + 1)
    weights = ranks ** (-zipf_a) / np.sum(ranks ** (-zipf_a))
    examples = _lengths(rng, *example_tokens, (num_tasks, max_examples))
    t, events = 0.0, []
    for i in range(num_requests):
        t += rng.exponential(1000 / rate_per_s)
        task, k = int(rng.choice(num_tasks, p=weights)), int(rng.integers(1, max_examples + 1))
        segments = [(("fs-inst", task), 300)]
        segments += [(("ex", task, j), int(examples[task, j])) for j in range(k)]
        segments.append((("fs-q", i), int(_lengths(rng, 20, 400))))
        events.append(_Event(t, segments, int(rng.integers(5, 200))))
    return _finish("few_shot", events, num_requests, block_tokens)


def tree_of_thought(
    num_requests: int = 2000,
    *,
    seed: int = 0,
    block_tokens: int = 512,
    branching: int = 3,
    depth: int = 3,
    problem_tokens: tuple[int, int] = (300, 3000),
    thought_tokens: tuple[int, int] = (100, 600),
    rate_per_s: float = 0.5,
) -> Trace:
    rng, events, t0 = np.random.default_rng(seed), [], 0.0
    while len(events) < num_requests:
        t0 += rng.exponential(1000 / rate_per_s)
        p = len(events)
        frontier = [([(("tot-sys",), 400), (("prob", p), int(_lengths(rng, *problem_tokens)))], t0)]
        for level in range(depth):
            children = []
            for n, (segments, t) in enumerate(frontier):
                for b in range(branching):
                    thought = int(_lengths(rng, *thought_tokens))
                    events.append(_Event(t, segments, thought))
                    child = segments + [(("th", p, level, n, b), thought)]
                    children.append((child, t + thought * 20 + rng.exponential(500)))
            frontier = children
    return _finish("tree_of_thought", events, num_requests, block_tokens)


def agent(
    num_requests: int = 2000,
    *,
    seed: int = 0,
    block_tokens: int = 512,
    tool_prompt_tokens: int = 3000,
    mean_calls: float = 8.0,
    tool_tokens: tuple[int, int] = (50, 3000),
    output_tokens: tuple[int, int] = (20, 400),
    tool_latency_s: float = 3.0,
    rate_per_s: float = 0.5,
) -> Trace:
    rng, events, t0 = np.random.default_rng(seed), [], 0.0
    while len(events) < num_requests:
        t0 += rng.exponential(1000 / rate_per_s)
        s, t = len(events), t0
        segments = [(("agent-sys",), tool_prompt_tokens), (("task", s), 200)]
        for call in range(rng.geometric(1 / mean_calls)):
            out = int(_lengths(rng, *output_tokens))
            events.append(_Event(t, segments, out))
            tool = int(_lengths(rng, *tool_tokens))
            segments = segments + [(("act", s, call), out), (("obs", s, call), tool)]
            t += out * 20 + rng.exponential(1000 * tool_latency_s)
    return _finish("agent", events, num_requests, block_tokens)


def agentic(
    num_requests: int = 2000,
    *,
    seed: int = 0,
    block_tokens: int = 512,
    system_tokens: int = 6000,
    tool_prompt_tokens: int = 10000,
    num_tool_sets: int = 3,
    append_tokens: tuple[int, int] = (50, 2500),
    output_tokens: tuple[int, int] = (20, 600),
    mean_calls: float = 120.0,
    subagent_rate: float = 0.03,
    subagent_depth: int = 2,
    subagent_calls: float = 25.0,
    gap_s: float = 4.0,
    max_context_tokens: int = 64000,
    summary_tokens: int = 3000,
    session_rate_per_s: float = 0.1,
) -> Trace:
    """Agentic coding sessions (see `_agentic_session`): a shared system prompt and one of
    ``num_tool_sets`` tool prompts, then hundreds of calls seconds apart, each appending the
    previous call's output and a tool result to the context; now and then a sub-agent branches off
    with a context of its own (its own tool prompt + a task) and its result is appended to the
    parent's. A context past ``max_context_tokens`` is compacted to the prompts + a summary."""
    rng, events, t0, sessions = np.random.default_rng(seed), [], 0.0, 0
    spec = dict(
        append=append_tokens,
        output=output_tokens,
        rate=subagent_rate,
        depth=subagent_depth,
        sub_calls=subagent_calls,
        gap_s=gap_s,
        max_context=max_context_tokens,
        summary=summary_tokens,
        system=system_tokens,
        tools=tool_prompt_tokens,
    )
    while len(events) < num_requests or t0 < _kth_time(events, num_requests):
        t0 += rng.exponential(1000 / session_rate_per_s)  # sessions overlap: add until the
        tools = int(rng.integers(num_tool_sets))  # first num_requests calls are all known
        head = [(("ag-sys",), system_tokens), (("ag-tools", tools), tool_prompt_tokens)]
        calls = max(1, int(rng.geometric(1 / mean_calls)))
        _agentic_session(rng, events, spec, head, (sessions,), calls, t0, 0)
        sessions += 1
    return _finish("agentic", events, num_requests, block_tokens)


def _kth_time(events: list[_Event], k: int) -> float:
    """Arrival time of the ``k``-th earliest event."""
    return float(np.partition([e.timestamp_ms for e in events], k - 1)[k - 1])


def _agentic_session(rng, events, spec, head, sid, calls, t, depth) -> tuple[float, int]:
    """Emits the calls of one (sub-)agent from time ``t`` (ms); returns its end time and the
    length of its result. ``sid`` names it (a path of sub-agent indices, so ids never collide)."""
    base = head + [(("ag-task", sid), int(_lengths(rng, 100, 1500)))]
    segments, length, out = base, sum(n for _, n in base), 0
    for call in range(calls):
        out = int(_lengths(rng, *spec["output"]))
        events.append(_Event(t, segments, out))
        t += out * 20
        appended = int(_lengths(rng, *spec["append"]))
        if depth < spec["depth"] and rng.random() < spec["rate"]:
            sub_head = [
                (("ag-sys",), spec["system"]),
                (("ag-sub-tools", depth), spec["tools"] // 2),
            ]
            sub_calls = max(1, int(rng.geometric(1 / spec["sub_calls"])))
            t, appended = _agentic_session(
                rng, events, spec, sub_head, sid + (call,), sub_calls, t, depth + 1
            )
        step = [(("ag-out", sid, call), out), (("ag-tool", sid, call), appended)]
        if length + out + appended > spec["max_context"]:  # compaction: prompts + a summary
            step = [(("ag-summary", sid, call), spec["summary"])]
            segments, length = base, sum(n for _, n in base)
        segments = segments + step
        length += sum(n for _, n in step)
        t += rng.exponential(1000 * spec["gap_s"])
    return t, max(out, 200)


def mixed(num_requests: int = 2000, *, seed: int = 0, block_tokens: int = 512) -> Trace:
    """The five workloads above interleaved by arrival time (their segment ids never collide)."""
    parts = [
        g(num_requests // 5 + 1, seed=seed + i, block_tokens=block_tokens)
        for i, g in enumerate(_BASE.values())
    ]
    merged = list(heapq.merge(*(_as_events(p) for p in parts), key=lambda e: e[0]))
    chainer, requests = BlockChainer(), []
    for _, gen, r in merged[:num_requests]:
        requests.append(r._replace(block_ids=chainer.chain((gen, b) for b in r.block_ids)))
    return Trace("mixed", block_tokens, requests)


def _as_events(trace: Trace):
    return [(r.timestamp_ms, trace.name, r) for r in trace.requests]


_BASE: dict[str, Callable[..., Trace]] = {
    "system_prompts": system_prompts,
    "chat": chat,
    "few_shot": few_shot,
    "tree_of_thought": tree_of_thought,
    "agent": agent,
}
GENERATORS: dict[str, Callable[..., Trace]] = {**_BASE, "mixed": mixed, "agentic": agentic}


def generate(name: str, num_requests: int = 2000, *, seed: int = 0, block_tokens: int = 512):
    """The synthetic trace ``name`` (a key of `GENERATORS`)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; known: {sorted(GENERATORS)}")
    return GENERATORS[name](num_requests, seed=seed, block_tokens=block_tokens)
