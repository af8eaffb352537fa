"""Helpers of the gateway experiment (`experiments.bench_router`) and its test: the workload,
sglang-router started on 127.0.0.1 in front of pcjax servers, one measured pass per policy.

Every process started here listens on 127.0.0.1 and is stopped by its process id.
"""

import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import httpx

from experiments import serving_utils


def router_command() -> list[str] | None:
    """How to start sglang-router (the console script next to this Python), or None."""
    script = Path(sys.executable).with_name("sglang-router")
    if script.exists():
        return [str(script), "launch"]
    found = shutil.which("sglang-router")
    return [found, "launch"] if found else None


def make_workload(seed: int, groups: int, per_group: int, prefix_chars: int, question_chars: int):
    """``[(group, text)]`` in a seeded random order: prefix of the group + a question."""
    rng = random.Random(seed)

    def words(n: int) -> str:
        text = ""
        while len(text) < n:
            text += "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5)) + " "
        return text[:n]

    prefixes = [f"Document {g}: {words(prefix_chars)}\n" for g in range(groups)]
    requests = [
        (g, prefixes[g] + f"Question {q}: {words(question_chars)}?")
        for g in range(groups)
        for q in range(per_group)
    ]
    rng.shuffle(requests)
    return requests


async def _one(http, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start, ttft, text, usage = time.perf_counter(), None, "", None
    async with http.stream("POST", f"{url}/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"status": r.status_code, "error": (await r.aread()).decode()[:300]}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices"):
                ttft = ttft or time.perf_counter() - start
                text += "".join(c["text"] for c in chunk["choices"])
            usage = chunk.get("usage") or usage
    return {
        "status": 200,
        "ttft_s": ttft,
        "text": text,
        "prompt_tokens": usage["prompt_tokens"],
        "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
    }


async def send_all(url: str, model: str, workload, concurrency: int, max_tokens: int, timeout):
    """Sends every request through ``url`` with ``concurrency`` clients; records in order."""
    records: list[dict | None] = [None] * len(workload)
    queue = list(enumerate(workload))
    deadline = time.monotonic() + timeout

    async def client(http):
        while queue and time.monotonic() < deadline:
            i, (group, prompt) = queue.pop(0)
            records[i] = {"group": group, **await _one(http, url, model, prompt, max_tokens)}

    async with httpx.AsyncClient(timeout=timeout) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return records


def server_counters(urls: list[str]) -> list[dict]:
    """Each server's prefix-cache counters and finished requests (its /metrics)."""
    out = []
    for url in urls:
        text = httpx.get(f"{url}/metrics", timeout=30).text
        value = serving_utils.metric_value
        out.append(
            {
                "hits": value(text, "pcjax:prefix_cache_hits_total"),
                "queries": value(text, "pcjax:prefix_cache_queries_total"),
                "requests": value(text, "pcjax:request_success_total"),
            }
        )
    return out


def start_router(policy: str, worker_urls: list[str], port: int, log_path: str):
    """Starts sglang-router on 127.0.0.1:port; returns the process once it answers."""
    cmd = [
        *router_command(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--worker-urls",
        *worker_urls,
        "--policy",
        policy,
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(serving_utils.free_port()),
        "--worker-startup-check-interval",
        "1",
        "--log-level",
        "warn",
    ]
    proc = serving_utils.start_process(cmd, log_path)
    try:
        _wait_router(f"http://127.0.0.1:{port}", proc, worker_urls)
    except BaseException:
        serving_utils.stop(proc)
        raise
    return proc


def _wait_router(url: str, proc, worker_urls, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sglang-router exited with code {proc.returncode}")
        try:
            workers = httpx.get(f"{url}/workers", timeout=5)
            if workers.status_code == 200 and len(workers.json().get("workers", [])) == len(
                worker_urls
            ):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"sglang-router at {url} did not list its workers in {timeout_s} s")


def run_policy(
    policy: str, server_urls: list[str], model: str, workload, opts: dict, log_dir: str
) -> dict:
    """One measured pass through the gateway with ``policy``, the servers' caches emptied."""
    for url in server_urls:
        httpx.post(f"{url}/reset_prefix_cache", timeout=60).raise_for_status()
    before = server_counters(server_urls)
    port = serving_utils.free_port()
    router = start_router(policy, server_urls, port, os.path.join(log_dir, f"router_{policy}.log"))
    try:
        start = time.perf_counter()
        records = asyncio.run(
            send_all(
                f"http://127.0.0.1:{port}",
                model,
                workload,
                opts["concurrency"],
                opts["max_tokens"],
                opts["timeout"],
            )
        )
        wall = time.perf_counter() - start
    finally:
        serving_utils.stop(router)
    after = server_counters(server_urls)
    return summarize(policy, records, before, after, wall)


def summarize(policy, records, before, after, wall) -> dict:
    ok = [r for r in records if r and r["status"] == 200]
    hits = sum(a["hits"] - b["hits"] for a, b in zip(after, before, strict=True))
    queries = sum(a["queries"] - b["queries"] for a, b in zip(after, before, strict=True))
    ttfts = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    return {
        "policy": policy,
        "ok": len(ok),
        "failed": len(records) - len(ok),
        "hit_rate_usage": sum(r["cached_tokens"] for r in ok)
        / max(1, sum(r["prompt_tokens"] for r in ok)),
        "hit_rate_metrics": hits / queries if queries else 0.0,
        "ttft_mean_s": statistics.fmean(ttfts) if ttfts else None,
        "ttft_p50_s": statistics.median(ttfts) if ttfts else None,
        "requests_per_server": [
            a["requests"] - b["requests"] for a, b in zip(after, before, strict=True)
        ],
        "wall_s": wall,
        "texts": [r["text"] if r and r["status"] == 200 else None for r in records],
        "records": records,
    }


def compare(
    model: str,
    num_servers: int,
    policies,
    workloads,
    warmup,
    opts: dict,
    server_flags: list[str],
    log_dir: str,
) -> list[list[dict]]:
    """Starts the servers, warms them up, measures each policy on each workload (one round
    each); stops everything it started. Returns the rows of every round."""
    os.makedirs(log_dir, exist_ok=True)
    procs, urls = [], []
    try:
        for i in range(num_servers):
            port = serving_utils.free_port()
            flags_ = ["--model", model, "--served-model-name", "model", *server_flags]
            log = os.path.join(log_dir, f"server_{i}.log")
            procs.append(serving_utils.start_pcjax_server(flags_, port, log))
            urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(urls, procs, strict=True):
            serving_utils.wait_healthy(url, proc, timeout_s=opts["timeout"])
        for policy in policies if warmup else ():
            run_policy(policy, urls, "model", warmup, opts, log_dir)
        rounds = []
        for r, workload in enumerate(workloads):
            order = policies if r % 2 == 0 else policies[::-1]  # neither always goes first
            rows = {p: run_policy(p, urls, "model", workload, opts, log_dir) for p in order}
            rounds.append([rows[p] for p in policies])
        return rounds
    finally:
        for proc in procs:
            serving_utils.stop(proc)
