"""Scheduling for hits: FCFS against longest-prefix-match (lpm) admission on the real engine.

The first ``--num_requests`` requests of a trace (the Mooncake conversation trace by default)
become token prompts (`pcjax.sim.sources.prompts_from_trace`) and are all submitted at once, so
the waiting queue stays long; the engine (pcjax-tiny, a small KV cache) then steps until every
request is done. Per scheduling policy: the prefix-cache token hit rate, and TTFT in engine steps
(the step that produced a request's first token) and in seconds (mean and p99), and the longest
wait in steps (lpm's aging bound caps it). Every policy first runs the workload on a throwaway
engine with other token ids (same sharing, same step shapes), so the measured run compiles
nothing.

    python -m experiments.bench_scheduling --num_requests=200
"""

import json
import os
import time

import numpy as np
from absl import app, flags

from pcjax.sim.sources import open_trace, prompts_from_trace

_TRACE = flags.DEFINE_string("trace", "conversation", "Trace name, file or generator.")
_NUM_REQUESTS = flags.DEFINE_integer("num_requests", 200, "Requests submitted at once.")
_POLICIES = flags.DEFINE_list("policies", ["fcfs", "lpm"], "Scheduling policies.")
_AGING = flags.DEFINE_integer("aging_steps", 32, "lpm: steps after which a request goes first.")
_MODEL = flags.DEFINE_string("model", "pcjax-tiny", "Model preset.")
_PAGE_SIZE = flags.DEFINE_integer("page_size", 16, "Tokens per KV page.")
_TOKENS_PER_BLOCK = flags.DEFINE_integer("tokens_per_block", 16, "Tokens per trace block.")
_MAX_BLOCKS = flags.DEFINE_integer("max_blocks", 24, "Longest prompt, in trace blocks.")
_NUM_PAGES = flags.DEFINE_integer("num_pages", 160, "Device KV pages (page 0 included).")
_MAX_NUM_SEQS = flags.DEFINE_integer("max_num_seqs", 8, "Requests running at once.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 4, "Tokens generated per request.")
_WORKDIR = flags.DEFINE_string("workdir", "experiments/results", "Where the JSON goes.")


def make_engine(policy: str):
    from pcjax import Engine

    return Engine(
        model=_MODEL.value,
        page_size=_PAGE_SIZE.value,
        num_pages=_NUM_PAGES.value,
        max_num_seqs=_MAX_NUM_SEQS.value,
        max_model_len=_MAX_BLOCKS.value * _TOKENS_PER_BLOCK.value + _MAX_TOKENS.value,
        scheduling_policy=policy,
        scheduling_aging_steps=_AGING.value,
        attention_impl="reference",
    )


def run_once(engine, prompts: list[list[int]]) -> dict:
    """Submits every prompt, steps to the end; the row of figures (see the module docstring)."""
    from pcjax import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=_MAX_TOKENS.value, ignore_eos=True)
    before = engine.stats()
    ids = [engine.add_request(p, params) for p in prompts]
    first_step, final, step, start = {}, {}, 0, time.perf_counter()
    while engine.has_unfinished_requests():
        step += 1
        for out in engine.step():
            if out.outputs[0].token_ids and out.request_id not in first_step:
                first_step[out.request_id] = step
            if out.finished:
                final[out.request_id] = out
    seconds = time.perf_counter() - start
    after = engine.stats()
    queried = after["prefix_cache_queried_tokens"] - before["prefix_cache_queried_tokens"]
    hits = after["prefix_cache_hit_tokens"] - before["prefix_cache_hit_tokens"]
    steps = np.array([first_step[i] for i in ids], dtype=float)
    ttft = np.array([final[i].ttft_s for i in ids])
    return {
        "token_hit_rate": hits / max(queried, 1),
        "ttft_steps_mean": float(steps.mean()),
        "ttft_steps_p99": float(np.percentile(steps, 99)),
        "ttft_steps_max": float(steps.max()),
        "ttft_s_mean": float(ttft.mean()),
        "ttft_s_p99": float(np.percentile(ttft, 99)),
        "num_steps": step,
        "runtime_s": seconds,
        "evicted_pages": after["evicted_pages"] - before["evicted_pages"],
    }


def main(argv):
    del argv
    trace = open_trace(_TRACE.value, limit=_NUM_REQUESTS.value)
    rows = []
    for policy in _POLICIES.value:
        engine = make_engine(policy)
        vocab = engine.model.config.vocab_size
        for token_range in [(3, vocab // 2), (vocab // 2, vocab)]:  # warm-up, then measured
            prompts = prompts_from_trace(
                trace,
                _TOKENS_PER_BLOCK.value,
                token_range=token_range,
                max_blocks=_MAX_BLOCKS.value,
            )
            if token_range[0] > 3:
                engine = make_engine(policy)
            row = run_once(engine, prompts)
        rows.append({"policy": policy, "aging_steps": _AGING.value, **row})
        print(json.dumps(rows[-1]))
    os.makedirs(_WORKDIR.value, exist_ok=True)
    path = os.path.join(_WORKDIR.value, f"bench_scheduling_aging{_AGING.value}.json")
    flag_values = {f: flags.FLAGS[f].value for f in _FLAG_NAMES}
    load = os.getloadavg()
    with open(path, "w") as f:
        json.dump({"flags": flag_values, "load_average": load, "rows": rows}, f, indent=1)
    print(f"wrote {path} (load average {load[0]:.2f})")


_FLAG_NAMES = [
    f.name
    for f in (_TRACE, _NUM_REQUESTS, _POLICIES, _AGING, _MODEL, _PAGE_SIZE, _TOKENS_PER_BLOCK)
] + [f.name for f in (_MAX_BLOCKS, _NUM_PAGES, _MAX_NUM_SEQS, _MAX_TOKENS)]


if __name__ == "__main__":
    app.run(main)
