"""Load and fault test of the OpenAI-compatible server (loopback only, bounded in count and time).

Many concurrent clients send shared-prefix prompts; a share of them disconnects mid-stream (or
drops a non-streaming request), a share sends malformed requests. At the end every well-formed
request must have completed with the greedy text of the offline engine, no KV page may be leaked
(the engine's integrity check and page counts through /debug/engine), and the server must still be
healthy. Prints a table and writes ``load_test.json`` under --workdir.

    python -m experiments.load_test --model=pcjax-small --num_requests=200 --num_clients=16

Without --url it starts its own server (127.0.0.1, a free port) with the engine flags below and
stops it by its process id at the end; with --url it tests that server (its engine must match
the flags, since the greedy references come from an offline engine built from them).
"""

import asyncio
import json
import logging
import os
import random
import time
from collections import Counter

import httpx
from absl import app, flags

from experiments import serving_utils

_URL = flags.DEFINE_string("url", None, "server to test; default: start one")
_MODEL = flags.DEFINE_string("model", "pcjax-tiny", "model preset or checkpoint dir")
_ATTENTION = flags.DEFINE_string("attention_impl", "auto", "engine attention_impl")
_MAX_NUM_SEQS = flags.DEFINE_integer("max_num_seqs", 8, "engine max_num_seqs")
_NUM_REQUESTS = flags.DEFINE_integer("num_requests", 120, "requests in all")
_NUM_CLIENTS = flags.DEFINE_integer("num_clients", 16, "concurrent clients")
_GROUPS = flags.DEFINE_integer("groups", 4, "shared prefixes")
_PREFIX_LEN = flags.DEFINE_integer("prefix_len", 128, "tokens of each shared prefix")
_SUFFIX_LEN = flags.DEFINE_integer("suffix_len", 12, "unique tokens per prompt")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 12, "greedy tokens per request")
_DISCONNECT = flags.DEFINE_float("disconnect_share", 0.15, "share of clients that disconnect")
_MALFORMED = flags.DEFINE_float("malformed_share", 0.1, "share of malformed requests")
_TIME_LIMIT = flags.DEFINE_float("time_limit_s", 900, "stop sending after this many seconds")
_SEED = flags.DEFINE_integer("seed", 0, "workload seed")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/load_test", "where the JSON goes")

MALFORMED = (
    ("bad_json", "{oops", 400),
    ("bad_temperature", {"temperature": -1}, 400),
    ("unknown_model", {"model": "no-such-model"}, 404),
    ("bad_seed", {"seed": -5}, 400),
)


def make_prompts(seed: int, groups: int, per_group: int, prefix_len: int, suffix_len: int):
    """``groups * per_group`` token-id prompts: a shared prefix per group + unique tokens."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(3, 250) for _ in range(prefix_len)] for _ in range(groups)]
    return [
        prefixes[g] + [rng.randrange(3, 250) for _ in range(suffix_len)]
        for _ in range(per_group)
        for g in range(groups)
    ]


def make_jobs(prompts, num_requests: int, disconnect: float, malformed: float, seed: int):
    """One job per request: (kind, prompt index or malformed case, stream?)."""
    rng = random.Random(seed + 1)
    jobs = []
    for i in range(num_requests):
        roll = rng.random()
        if roll < malformed:
            jobs.append(("malformed", rng.choice(MALFORMED), False))
        elif roll < malformed + disconnect:
            jobs.append(("disconnect", i % len(prompts), rng.random() < 0.7))
        else:
            jobs.append(("ok", i % len(prompts), rng.random() < 0.5))
    return jobs


async def _well_formed(http, url, body, stream: bool):
    """Returns (text, cached_tokens, prompt_tokens) of one greedy completion."""
    if not stream:
        r = await http.post(f"{url}/v1/completions", json=body)
        r.raise_for_status()
        data = r.json()
        usage = data["usage"]
        return data["choices"][0]["text"], usage["prompt_tokens_details"]["cached_tokens"]
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    text, cached = "", None
    async with http.stream("POST", f"{url}/v1/completions", json=body) as r:
        r.raise_for_status()
        async for data in serving_utils.sse_events(r):
            if data == "[DONE]":
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            text += "".join(c["text"] for c in chunk["choices"])
            if chunk.get("usage"):
                cached = chunk["usage"]["prompt_tokens_details"]["cached_tokens"]
    return text, cached


async def _disconnect(http, url, body, stream: bool) -> None:
    if stream:
        async with http.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    return  # leave after the first chunk
        return
    try:
        await http.post(f"{url}/v1/completions", json=body, timeout=0.3)
    except httpx.TimeoutException:
        return


async def _malformed(http, url, model: str, case) -> str:
    name, body, status = case
    if isinstance(body, str):
        r = await http.post(
            f"{url}/v1/completions", content=body, headers={"content-type": "application/json"}
        )
    else:
        r = await http.post(f"{url}/v1/completions", json={"model": model, "prompt": "x", **body})
    ok = r.status_code == status and set(r.json().get("error", {})) >= {"message", "type"}
    return "expected_error" if ok else f"wrong_status_{r.status_code}"


async def run_load(url, model, prompts, expected, jobs, *, clients, max_tokens, time_limit_s):
    """Runs the jobs with ``clients`` concurrent workers; returns the outcome records."""
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    records, deadline = [], time.monotonic() + time_limit_s
    base = {"model": model, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}

    async def worker(http):
        while not queue.empty() and time.monotonic() < deadline:
            kind, what, stream = queue.get_nowait()
            record = {"kind": kind, "stream": stream}
            try:
                if kind == "malformed":
                    record["case"], record["outcome"] = (
                        what[0],
                        await _malformed(http, url, model, what),
                    )
                elif kind == "disconnect":
                    await _disconnect(http, url, {**base, "prompt": prompts[what]}, stream)
                    record["outcome"] = "disconnected"
                else:
                    body = {**base, "prompt": prompts[what]}
                    text, cached = await _well_formed(http, url, body, stream)
                    record.update(prompt_tokens=len(prompts[what]), cached_tokens=cached)
                    record["outcome"] = "ok" if text == expected[what] else "wrong_text"
            except httpx.HTTPStatusError as exc:
                record["outcome"] = f"error:status_{exc.response.status_code}"
            except Exception as exc:  # noqa: BLE001 - counted by kind
                record["outcome"] = f"error:{type(exc).__name__}"
            records.append(record)

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await asyncio.gather(*(worker(http) for _ in range(clients)))
    return records


def settle(url: str, timeout_s: float = 120) -> dict:
    """Waits until the engine is idle; returns /debug/engine and /health afterwards."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = httpx.get(f"{url}/debug/engine", timeout=60).json()
        stats = state["stats"]
        if stats["running"] == stats["waiting"] == state.get("in_flight_sequences", 0) == 0:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    state["health"] = httpx.get(f"{url}/health", timeout=10).status_code
    return state


def summarize(records: list[dict], state: dict, wall_s: float) -> dict:
    """Counts by kind and outcome, the hit rate of well-formed requests, the page checks."""
    by = Counter(f"{r['kind']}:{r['outcome']}" for r in records)
    ok = [r for r in records if r["kind"] == "ok"]
    prompt = sum(r.get("prompt_tokens", 0) for r in ok)
    cached = sum(r.get("cached_tokens") or 0 for r in ok)
    stats = state["stats"]
    return {
        "requests": len(records),
        "outcomes": dict(sorted(by.items())),
        "well_formed": len(ok),
        "well_formed_correct": sum(r["outcome"] == "ok" for r in ok),
        "hit_rate_well_formed": cached / prompt if prompt else 0.0,
        "engine_hit_rate": stats["prefix_cache_hit_rate"],
        "integrity": state["integrity"],
        "in_use_pages": stats["in_use_pages"],
        "in_flight_sequences": state.get("in_flight_sequences"),
        "running": stats["running"],
        "waiting": stats["waiting"],
        "health": state["health"],
        "wall_s": wall_s,
        "passed": (
            all(r["outcome"] == "ok" for r in ok)
            and all(r["outcome"] == "expected_error" for r in records if r["kind"] == "malformed")
            and state["integrity"] == "ok"
            and stats["in_use_pages"] == 0
            and stats["running"] == 0
            and not state.get("in_flight_sequences")
            and state["health"] == 200
        ),
    }


def engine_kwargs() -> dict:
    return dict(
        model=_MODEL.value,
        attention_impl=_ATTENTION.value,
        max_num_seqs=_MAX_NUM_SEQS.value,
        max_model_len=1024,
    )


def server_flags(kwargs: dict) -> list[str]:
    return ["--model", kwargs["model"], "--attention-impl", kwargs["attention_impl"],
            "--max-num-seqs", str(kwargs["max_num_seqs"]),
            "--max-model-len", str(kwargs["max_model_len"])]  # fmt: skip


def reference_texts(kwargs: dict, prompts, max_tokens: int) -> list[str]:
    from pcjax import Engine, SamplingParams

    engine = Engine(**kwargs)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return [o.text for o in engine.generate(prompts, params, use_tqdm=False)]


def main(argv):
    del argv
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    per_group = -(-_NUM_REQUESTS.value // _GROUPS.value)
    prompts = make_prompts(
        _SEED.value, _GROUPS.value, per_group, _PREFIX_LEN.value, _SUFFIX_LEN.value
    )
    kwargs = engine_kwargs()
    expected = reference_texts(kwargs, prompts, _MAX_TOKENS.value)
    jobs = make_jobs(prompts, _NUM_REQUESTS.value, _DISCONNECT.value, _MALFORMED.value, _SEED.value)
    os.makedirs(_WORKDIR.value, exist_ok=True)
    proc, url = None, _URL.value
    try:
        if url is None:
            port = serving_utils.free_port()
            log = os.path.join(_WORKDIR.value, "server.log")
            proc = serving_utils.start_pcjax_server(server_flags(kwargs), port, log)
            url = f"http://127.0.0.1:{port}"
            serving_utils.wait_healthy(url, proc)
        model = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
        start = time.perf_counter()
        records = asyncio.run(
            run_load(
                url,
                model,
                prompts,
                expected,
                jobs,
                clients=_NUM_CLIENTS.value,
                max_tokens=_MAX_TOKENS.value,
                time_limit_s=_TIME_LIMIT.value,
            )  # fmt: skip
        )
        summary = summarize(records, settle(url), time.perf_counter() - start)
    finally:
        serving_utils.stop(proc)
    summary["load_avg"] = os.getloadavg()
    summary["config"] = {**kwargs, "num_clients": _NUM_CLIENTS.value, "jobs": len(jobs)}
    _print(summary)
    with open(os.path.join(_WORKDIR.value, "load_test.json"), "w") as f:
        json.dump({"summary": summary, "records": records}, f, indent=1)
    return 0 if summary["passed"] else 1


def _print(summary: dict) -> None:
    print(f"{'outcome':<32} {'count':>6}")
    for name, count in summary["outcomes"].items():
        print(f"{name:<32} {count:>6}")
    for key in ("requests", "well_formed", "well_formed_correct", "hit_rate_well_formed",
                "engine_hit_rate", "integrity", "in_use_pages", "in_flight_sequences", "running",
                "health", "wall_s",
                "load_avg", "passed"):  # fmt: skip
        print(f"{key:<32} {summary[key]}")


if __name__ == "__main__":
    app.run(main)
