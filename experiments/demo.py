"""Offline prefix-caching demo on the built-in `pcjax-small` model (random weights).

Several requests share one long system prompt. The first computes it ("cold"); the others find it
in the radix tree and compute only their own question ("warm"). The demo prints each request's
cached tokens and time to first token, and one generation (the weights are random, so the text is
noise; the point is what gets computed).

    python -m experiments.demo [--model=pcjax-small] [--max_tokens=24]
"""

import time

from absl import app, flags

_MODEL = flags.DEFINE_string("model", "pcjax-small", "Preset name or Hugging Face directory.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 24, "Tokens to generate per request.")

SYSTEM_PROMPT = (
    "You are the on-call assistant of a research lab that studies large language model serving. "
    "Answer briefly and precisely. Prefer measured numbers to adjectives, name the units, and say "
    "when a figure comes from a simulation rather than a real run. The lab's systems: an inference "
    "engine with a paged key/value cache, a radix tree over token prefixes, and a second cache "
    "tier in host memory. Question: "
)
QUESTIONS = [
    "What is prefix caching?",
    "Why are KV pages fixed-size?",
    "When is a cached page evicted?",
    "What does the host tier add?",
]
# The warm-up round runs the same request pattern on another prefix of the same length (byte-level
# tokens), so every shape bucket is compiled before anything is timed.
WARMUP_SYSTEM_PROMPT = SYSTEM_PROMPT.upper()


def run_round(engine, system_prompt: str, params) -> tuple[list, list]:
    """One cold request on a new prefix, then the other questions on it (cache hits)."""
    cold = engine.generate([system_prompt + QUESTIONS[0]], params, use_tqdm=False)
    warm = engine.generate([system_prompt + q for q in QUESTIONS[1:]], params, use_tqdm=False)
    return cold, warm


def main(argv):
    del argv
    from pcjax import Engine, SamplingParams

    start = time.perf_counter()
    engine = Engine(model=_MODEL.value, max_num_seqs=8, max_model_len=1024)
    print(
        f"loaded {_MODEL.value} in {time.perf_counter() - start:.1f} s "
        f"({engine.stats()['num_pages']} KV pages of {engine.config.page_size} tokens)"
    )
    params = SamplingParams(temperature=0, max_tokens=_MAX_TOKENS.value)
    start = time.perf_counter()
    run_round(engine, WARMUP_SYSTEM_PROMPT, params)
    print(f"compiled and warmed up in {time.perf_counter() - start:.1f} s\n")
    before = engine.stats()

    cold, warm = run_round(engine, SYSTEM_PROMPT, params)
    print(f"{'request':<40} {'prompt':>7} {'cached':>7} {'TTFT ms':>8}")
    for label, out in zip(
        ["cold: " + QUESTIONS[0]] + ["warm: " + q for q in QUESTIONS[1:]], cold + warm, strict=True
    ):
        print(
            f"{label:<40} {len(out.prompt_token_ids):>7} {out.num_cached_tokens:>7} "
            f"{1e3 * out.ttft_s:>8.1f}"
        )
    warm_ttft = sorted(o.ttft_s for o in warm)[len(warm) // 2]
    print(f"\nTTFT cold {1e3 * cold[0].ttft_s:.1f} ms vs warm (median) {1e3 * warm_ttft:.1f} ms")
    stats = engine.stats()
    hit = stats["prefix_cache_hit_tokens"] - before["prefix_cache_hit_tokens"]
    queried = stats["prefix_cache_queried_tokens"] - before["prefix_cache_queried_tokens"]
    print(f"prefix cache hit rate {hit / queried:.1%} ({hit} of {queried} prompt tokens)")
    print(f"\ngeneration for {QUESTIONS[0]!r} (random weights):\n  {cold[0].text!r}")


if __name__ == "__main__":
    app.run(main)
