"""The end-to-end mode of `compare_eviction`: the same workload on the real engine, per policy.

Each trace becomes token prompts (`pcjax.sim.sources.prompts_from_trace`: every trace block is
``tokens_per_block`` tokens, so the trace's sharing is kept, page aligned), submitted in trace
order in waves of ``concurrency`` requests (``Engine.generate`` per wave; the cache lives on
across waves). Per policy and capacity: the engine's prefix-cache hit rate, TTFT (mean, p50, p90)
and throughput (prompt + generated tokens per second of wall time). Engines of one model and cache
size share compiled programs, so each policy first runs the whole workload on a throwaway engine
with other token ids (the same sharing, hence the same step shapes), and the measured run on a
fresh engine compiles nothing. Needs ``pcjax.models`` (and jax).
"""

import time

import numpy as np
from tqdm.auto import tqdm

from pcjax.sim.sources import prompts_from_trace
from pcjax.sim.trace import Trace


def run(
    traces: list[Trace],
    policies: list[str],
    capacities_tokens: list[int],
    *,
    model: str = "pcjax-tiny",
    page_size: int = 16,
    tokens_per_block: int = 16,
    max_blocks: int = 32,
    max_tokens: int = 8,
    concurrency: int = 8,
    attention_impl: str = "reference",
) -> list[dict]:
    """One row per (trace, policy, capacity); see the module docstring."""
    from pcjax import Engine, SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)

    def make_engine(policy: str, capacity: int):
        return Engine(
            model=model,
            eviction_policy=policy,
            page_size=page_size,
            num_pages=capacity // page_size + 1,
            max_num_seqs=concurrency,
            max_model_len=max_blocks * tokens_per_block + max_tokens,
            attention_impl=attention_impl,
        )

    rows = []
    combos = [(t, c, p) for t in traces for c in capacities_tokens for p in policies]
    for trace, capacity, policy in tqdm(combos, desc="engine"):
        warm = make_engine(policy, capacity)
        vocab = warm.model.config.vocab_size
        for token_range in [(3, vocab // 2), (vocab // 2, vocab)]:  # warm-up, then measured
            engine = make_engine(policy, capacity) if token_range[0] > 3 else warm
            prompts = prompts_from_trace(
                trace, tokens_per_block, token_range=token_range, max_blocks=max_blocks
            )
            row = _measure(engine, trace.name, policy, capacity, prompts, params, concurrency)
        rows.append(row)
    return rows


def _measure(engine, trace_name, policy, capacity, prompts, params, concurrency) -> dict:
    before = engine.stats()
    outputs, start = [], time.perf_counter()
    for i in range(0, len(prompts), concurrency):
        outputs += engine.generate(prompts[i : i + concurrency], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    after = engine.stats()
    queried = after["prefix_cache_queried_tokens"] - before["prefix_cache_queried_tokens"]
    hits = after["prefix_cache_hit_tokens"] - before["prefix_cache_hit_tokens"]
    ttft = np.array([o.ttft_s for o in outputs])
    generated = sum(len(o.token_ids) for o in outputs)
    prompt_tokens = sum(len(p) for p in prompts)
    return {
        "trace": trace_name,
        "policy": policy,
        "mode": "engine",
        "capacity_tokens": capacity,
        "token_hit_rate": hits / max(queried, 1),
        "block_hit_rate": None,
        "runtime_s": seconds,
        "num_requests": len(prompts),
        "ttft_mean_s": float(ttft.mean()),
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "ttft_p90_s": float(np.percentile(ttft, 90)),
        "throughput_tokens_per_s": (prompt_tokens + generated) / seconds,
        "cached_tokens_per_request": float(np.mean([o.num_cached_tokens for o in outputs])),
        "evicted_pages": after["evicted_pages"] - before["evicted_pages"],
    }
