"""Runs one benchmark spec through vLLM's offline engine and writes the measurements as JSON.

This script runs in the vLLM peer venv (`.peers/vllm/bin/python`, Python 3.11), never in pcjax's:
it imports only the standard library, numpy and vllm. `experiments/peers/vllm_peer.py` is the
client that writes the spec, sets the environment and starts this script.

    python vllm_runner.py --spec spec.json --out result.json

Spec (JSON object; keys with a default may be left out):

    model_dir                  str    Hugging Face directory (config.json + safetensors)
    passes                     list   [{"name": str, "prompts": [[int, ...]], "max_tokens": int}]
    enable_prefix_caching      bool   default true
    max_num_seqs               int    default 8    (requests running at once)
    max_model_len              int    default 2048
    block_size                 int    default 16   (tokens per KV block = prefix-cache granularity;
                                                    rounded up to a multiple of 32, see below)
    max_num_batched_tokens     int?   default null (vLLM's own default)
    dtype                      str    default "float32"
    reset_prefix_cache_between_passes  bool  default true
    seed                       int    default 0
    extra_engine_args          dict   default {}   (passed to vllm.LLM as is, e.g. enforce_eager)
    gated_passes               list   default []   names of passes that wait for the client's go
    gate_dir                   str?   default null (where the gate files live; the client's)
    gate_timeout_s             float  default 3600 (the longest wait for one go)

Gates (how `vllm_peer.GatedRun` interleaves vLLM's timed passes with the caller's own, so the two
never overlap): before a gated pass the runner writes ``ready_<name>`` in ``gate_dir`` and waits for
the file ``go_<name>``; after the pass it writes ``done_<name>``.

Every pass is one `LLM.generate` call with greedy sampling (temperature 0, ignore_eos, exactly
`max_tokens` new tokens per request), in order, in the same engine. The result schema is in the
docstring of `vllm_peer.py`.

vLLM 0.32's CPU attention backend (CPU_ATTN) only takes KV blocks of a multiple of 32 tokens; any
other block size fails late in engine start ("No common block size for 16"). The runner rounds
the block size up to the next multiple of 32 and says so in the result's `adjustments`. That
coarsens vLLM's prefix-cache granularity (a request reuses whole cached blocks only: a 528-token
shared prefix gives 512 cached tokens with 32-token blocks, 528 with 16-token ones), so compare
cached-token counts with that in mind. The same backend only supports head sizes in
CPU_HEAD_DIMS (not 16), which the spec check verifies from config.json before anything starts.

Time to first token comes from vLLM itself: with stats on (`disable_log_stats=False`) every
`RequestOutput.metrics` is a `RequestStateStats` whose `first_token_latency` is the front end's
wall clock when it received the first token minus the request's arrival (its `add_request`).
Queue, prefill and decode times come from the same object's engine-core timestamps.
"""

import argparse
import json
import os
import platform
import re
import sys
import time
import traceback

SPEC_DEFAULTS = {
    "enable_prefix_caching": True,
    "max_num_seqs": 8,
    "max_model_len": 2048,
    "block_size": 16,
    "max_num_batched_tokens": None,
    "dtype": "float32",
    "reset_prefix_cache_between_passes": True,
    "seed": 0,
    "extra_engine_args": {},
    "gated_passes": [],
    "gate_dir": None,
    "gate_timeout_s": 3600.0,
}
GATE_POLL_S = 0.02  # how often a gated pass looks for its go
# vLLM 0.32's CPU_ATTN backend: get_supported_kernel_block_sizes() == [MultipleOf(32)].
CPU_BLOCK_MULTIPLE = 32
# and its get_supported_head_sizes(); any other head size fails in the first forward pass.
CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
ENV_PREFIXES = ("VLLM_", "OMP_", "KMP_", "MKL_", "LD_PRELOAD", "TORCH", "CUDA_VISIBLE_DEVICES")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", required=True, help="path of the spec JSON")
    p.add_argument("--out", required=True, help="path of the result JSON to write")
    return p.parse_args(argv)


def load_spec(path: str) -> dict:
    """Reads the spec file and returns it checked and with defaults filled in."""
    with open(path) as f:
        return check_spec(json.load(f))


def check_spec(spec: dict) -> dict:
    """Returns `spec` with defaults filled in; raises ValueError on a bad spec."""
    spec = {**SPEC_DEFAULTS, **spec}
    unknown = set(spec) - set(SPEC_DEFAULTS) - {"model_dir", "passes"}
    if unknown:
        raise ValueError(f"unknown spec keys: {sorted(unknown)}")
    config_path = os.path.join(str(spec.get("model_dir", "")), "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"model_dir has no config.json: {spec.get('model_dir')!r}")
    check_head_dim(config_path)
    if not spec.get("passes"):
        raise ValueError("spec has no passes")
    for p in spec["passes"]:
        check_pass(p, spec["max_model_len"])
    names = [p.get("name") for p in spec["passes"]]
    for name in spec["gated_passes"]:
        if name not in names or not re.fullmatch(r"[\w.-]+", name):
            raise ValueError(f"gated pass {name!r} is not a pass name (letters, digits, _.-)")
    return spec


def check_head_dim(config_path: str) -> None:
    """Fails fast on a head size vLLM's CPU attention rejects (it would fail ~2 min later)."""
    with open(config_path) as f:
        config = json.load(f)
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (heads and config.get("hidden_size", 0) // heads)
    if head_dim and head_dim not in CPU_HEAD_DIMS:
        raise ValueError(
            f"head_dim {head_dim} of {config_path} is not one vLLM's CPU attention supports "
            f"{CPU_HEAD_DIMS}"
        )


def check_pass(p: dict, max_model_len: int) -> None:
    """Checks one pass of the spec; raises ValueError naming the pass."""
    name = p.get("name", "?")
    if not isinstance(p.get("max_tokens"), int) or p["max_tokens"] < 1:
        raise ValueError(f"pass {name!r}: max_tokens must be an int >= 1")
    prompts = p.get("prompts")
    if not prompts or not all(isinstance(x, list) and x for x in prompts):
        raise ValueError(f"pass {name!r}: prompts must be non-empty lists of token ids")
    longest = max(len(x) for x in prompts)
    if longest + p["max_tokens"] > max_model_len:
        raise ValueError(
            f"pass {name!r}: prompt {longest} + max_tokens {p['max_tokens']} "
            f"> max_model_len {max_model_len}"
        )


def has_tokenizer(model_dir: str) -> bool:
    """Whether the model directory carries a tokenizer vLLM could load."""
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    return any(os.path.isfile(os.path.join(model_dir, n)) for n in names)


def cpu_block_size(requested: int) -> int:
    """The smallest block size vLLM's CPU attention accepts (a multiple of 32) >= `requested`."""
    return -(-requested // CPU_BLOCK_MULTIPLE) * CPU_BLOCK_MULTIPLE


def adjustments(spec: dict) -> list[str]:
    """Human-readable notes on where the engine runs with other settings than the spec asked."""
    notes = []
    used = cpu_block_size(spec["block_size"])
    if used != spec["block_size"]:
        notes.append(
            f"block_size {spec['block_size']} -> {used}: vLLM's CPU attention (CPU_ATTN) "
            f"takes only multiples of {CPU_BLOCK_MULTIPLE}"
        )
    return notes


def engine_kwargs(spec: dict) -> dict:
    """The keyword arguments for `vllm.LLM`, built from the spec."""
    kwargs = {
        "model": spec["model_dir"],
        "dtype": spec["dtype"],
        "enable_prefix_caching": spec["enable_prefix_caching"],
        "max_num_seqs": spec["max_num_seqs"],
        "max_model_len": spec["max_model_len"],
        "block_size": cpu_block_size(spec["block_size"]),
        "seed": spec["seed"],
        # Token-id prompts only: the tokenizer is never needed, and often absent.
        "skip_tokenizer_init": not has_tokenizer(spec["model_dir"]),
        # Stats on, so that RequestOutput.metrics (TTFT) and get_metrics() are filled in.
        "disable_log_stats": False,
    }
    if spec["max_num_batched_tokens"] is not None:
        kwargs["max_num_batched_tokens"] = spec["max_num_batched_tokens"]
    return {**kwargs, **spec["extra_engine_args"]}


def effective_config(llm) -> dict:
    """The settings vLLM actually ran with (the CPU platform overrides some of them)."""
    cfg = llm.llm_engine.vllm_config
    comp = cfg.compilation_config
    return {
        "device_type": cfg.device_config.device_type,
        "block_size": cfg.cache_config.block_size,
        "enable_prefix_caching": cfg.cache_config.enable_prefix_caching,
        "kv_cache_memory_bytes": cfg.cache_config.kv_cache_memory_bytes,
        "max_num_seqs": cfg.scheduler_config.max_num_seqs,
        "max_num_batched_tokens": cfg.scheduler_config.max_num_batched_tokens,
        "enable_chunked_prefill": cfg.scheduler_config.enable_chunked_prefill,
        "max_model_len": cfg.model_config.max_model_len,
        "dtype": str(cfg.model_config.dtype),
        "compilation_mode": str(comp.mode),
        "compilation_backend": comp.backend,
        "enforce_eager": cfg.model_config.enforce_eager,
    }


def versions() -> dict:
    """Versions of the software that produced the numbers."""
    import numpy
    import torch
    import vllm

    return {
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def host() -> dict:
    """The machine the numbers come from."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
    }


def env_settings() -> dict:
    """The environment variables that change how vLLM or the thread libraries run."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)}


def read_proc_stats() -> dict[int, tuple[int, float]]:
    """{pid: (parent pid, CPU seconds used)} for every process /proc shows (Linux only)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        # after "pid (comm)": state ppid ... utime stime (fields 3, 4 ... 14, 15 of proc(5))
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return stats


def process_tree_cpu_s() -> float:
    """CPU seconds used so far by this process and its live descendants (engine core, worker)."""
    stats = read_proc_stats()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        todo.extend(children.get(pid, []))
    return total


def prefix_cache_counters(llm) -> dict | None:
    """vLLM's cumulative prefix-cache token counters (queried, hit); None when stats are off."""
    if not llm.llm_engine.log_stats:
        return None
    wanted = {"vllm:prefix_cache_queries": "queries", "vllm:prefix_cache_hits": "hits"}
    counts = {"queries": 0, "hits": 0}
    for metric in llm.get_metrics():
        if metric.name in wanted:
            counts[wanted[metric.name]] += int(metric.value)
    return counts


def counter_delta(before: dict | None, after: dict | None) -> dict:
    """Prefix-cache queries, hits and hit rate between two counter snapshots (None: unknown)."""
    if before is None or after is None:
        return {"queries": None, "hits": None, "hit_rate": None}
    queries = after["queries"] - before["queries"]
    hits = after["hits"] - before["hits"]
    return {"queries": queries, "hits": hits, "hit_rate": hits / queries if queries else None}


def request_record(out, t0: float) -> dict:
    """Measurements for one finished request; `t0` is the wall clock when `generate` began."""
    m = out.metrics
    completion = out.outputs[0]
    rec = {
        "prompt_tokens": len(out.prompt_token_ids),
        "num_cached_tokens": out.num_cached_tokens,
        "token_ids": list(completion.token_ids),
        "finish_reason": completion.finish_reason,
        "ttft_s": None,
        "ttft_from_start_s": None,
        "arrival_offset_s": None,
        "queue_s": None,
        "prefill_s": None,
        "decode_s": None,
    }
    if m is not None and m.first_token_latency > 0:
        rec["ttft_s"] = m.first_token_latency
        rec["arrival_offset_s"] = m.arrival_time - t0
        rec["ttft_from_start_s"] = rec["arrival_offset_s"] + m.first_token_latency
        rec["queue_s"] = m.scheduled_ts - m.queued_ts
        rec["prefill_s"] = m.first_token_ts - m.scheduled_ts
        rec["decode_s"] = m.last_token_ts - m.first_token_ts
    return rec


def decode_step_s(rec: dict) -> float | None:
    """Mean seconds between a request's tokens after its first (None when unknown)."""
    steps = len(rec["token_ids"]) - 1
    return rec["decode_s"] / steps if rec["decode_s"] is not None and steps > 0 else None


def summarize(values: list[float | None]) -> dict | None:
    """Count, mean and quantiles of the non-missing values (None when there are none)."""
    import numpy as np

    xs = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if xs.size == 0:
        return None
    q = np.quantile(xs, [0.0, 0.5, 0.9, 0.99, 1.0])
    keys = ("min", "p50", "p90", "p99", "max")
    return {
        "n": int(xs.size),
        "mean": float(xs.mean()),
        **dict(zip(keys, map(float, q), strict=True)),
    }


def run_pass(llm, p: dict, reset: bool) -> dict:
    """Runs one pass as a single `generate` call and returns its measurements."""
    from vllm import SamplingParams

    reset_ok = bool(llm.reset_prefix_cache()) if reset else None
    params = SamplingParams(temperature=0.0, max_tokens=p["max_tokens"], ignore_eos=True)
    prompts = [{"prompt_token_ids": list(ids)} for ids in p["prompts"]]
    before = prefix_cache_counters(llm)
    load_before = os.getloadavg()[0]
    cpu_before = process_tree_cpu_s()
    t0 = time.time()
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    wall_s = time.perf_counter() - start
    cpu_s = process_tree_cpu_s() - cpu_before
    requests = [request_record(o, t0) for o in outs]
    return {
        "name": p.get("name", ""),
        "wall_s": wall_s,
        "num_requests": len(requests),
        "max_tokens": p["max_tokens"],
        "prompt_tokens": sum(r["prompt_tokens"] for r in requests),
        "generated_tokens": sum(len(r["token_ids"]) for r in requests),
        "cached_tokens": sum(r["num_cached_tokens"] or 0 for r in requests),
        "reset_prefix_cache_before": reset_ok,
        "cpu_s": cpu_s,
        "load_avg_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "prefix_cache": counter_delta(before, prefix_cache_counters(llm)),
        "ttft_s": summarize([r["ttft_s"] for r in requests]),
        "decode_step_s": summarize([decode_step_s(r) for r in requests]),
        "requests": requests,
    }


def start_engine(spec: dict) -> tuple[object, float]:
    """Starts the vLLM engine; returns it and the seconds the start took (load + compile)."""
    from vllm import LLM

    start = time.perf_counter()
    llm = LLM(**engine_kwargs(spec))
    return llm, time.perf_counter() - start


def run(spec: dict) -> dict:
    """Starts one engine, runs the spec's passes in order and returns the full result."""
    import_start = time.perf_counter()
    info = {"versions": versions(), "host": host(), "env": env_settings()}
    import_s = time.perf_counter() - import_start
    llm, engine_start_s = start_engine(spec)
    reset, gated = spec["reset_prefix_cache_between_passes"], set(spec["gated_passes"])
    if gated and not spec["gate_dir"]:
        raise ValueError("gated_passes need a gate_dir")
    passes = []
    for i, p in enumerate(spec["passes"]):
        if p["name"] in gated:
            wait_for_go(spec["gate_dir"], p["name"], spec["gate_timeout_s"])
        passes.append(run_pass(llm, p, reset and i > 0))
        if p["name"] in gated:
            touch(os.path.join(spec["gate_dir"], f"done_{p['name']}"))
    return {
        "ok": True,
        "peer": "vllm",
        "device": "cpu",
        **info,
        "spec": {k: v for k, v in spec.items() if k != "passes"},
        "engine_args": engine_kwargs(spec),
        "adjustments": adjustments(spec),
        "effective_config": effective_config(llm),
        "import_s": import_s,
        "engine_start_s": engine_start_s,
        "ttft_source": "RequestOutput.metrics.first_token_latency (vLLM front-end clock)",
        "passes": passes,
    }


def touch(path: str) -> None:
    """Creates the empty file `path` (a gate signal)."""
    with open(path, "w"):
        pass


def wait_for_go(gate_dir: str, name: str, timeout_s: float) -> None:
    """Says this runner waits before pass `name` (``ready_<name>``) and waits for the client's
    ``go_<name>``; raises TimeoutError after `timeout_s`."""
    touch(os.path.join(gate_dir, f"ready_{name}"))
    go = os.path.join(gate_dir, f"go_{name}")
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no go for pass {name!r} within {timeout_s:.0f} s")
        time.sleep(GATE_POLL_S)


def write_json(path: str, obj: dict) -> None:
    """Writes `obj` as JSON through a temporary file, so a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns 0 on success, 1 after writing an error result."""
    args = parse_args(argv)
    try:
        result = run(load_spec(args.spec))
    except Exception as e:  # reported to the client through the result file
        traceback.print_exc()
        write_json(args.out, {"ok": False, "error": f"{type(e).__name__}: {e}"})
        return 1
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
