r"""Shared-prefix benchmark: pcjax (prefix caching on / off, each attention impl) beside vLLM's CPU
backend, on the same Hugging Face model directory and the same prompts.

Workload (defaults): 32 requests sharing a 512-token prefix plus a unique 64-token suffix each,
32 new greedy tokens (eos ignored), 8 running at once. Every system first runs a warm-up pass on
*other* random prompts (compiles, no cross-pass hits), then:

* TTFT probes, one request alone: "cold" (a new prefix) then "hit" (same prefix, new suffix),
  generating one token, so queueing does not enter the figure;
* the timed passes: all requests at once, as `LLM.generate` would get them, `--rounds` times,
  each round on new prompts (new prefix, new suffixes). The machine's speed drifts by 10-20% over
  minutes when it is shared, so one pass per system is a coin toss near a ratio of 1: the table
  shows each system's median round (and every round's wall time is in the JSON); tokens are
  compared on round 0, which both systems ran on the same prompts. With one attention impl the
  two systems' rounds take turns (`run_interleaved`: pcjax round 0, vLLM round 0, pcjax round
  1, ...; neither runs while the other is timed), so that a drift falls on both alike;
  ``--nointerleave`` runs all of pcjax's rounds first.

    python -m experiments.bench_prefix_cache --workdir=workdir/bench
    python -m experiments.bench_prefix_cache --attention_impls=reference --nopeer
    python -m experiments.bench_prefix_cache --model=smollm2-135m --attention_impls=cpu

Writes ``bench_prefix_cache.json`` to --workdir and prints a side-by-side table.
"""

import json
import os
import time

from absl import app, flags

from experiments import prefix_cache_report, workloads
from experiments.peers import vllm_peer

_MODEL = flags.DEFINE_string(
    "model",
    "pcjax-small",
    "A preset, a built-in model (smollm2-135m), a .gguf file or a Hugging Face directory.",
)
_WORKDIR = flags.DEFINE_string("workdir", "workdir/bench_prefix_cache", "Where results go.")
_NUM_REQUESTS = flags.DEFINE_integer("num_requests", 32, "Requests in the timed pass.")
_PREFIX_LEN = flags.DEFINE_integer("prefix_len", 512, "Shared prefix tokens.")
_SUFFIX_LEN = flags.DEFINE_integer("suffix_len", 64, "Unique suffix tokens per request.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 32, "Greedy tokens generated per request.")
_CONCURRENCY = flags.DEFINE_integer("concurrency", 8, "max_num_seqs of both systems.")
_PAGE_SIZE = flags.DEFINE_integer("page_size", 16, "KV page (block) size of both systems.")
_BATCHED_TOKENS = flags.DEFINE_integer("max_num_batched_tokens", 2048, "Step token budget.")
_MAX_MODEL_LEN = flags.DEFINE_integer("max_model_len", 1024, "Context limit of both systems.")
_IMPLS = flags.DEFINE_list(
    "attention_impls",
    ["reference", "pallas", "cpu_xla", "cpu"],
    "pcjax attention paths (auto on CPU is cpu: cpu_native where it builds).",
)
_CACHING = flags.DEFINE_list("caching", ["on", "off"], "Prefix caching settings to run.")
_PEER = flags.DEFINE_bool("peer", True, "Also run vLLM's CPU backend.")
_INTERLEAVE = flags.DEFINE_bool(
    "interleave",
    True,
    "With one attention impl: pcjax's and vLLM's timed rounds take turns (else all of pcjax's "
    "rounds, then vLLM's).",
)
_VLLM_PYTHON = flags.DEFINE_string(
    "vllm_python", None, "Python of the vLLM venv (default: .peers/vllm/bin/python)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the prompt sets.")
_DTYPE = flags.DEFINE_enum(
    "dtype", "float32", ["float32", "bfloat16"], "Params, activations and KV of both systems."
)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed passes per system, each on new prompts.")


def main(argv):
    del argv
    os.makedirs(_WORKDIR.value, exist_ok=True)
    model_dir = _model_directory()
    prompts = _prompt_sets(model_dir)
    results = {"workload": _workload_description(model_dir), "pcjax": {}, "vllm": {}}
    interleave = _PEER.value and _INTERLEAVE.value and len(_IMPLS.value) == 1
    for caching in _CACHING.value:
        if interleave:
            name, on = f"caching_{caching}/{_IMPLS.value[0]}", caching == "on"
            print(f"== pcjax {name} and vLLM caching_{caching}, rounds interleaved", flush=True)
            pcjax, vllm = run_interleaved(model_dir, on, _IMPLS.value[0], prompts)
            results["pcjax"][name], results["vllm"][f"caching_{caching}"] = pcjax, vllm
            continue
        for impl in _IMPLS.value:
            name = f"caching_{caching}/{impl}"
            print(f"== pcjax {name}", flush=True)
            results["pcjax"][name] = run_pcjax(model_dir, caching == "on", impl, prompts)
        if _PEER.value:
            print(f"== vLLM caching_{caching}", flush=True)
            results["vllm"][f"caching_{caching}"] = run_vllm(model_dir, caching == "on", prompts)
    results["comparison"] = prefix_cache_report.compare(results)
    path = os.path.join(_WORKDIR.value, "bench_prefix_cache.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    prefix_cache_report.print_table(results)
    print(f"wrote {path}")


def _model_directory() -> str:
    """The model as a Hugging Face directory, which both systems load: a preset or a GGUF model
    (dequantized, f32) is written out once under --workdir."""
    if os.path.isdir(_MODEL.value):
        return _MODEL.value
    from pcjax.models import PRESETS, write_preset
    from pcjax.models.export_hf import export_hf

    name = os.path.basename(_MODEL.value)
    directory = os.path.join(_WORKDIR.value, "models", name)
    if not os.path.exists(os.path.join(directory, "config.json")):
        if _MODEL.value in PRESETS:
            write_preset(_MODEL.value, directory)
        else:
            export_hf(_MODEL.value, directory)
    return directory


def _prompt_sets(model_dir: str) -> dict[str, list[list[int]]]:
    from transformers import AutoTokenizer

    from pcjax.models import ModelConfig

    with open(os.path.join(model_dir, "config.json")) as f:
        vocab_size = ModelConfig.from_hf_config(json.load(f)).vocab_size
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    token_range = workloads.plain_token_range(tokenizer, vocab_size)
    n, prefix, suffix, seed = _NUM_REQUESTS.value, _PREFIX_LEN.value, _SUFFIX_LEN.value, _SEED.value

    def make(count, set_seed):
        return workloads.shared_prefix_prompts(
            count, prefix, suffix, token_range=token_range, seed=set_seed
        )

    return {
        "warmup": make(n, seed + 1),
        "probe_warmup": make(2, seed + 2),
        "probe": make(2, seed + 3),
        "timed": [make(n, seed + 4 + r) for r in range(_ROUNDS.value)],
    }


def _workload_description(model_dir: str) -> dict:
    return {
        name: flag.value
        for name, flag in [
            ("model", _MODEL),
            ("num_requests", _NUM_REQUESTS),
            ("prefix_len", _PREFIX_LEN),
            ("suffix_len", _SUFFIX_LEN),
            ("max_tokens", _MAX_TOKENS),
            ("concurrency", _CONCURRENCY),
            ("page_size", _PAGE_SIZE),
            ("max_num_batched_tokens", _BATCHED_TOKENS),
            ("max_model_len", _MAX_MODEL_LEN),
            ("seed", _SEED),
            ("dtype", _DTYPE),
            ("rounds", _ROUNDS),
        ]
    } | {"model_dir": model_dir}


# ------------------------------------------------------------------------------------- pcjax


def run_pcjax(model_dir: str, caching: bool, impl: str, prompts: dict) -> dict:
    """Warm-up, TTFT probes and the timed passes on one pcjax engine."""
    side = _start_pcjax(model_dir, caching, impl, prompts)
    rounds = [_pcjax_round(side, timed) for timed in prompts["timed"]]
    return _pcjax_result(side, rounds)


def _start_pcjax(model_dir: str, caching: bool, impl: str, prompts: dict) -> dict:
    """Builds the engine, warms it up and runs the TTFT probes: what the timed rounds need."""
    from pcjax import Engine, SamplingParams

    start = time.perf_counter()
    engine = Engine(
        model=model_dir,
        enable_prefix_caching=caching,
        attention_impl=impl,
        max_num_seqs=_CONCURRENCY.value,
        page_size=_PAGE_SIZE.value,
        max_model_len=_MAX_MODEL_LEN.value,
        max_num_batched_tokens=_BATCHED_TOKENS.value,
        dtype=_DTYPE.value,
    )
    build_s = time.perf_counter() - start
    greedy = SamplingParams(temperature=0, max_tokens=_MAX_TOKENS.value, ignore_eos=True)
    one = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    start = time.perf_counter()
    engine.generate(prompts["warmup"], greedy, use_tqdm=False)
    for prompt in prompts["probe_warmup"]:
        engine.generate([prompt], one, use_tqdm=False)
    warmup_s = time.perf_counter() - start
    probe = [engine.generate([p], one, use_tqdm=False)[0] for p in prompts["probe"]]
    return {
        "engine": engine,
        "greedy": greedy,
        "probe": probe,
        "build_s": build_s,
        "warmup_s": warmup_s,
    }


def _pcjax_round(side: dict, timed: list[list[int]]) -> dict:
    """One timed pass: all of ``timed`` at once."""
    engine = side["engine"]
    before = engine.stats()
    start = time.perf_counter()
    outputs = engine.generate(timed, side["greedy"], use_tqdm=False)
    wall_s = time.perf_counter() - start
    stats = engine.stats()
    delta = {k: v - before[k] for k, v in stats.items() if isinstance(v, (int, float))}
    return _pcjax_summary(engine, outputs, delta, wall_s, side["probe"])


def _pcjax_result(side: dict, rounds: list[dict]) -> dict:
    """The median round, with every round's wall time and the set-up figures."""
    median = sorted(rounds, key=lambda r: r["wall_s"])[len(rounds) // 2]
    return median | {
        "wall_s_rounds": [r["wall_s"] for r in rounds],
        "computed_equals_total_minus_hits": all(
            r["computed_equals_total_minus_hits"] for r in rounds
        ),
        "token_ids": rounds[0]["token_ids"],
        "build_s": side["build_s"],
        "warmup_s": side["warmup_s"],
        "attention_impl": side["engine"].attention_impl,
    }


def _pcjax_summary(engine, outputs, delta, wall_s, probe) -> dict:
    from pcjax.metrics import summarize

    prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    hit_tokens = sum(o.num_cached_tokens for o in outputs)
    generated = sum(len(o.token_ids) for o in outputs)
    return {
        "wall_s": wall_s,
        "prompt_tokens": prompt_tokens,
        "hit_tokens": hit_tokens,
        "hit_rate": hit_tokens / prompt_tokens,
        "computed_prompt_tokens": delta["computed_prompt_tokens"],
        "computed_equals_total_minus_hits": delta["computed_prompt_tokens"]
        == prompt_tokens - hit_tokens,
        "generated_tokens": generated,
        "prefill_tokens_per_s": delta["computed_prompt_tokens"]
        / max(delta["prefill_time_s"], 1e-9),
        "decode_tokens_per_s": delta["decode_steps"]
        and _decode_tokens(delta) / max(delta["decode_time_s"], 1e-9),
        "prefill_time_s": delta["prefill_time_s"],
        "decode_time_s": delta["decode_time_s"],
        "steps": delta["num_steps"],
        "preemptions": delta["preemptions"],
        "ttft_s": summarize(o.ttft_s for o in outputs),
        "ttft_probe_cold_s": probe[0].ttft_s,
        "ttft_probe_hit_s": probe[1].ttft_s,
        "probe_hit_tokens": probe[1].num_cached_tokens,
        "token_ids": [o.token_ids for o in outputs],
    }


def _decode_tokens(delta) -> int:
    """Tokens sampled in pure decode steps (every generated token but each request's first)."""
    return delta["generated_tokens"] - _NUM_REQUESTS.value


# -------------------------------------------------------------------------------------- vLLM


def run_vllm(model_dir: str, caching: bool, prompts: dict) -> dict | None:
    """The same passes through vLLM's CPU backend, in its own venv and process."""
    spec = _vllm_spec(model_dir, caching, prompts)
    try:
        result = vllm_peer.run_vllm(_vllm_python(), spec, timeout_s=1800)
    except vllm_peer.VllmPeerError as err:
        print(f"vLLM peer failed: {err}")
        return None
    return None if result is None else _vllm_result(result, prompts)


def run_interleaved(
    model_dir: str, caching: bool, impl: str, prompts: dict
) -> tuple[dict, dict | None]:
    """pcjax and vLLM take turns: pcjax warms up and probes alone, then idles while vLLM starts,
    warms up and probes; then timed round r of pcjax, round r of vLLM, round r + 1 of pcjax...
    Neither system runs while the other is timed, and a drift of the machine's speed falls on
    both alike. Returns both results (vLLM's None when it is not installed or failed)."""
    side = _start_pcjax(model_dir, caching, impl, prompts)
    names = [f"timed_{r}" for r in range(len(prompts["timed"]))]
    spec = _vllm_spec(model_dir, caching, prompts) | {"gated_passes": names}
    run = vllm_peer.start_gated(_vllm_python(), spec, timeout_s=1800)
    if run is None:
        return _pcjax_result(side, [_pcjax_round(side, t) for t in prompts["timed"]]), None
    rounds, result = [], None
    with run:
        try:
            for name, timed in zip(names, prompts["timed"], strict=True):
                run.wait_ready(name)
                rounds.append(_pcjax_round(side, timed))
                run.release(name)
            result = run.finish()
        except vllm_peer.VllmPeerError as err:
            print(f"vLLM peer failed: {err}")
    rounds += [_pcjax_round(side, t) for t in prompts["timed"][len(rounds) :]]
    return _pcjax_result(side, rounds), result and _vllm_result(result, prompts)


def _vllm_python() -> str | None:
    return _VLLM_PYTHON.value or vllm_peer.default_vllm_python()


def _vllm_spec(model_dir: str, caching: bool, prompts: dict) -> dict:
    """The runner spec of vLLM's passes: warm-up, probes, then the timed rounds."""
    return {
        "model_dir": os.path.abspath(model_dir),
        "enable_prefix_caching": caching,
        "max_num_seqs": _CONCURRENCY.value,
        "max_model_len": _MAX_MODEL_LEN.value,
        "block_size": _PAGE_SIZE.value,
        "max_num_batched_tokens": _BATCHED_TOKENS.value,
        "dtype": _DTYPE.value,
        # Each pass has its own random prompts, so keeping the cache across passes gives no
        # cross-pass hits; it lets probe_hit hit the prefix probe_cold just cached.
        "reset_prefix_cache_between_passes": False,
        "passes": [
            {"name": "warmup", "prompts": prompts["warmup"], "max_tokens": _MAX_TOKENS.value},
            *(
                {"name": f"probe_warmup_{i}", "prompts": [p], "max_tokens": 1}
                for i, p in enumerate(prompts["probe_warmup"])
            ),
            {"name": "probe_cold", "prompts": [prompts["probe"][0]], "max_tokens": 1},
            {"name": "probe_hit", "prompts": [prompts["probe"][1]], "max_tokens": 1},
            *(
                {"name": f"timed_{r}", "prompts": timed, "max_tokens": _MAX_TOKENS.value}
                for r, timed in enumerate(prompts["timed"])
            ),
        ],
    }


def _vllm_result(result: dict, prompts: dict) -> dict:
    """The median timed round and the probes of a runner result."""
    passes = {p["name"]: p for p in result["passes"]}
    rounds = [passes[f"timed_{r}"] for r in range(len(prompts["timed"]))]
    walls = [r["wall_s"] for r in rounds]
    timed = rounds[0]
    return {
        "wall_s": sorted(walls)[len(walls) // 2],
        "wall_s_rounds": walls,
        "cpu_s": timed.get("cpu_s"),
        "ttft_probe_cold_s": passes["probe_cold"]["requests"][0]["ttft_s"],
        "ttft_probe_hit_s": passes["probe_hit"]["requests"][0]["ttft_s"],
        "probe_hit_tokens": passes["probe_hit"]["requests"][0]["num_cached_tokens"],
        "ttft_s": timed.get("ttft_s"),
        "hit_tokens": timed.get("cached_tokens"),
        "token_ids": [r["token_ids"] for r in timed["requests"]],
        "engine_start_s": result.get("engine_start_s"),
        "adjustments": result.get("adjustments"),
        "versions": result.get("versions"),
    }


if __name__ == "__main__":
    app.run(main)
