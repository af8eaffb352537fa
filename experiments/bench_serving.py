"""Serving benchmark: SGLang's generated-shared-prefix workload against OpenAI-compatible servers.

Groups x prompts per group; every prompt is the group's shared system prompt plus a unique
question (token ids), and asks for a fixed number of tokens (``ignore_eos``). One async client
keeps ``--concurrency`` streaming requests in flight. Per round and server: TTFT p50/p99, TPOT,
request and token throughput, and the server's prefix hit rate from ``cached_tokens``.

One command runs pcjax and vLLM's CPU server on the same model directory, back to back, rounds
interleaved (pcjax, vLLM, pcjax, vLLM, ...), each round with new prompts and the caches reset,
after one warm-up round per server; the table shows the medians and the pcjax/vLLM ratios:

    python -m experiments.bench_serving --systems=pcjax,vllm --rounds=3

The model directory defaults to pcjax-small written as a Hugging Face checkpoint
(`write_preset`) under --workdir; vLLM runs from ``.peers/vllm`` (build it with
``bash experiments/peers/setup_vllm_cpu.sh``) or --vllm_python. --url_pcjax / --url_vllm test
servers already running instead. Every server started here listens on 127.0.0.1 and is stopped
by its process id. The machine load (1-minute average) is recorded with every round.
"""

import asyncio
import json
import logging
import os
import statistics
import time

import httpx
from absl import app, flags

from experiments import serving_utils
from experiments.peers import vllm_peer

_SYSTEMS = flags.DEFINE_list("systems", ["pcjax", "vllm"], "servers to run: pcjax, vllm")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "HF checkpoint dir; default: pcjax-small")
_GROUPS = flags.DEFINE_integer("groups", 8, "prompt groups (shared system prompts)")
_PER_GROUP = flags.DEFINE_integer("prompts_per_group", 8, "prompts per group")
_SYSTEM_LEN = flags.DEFINE_integer("system_prompt_len", 512, "tokens of each system prompt")
_QUESTION_LEN = flags.DEFINE_integer("question_len", 64, "tokens of each question")
_OUTPUT_LEN = flags.DEFINE_integer("output_len", 32, "generated tokens per request")
_CONCURRENCY = flags.DEFINE_integer("concurrency", 8, "requests in flight")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "timed rounds per server")
_MAX_NUM_SEQS = flags.DEFINE_integer("max_num_seqs", 32, "both servers' max_num_seqs")
_PCJAX_FLAGS = flags.DEFINE_string("pcjax_flags", "", "extra pcjax server flags")
_VLLM_FLAGS = flags.DEFINE_string("vllm_flags", "--enforce-eager", "extra vLLM server flags")
_VLLM_PYTHON = flags.DEFINE_string("vllm_python", None, "the vLLM venv's python")
_URL_PCJAX = flags.DEFINE_string("url_pcjax", None, "a running pcjax server to use")
_URL_VLLM = flags.DEFINE_string("url_vllm", None, "a running vLLM server to use")
_SEED = flags.DEFINE_integer("seed", 0, "workload seed")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/bench_serving", "JSON, logs, model dir")

SERVED_NAME = "bench"
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "0-1",
            "VLLM_SERVER_DEV_MODE": "1"}  # fmt: skip


async def _one_request(http, url: str, prompt: list[int], output_len: int) -> dict:
    body = {"model": SERVED_NAME, "prompt": prompt, "max_tokens": output_len, "temperature": 0,
            "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    ttft, chunk_times, usage = None, [], None
    async with http.stream("POST", f"{url}/v1/completions", json=body) as r:
        r.raise_for_status()
        async for data in serving_utils.sse_events(r):
            if data == "[DONE]":
                continue
            chunk = json.loads(data)
            now = time.perf_counter()
            if chunk.get("choices"):
                ttft = ttft if ttft is not None else now - start
                chunk_times.append(now)
            if chunk.get("usage"):
                usage = chunk["usage"]
    latency = time.perf_counter() - start
    tokens = usage["completion_tokens"]
    return {
        "ttft_s": ttft,
        "latency_s": latency,
        "output_tokens": tokens,
        "prompt_tokens": usage["prompt_tokens"],
        "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
        "tpot_s": (latency - ttft) / (tokens - 1) if tokens > 1 else None,
        "itl_s": [b - a for a, b in zip(chunk_times, chunk_times[1:], strict=False)],
    }


async def run_round(url: str, prompts, output_len: int, concurrency: int) -> dict:
    """Sends every prompt with ``concurrency`` in flight; returns the round's metrics."""
    queue: asyncio.Queue = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    results = []

    async def worker(http):
        while not queue.empty():
            results.append(await _one_request(http, url, queue.get_nowait(), output_len))

    start = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return round_metrics(results, time.perf_counter() - start)


def _percentile(values, q: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, max(0, round(q * (len(data) - 1))))]


def round_metrics(results: list[dict], duration_s: float) -> dict:
    ttfts = [r["ttft_s"] for r in results]
    tpots = [r["tpot_s"] for r in results if r["tpot_s"] is not None]
    itls = [x for r in results for x in r["itl_s"]]
    out_tokens = sum(r["output_tokens"] for r in results)
    in_tokens = sum(r["prompt_tokens"] for r in results)
    return {
        "requests": len(results),
        "duration_s": duration_s,
        "request_throughput": len(results) / duration_s,
        "output_token_throughput": out_tokens / duration_s,
        "total_token_throughput": (in_tokens + out_tokens) / duration_s,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p99_s": _percentile(ttfts, 0.99),
        "tpot_p50_s": statistics.median(tpots) if tpots else None,
        "itl_p50_s": statistics.median(itls) if itls else None,
        "hit_rate": sum(r["cached_tokens"] for r in results) / in_tokens,
        "load_avg_1m": os.getloadavg()[0],
    }


def start_server(system: str, model_dir: str, workdir: str):
    """Starts one server on a free loopback port; returns (process, url)."""
    port = serving_utils.free_port()
    log = os.path.join(workdir, f"{system}_server.log")
    common = ["--max-num-seqs", str(_MAX_NUM_SEQS.value), "--max-model-len", "2048",
              "--served-model-name", SERVED_NAME, "--enable-prefix-caching"]  # fmt: skip
    if system == "pcjax":
        flags_ = ["--model", model_dir, *common, *_PCJAX_FLAGS.value.split()]
        proc = serving_utils.start_pcjax_server(flags_, port, log)
    else:
        python = _VLLM_PYTHON.value or vllm_peer.default_vllm_python()
        if python is None:
            raise RuntimeError("no vLLM venv: run bash experiments/peers/setup_vllm_cpu.sh")
        cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
               "--block-size", "32", "--enable-prompt-tokens-details", *common,
               *_VLLM_FLAGS.value.split()]  # fmt: skip
        proc = serving_utils.start_process(cmd, log, env={**os.environ, **VLLM_ENV})
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    serving_utils.wait_healthy(url, proc, timeout_s=900)
    print(f"{system} ready in {time.perf_counter() - start:.1f} s at {url}", flush=True)
    return proc, url


def reset_cache(url: str) -> None:
    r = httpx.post(f"{url}/reset_prefix_cache", timeout=60)
    if r.status_code >= 400:
        print(f"warning: {url}/reset_prefix_cache answered {r.status_code}", flush=True)


def run_all(urls: dict[str, str], model_dir: str) -> dict:
    workload = lambda seed: serving_utils.make_workload(  # noqa: E731
        seed, _GROUPS.value, _PER_GROUP.value, _SYSTEM_LEN.value, _QUESTION_LEN.value
    )
    rounds = {system: [] for system in urls}
    for url in urls.values():  # warm-up: compiles pcjax's step shapes
        asyncio.run(
            run_round(url, workload(10_000 + _SEED.value), _OUTPUT_LEN.value, _CONCURRENCY.value)
        )
    for r in range(_ROUNDS.value):
        prompts = workload(_SEED.value + r)
        for system, url in urls.items():
            reset_cache(url)
            metrics = asyncio.run(run_round(url, prompts, _OUTPUT_LEN.value, _CONCURRENCY.value))
            rounds[system].append(metrics)
            print(f"round {r} {system}: {_fmt(metrics)}", flush=True)
    return {system: {"rounds": rs, "median": _medians(rs)} for system, rs in rounds.items()}


def _medians(rounds: list[dict]) -> dict:
    keys = [k for k, v in rounds[0].items() if isinstance(v, (int, float))]
    return {k: statistics.median(r[k] for r in rounds if r[k] is not None) for k in keys}


def _fmt(m: dict) -> str:
    return (f"{m['request_throughput']:.2f} req/s, TTFT p50 {1e3 * m['ttft_p50_s']:.0f} ms "
            f"p99 {1e3 * m['ttft_p99_s']:.0f} ms, TPOT p50 {1e3 * (m['tpot_p50_s'] or 0):.1f} ms, "
            f"hit rate {m['hit_rate']:.3f}, load {m['load_avg_1m']:.1f}")  # fmt: skip


def print_table(result: dict) -> None:
    rows = [("request_throughput", "req/s", 1), ("output_token_throughput", "tok/s", 1),
            ("ttft_p50_s", "ms", 1e3), ("ttft_p99_s", "ms", 1e3), ("tpot_p50_s", "ms", 1e3),
            ("itl_p50_s", "ms", 1e3), ("hit_rate", "", 1), ("load_avg_1m", "", 1)]  # fmt: skip
    systems = list(result["systems"])
    print(
        f"\n{'median of ' + str(_ROUNDS.value) + ' rounds':<28}"
        + "".join(f"{s:>12}" for s in systems)
    )
    for key, unit, scale in rows:
        values = "".join(f"{scale * result['systems'][s]['median'][key]:>12.3f}" for s in systems)
        print(f"{key + (' (' + unit + ')' if unit else ''):<28}{values}")
    for key, value in result.get("ratios", {}).items():
        print(f"{key:<40}{value:>8.3f}")


def main(argv):
    del argv
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    os.makedirs(_WORKDIR.value, exist_ok=True)
    model_dir = _MODEL_DIR.value or os.path.join(_WORKDIR.value, "pcjax-small-hf")
    if _MODEL_DIR.value is None and not os.path.exists(os.path.join(model_dir, "config.json")):
        from pcjax.models import write_preset

        write_preset("pcjax-small", model_dir)
    given = {"pcjax": _URL_PCJAX.value, "vllm": _URL_VLLM.value}
    procs, urls = [], {}
    try:
        for system in _SYSTEMS.value:
            if given[system]:
                urls[system] = given[system]
            else:
                proc, urls[system] = start_server(
                    system, os.path.abspath(model_dir), _WORKDIR.value
                )
                procs.append(proc)
        systems = run_all(urls, model_dir)
    finally:
        for proc in procs:
            serving_utils.stop(proc)
    result = {"workload": _workload_info(), "model_dir": model_dir, "systems": systems}
    if "pcjax" in systems and "vllm" in systems:
        p, v = systems["pcjax"]["median"], systems["vllm"]["median"]
        throughput = p["request_throughput"] / v["request_throughput"]
        result["ratios"] = {
            "request_throughput pcjax/vllm (>= 1 wins)": throughput,
            "ttft_p50 pcjax/vllm (<= 1 wins)": p["ttft_p50_s"] / v["ttft_p50_s"],
        }
    print_table(result)
    with open(os.path.join(_WORKDIR.value, "bench_serving.json"), "w") as f:
        json.dump(result, f, indent=1)


def _workload_info() -> dict:
    return {"groups": _GROUPS.value, "prompts_per_group": _PER_GROUP.value,
            "system_prompt_len": _SYSTEM_LEN.value, "question_len": _QUESTION_LEN.value,
            "output_len": _OUTPUT_LEN.value, "concurrency": _CONCURRENCY.value,
            "rounds": _ROUNDS.value, "max_num_seqs": _MAX_NUM_SEQS.value,
            "pcjax_flags": _PCJAX_FLAGS.value, "vllm_flags": _VLLM_FLAGS.value}  # fmt: skip


if __name__ == "__main__":
    app.run(main)
