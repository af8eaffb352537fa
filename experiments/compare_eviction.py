r"""Compares eviction policies by replaying traces through the engine's host cache (or the engine).

One row per (trace, policy, capacity) goes to ``<workdir>/compare_eviction_<mode>.json`` with
``trace``, ``policy``, ``mode``, ``capacity_tokens``, ``token_hit_rate``, ``block_hit_rate``,
``runtime_s`` and ``fraction_of_belady`` (plus tier hits, evictions, ...). Policies: every engine
policy, ``belady`` (the offline bound with bypass), ``oracle_lru`` (LRU that admits only blocks
used again: what perfect dead-block prediction would buy), ``infinite`` (no eviction at all) and,
in sequential mode, the class bounds ``bound:<classifier>`` (`pcjax.sim.headroom`: the most any
policy could reach that sees only those features of a block, e.g. ``bound:uses``, its use count)
and ``hindsight:<classifier>``, the replay of each bound's hold times (what that information buys
in practice when the best hold times are known).

    # the full table: both Mooncake traces, every policy, 1M / 3M / 10M tokens
    python -m experiments.compare_eviction --trace=conversation,synthetic --workdir=workdir/evict
    # a generic or Mooncake file, a slice, a subset of policies
    python -m experiments.compare_eviction --trace=path/to/trace.jsonl --limit=2000 \
        --policies=lru,deadline,belady --capacities_tokens=500000,2000000
    # a synthetic generator; the timed mode; two tiers (device 1M + host 10M tokens)
    python -m experiments.compare_eviction --trace=chat --num_requests=5000 --mode=timed
    python -m experiments.compare_eviction --mode=two_tier --capacities_tokens=1000000 \
        --host_capacity_tokens=10000000
    # a named sweep of configs/eviction.py (mooncake, timed, two_tier, generators, robustness,
    # engine); its results go to compare_eviction_<sweep>.json
    python -m experiments.compare_eviction --sweep=two_tier --workdir=workdir/compare_eviction
    # the real engine (needs pcjax.models): TTFT and throughput next to the hit rate
    python -m experiments.compare_eviction --mode=engine --trace=mixed --num_requests=200 \
        --capacities_tokens=4096 --model=pcjax-tiny

In two_tier mode the policy (``belady`` and ``oracle_lru`` included) runs the device tier and the
host tier is LRU, fed with device victims: ``belady`` is then no bound of the two-tier system
(its bypassed blocks never reach the host), only ``infinite`` is.

Capacities are in tokens; a trace block of ``block_tokens`` tokens is one page, so a capacity
holds ``capacity_tokens // block_tokens`` blocks. Registered traces are found (or downloaded) by
`pcjax.sim.trace_registry`; --traces_dir names a folder searched first.
"""

import dataclasses
import json
import os
import time

from absl import app, flags
from tqdm.auto import tqdm

from pcjax.cache.adaptive import AdaptivePolicy
from pcjax.cache.policies import all_policies
from pcjax.sim.headroom import CLASSIFIERS, HoldOracle, Intervals, class_bound, intervals
from pcjax.sim.replay import HINDSIGHT, replay
from pcjax.sim.robustness import format_table, robustness_table
from pcjax.sim.sources import open_trace
from pcjax.sim.timed import DurationModel, replay_timed
from pcjax.sim.trace import Trace, trace_stats

BOUNDS = ("belady", "oracle_lru", "infinite")
CLASS_BOUNDS = tuple(f"bound:{name}" for name in CLASSIFIERS)
HINDSIGHT_HOLDS = tuple(f"{HINDSIGHT}{name}" for name in CLASSIFIERS)
SEQUENTIAL_ONLY = CLASS_BOUNDS + HINDSIGHT_HOLDS
MODES = ("sequential", "timed", "two_tier", "engine")

_TRACE = flags.DEFINE_list(
    "trace", ["conversation"], "Trace files, bundled Mooncake names or generator names."
)
_TRACES_DIR = flags.DEFINE_string(
    "traces_dir", None, "A folder searched first for registered traces (pcjax.sim.trace_registry)."
)
_POLICIES = flags.DEFINE_list("policies", None, "Policies to compare (default: all + bounds).")
_CAPACITIES = flags.DEFINE_list(
    "capacities_tokens", ["1000000", "3000000", "10000000"], "Device cache sizes in tokens."
)
_HOST = flags.DEFINE_integer("host_capacity_tokens", 10_000_000, "Host tier size (two_tier).")
_HOST_POLICY = flags.DEFINE_string("host_policy", "lru", "Host tier eviction policy (two_tier).")
_WRITE_THROUGH = flags.DEFINE_bool("write_through", False, "two_tier: copy on admission.")
_MODE = flags.DEFINE_enum("mode", "sequential", MODES, "Replay semantics, or the real engine.")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/compare_eviction", "Where results go.")
_LIMIT = flags.DEFINE_integer("limit", None, "Replay only the first n requests of each trace.")
_NUM_REQUESTS = flags.DEFINE_integer("num_requests", 2000, "Requests a generator makes.")
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed.")
_BLOCK_TOKENS = flags.DEFINE_integer("block_tokens", 512, "Tokens per block of generators.")
_PREFILL = flags.DEFINE_float("prefill_tokens_per_s", 10_000.0, "timed: prefill speed.")
_DECODE = flags.DEFINE_float("decode_tokens_per_s", 50.0, "timed: decode speed per request.")
_CHECK_EVERY = flags.DEFINE_integer("check_every", 0, "Integrity check period (0: never).")
_SWEEP = flags.DEFINE_string("sweep", None, "A named sweep of configs/eviction.py (flag defaults).")
_MODEL = flags.DEFINE_string("model", "pcjax-tiny", "engine: preset or checkpoint directory.")
_PAGE_SIZE = flags.DEFINE_integer("page_size", 16, "engine: tokens per KV page.")
_TOKENS_PER_BLOCK = flags.DEFINE_integer("tokens_per_block", 16, "engine: tokens per trace block.")
_MAX_BLOCKS = flags.DEFINE_integer("max_blocks", 32, "engine: longer prompts are cut.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 8, "engine: greedy tokens per request.")
_CONCURRENCY = flags.DEFINE_integer("concurrency", 8, "engine: requests per wave.")


def policy_names() -> list[str]:
    """The --policies, or every policy and bound (class bounds and their hindsight replays in
    sequential mode only)."""
    sequential = _MODE.value == "sequential"
    if _POLICIES.value:
        asked = [p for p in _POLICIES.value if p in SEQUENTIAL_ONLY]
        if asked and not sequential:
            raise app.UsageError(f"{asked} exist in sequential mode only")
        return _POLICIES.value
    return [*all_policies(), *BOUNDS, *(SEQUENTIAL_ONLY if sequential else ())]


def sim_rows(trace: Trace, policies: list[str], capacities: list[int], bar) -> list[dict]:
    """Replays ``trace`` once per (policy, capacity) in the chosen mode."""
    rows = []
    iv = None  # the trace's reference intervals, for the class bounds and their hindsight
    for capacity in capacities:
        for policy in policies:
            bar.set_description(f"{trace.name} {policy} {capacity:,}")
            if policy in SEQUENTIAL_ONLY and iv is None:
                iv = intervals(trace)
            if policy in CLASS_BOUNDS:
                rows.append(_class_bound_row(trace, iv, policy, capacity))
            elif policy in HINDSIGHT_HOLDS:
                blocks = capacity // trace.block_tokens
                oracle = HoldOracle(trace, policy.removeprefix(HINDSIGHT), blocks, iv)
                rows.append(_sim_row(trace, policy, capacity, run_as=oracle))
            else:
                rows.append(_sim_row(trace, policy, capacity))
            bar.update()
    return rows


def _class_bound_row(trace: Trace, iv: Intervals, policy: str, capacity_tokens: int) -> dict:
    start = time.perf_counter()
    classes = CLASSIFIERS[policy.removeprefix("bound:")](iv)
    bound = class_bound(iv, classes, capacity_tokens // trace.block_tokens)
    return {
        "trace": trace.name,
        "policy": policy,
        "mode": _MODE.value,
        "capacity_tokens": capacity_tokens,
        "token_hit_rate": bound.token_hit_rate,
        "block_hit_rate": bound.block_hit_rate,
        "runtime_s": time.perf_counter() - start,
        "num_requests": iv.num_requests,
        "num_classes": len(set(classes.tolist())),
        "fill_request": bound.fill_request,
    }


def _sim_row(trace: Trace, policy: str, capacity_tokens: int, run_as=None) -> dict:
    """One replay row; ``run_as``: the policy or oracle object to replay under ``policy``'s name
    (default: the name itself)."""
    blocks = capacity_tokens // trace.block_tokens
    if policy == "infinite":
        return _infinite_row(trace, capacity_tokens)
    if _MODE.value == "timed":
        durations = DurationModel(_PREFILL.value, _DECODE.value)
        check = _CHECK_EVERY.value
        result = replay_timed(trace, blocks, policy, durations=durations, check_every=check)
    else:
        host = _HOST.value // trace.block_tokens if _MODE.value == "two_tier" else 0
        result = replay(
            trace,
            blocks,
            policy if run_as is None else run_as,
            host_capacity_blocks=host,
            host_policy=_HOST_POLICY.value,
            write_through=_WRITE_THROUGH.value,
            check_every=_CHECK_EVERY.value,
        )
    row = result._asdict() | {"trace": trace.name, "policy": policy, "mode": _MODE.value}
    row |= {"capacity_tokens": capacity_tokens}
    row |= {"token_hit_rate": result.token_hit_rate, "block_hit_rate": result.block_hit_rate}
    row["host_capacity_tokens"] = _HOST.value if _MODE.value == "two_tier" else 0
    row["host_token_hit_rate"] = result.host_hit_tokens / max(result.total_tokens, 1)
    row["device_token_hit_rate"] = row["token_hit_rate"] - row["host_token_hit_rate"]
    return row


def _infinite_row(trace: Trace, capacity_tokens: int) -> dict:
    start = time.perf_counter()
    stats = trace_stats(trace)
    return {
        "trace": trace.name,
        "policy": "infinite",
        "mode": _MODE.value,
        "capacity_tokens": capacity_tokens,
        "token_hit_rate": stats.infinite_token_hit_rate,
        "block_hit_rate": stats.infinite_block_hit_rate,
        "runtime_s": time.perf_counter() - start,
        "num_requests": stats.num_requests,
        "total_blocks": stats.total_blocks,
        "unique_blocks": stats.unique_blocks,
        "total_tokens": stats.total_tokens,
    }


def add_fraction_of_belady(rows: list[dict]) -> None:
    """``fraction_of_belady``: a row's token hit rate over Belady's at the same trace + capacity."""
    belady = {
        (r["trace"], r["capacity_tokens"]): r["token_hit_rate"]
        for r in rows
        if r["policy"] == "belady"
    }
    for r in rows:
        best = belady.get((r["trace"], r["capacity_tokens"]))
        r["fraction_of_belady"] = r["token_hit_rate"] / best if best else None


def print_table(rows: list[dict]) -> None:
    """Token hit rate (fraction of Belady) per policy and capacity, one block per trace."""
    for trace in dict.fromkeys(r["trace"] for r in rows):
        sub = [r for r in rows if r["trace"] == trace]
        caps = sorted({r["capacity_tokens"] for r in sub})
        print(f"\n{trace} ({_MODE.value}): token hit rate [fraction of Belady]")
        infinite = next((r for r in sub if r["policy"] == "infinite"), None)
        if infinite:
            print(f"infinite-cache token hit rate {infinite['token_hit_rate']:.1%}")
        policies = list(dict.fromkeys(r["policy"] for r in sub))
        width = max(len(p) for p in policies)
        print(f"{'policy':>{width}} " + " ".join(f"{c:>18,}" for c in caps))
        for policy in policies:
            cells = []
            for c in caps:
                r = next(x for x in sub if x["policy"] == policy and x["capacity_tokens"] == c)
                frac = r.get("fraction_of_belady")
                cells.append(f"{r['token_hit_rate']:.4f}" + (f" [{frac:.2f}]" if frac else ""))
            print(f"{policy:>{width}} " + " ".join(f"{c:>18}" for c in cells))


def _our_flags() -> dict:
    return {name: flags.FLAGS[name].value for name in _FLAG_NAMES}


_FLAG_NAMES = [f.name for f in (_TRACE, _POLICIES, _CAPACITIES, _HOST, _HOST_POLICY, _MODE, _LIMIT)]
_FLAG_NAMES += [f.name for f in (_NUM_REQUESTS, _SEED, _BLOCK_TOKENS, _PREFILL, _DECODE)]


def apply_sweep(name: str) -> None:
    """Sets the flags a sweep names, unless they were given on the command line."""
    from configs import eviction

    sweep = eviction.get_config(name)
    for field in dataclasses.fields(sweep):
        flag = flags.FLAGS[field.name]
        if not flag.present:
            value = getattr(sweep, field.name)
            flag.value = [str(v) for v in value] if isinstance(value, tuple) else value


def main(argv):
    del argv
    if _SWEEP.value:
        apply_sweep(_SWEEP.value)
    os.makedirs(_WORKDIR.value, exist_ok=True)
    capacities = [int(c) for c in _CAPACITIES.value]
    policies = policy_names()
    traces = [
        open_trace(
            spec,
            limit=_LIMIT.value,
            traces_dir=_TRACES_DIR.value,
            num_requests=_NUM_REQUESTS.value,
            seed=_SEED.value,
            block_tokens=_BLOCK_TOKENS.value,
        )
        for spec in _TRACE.value
    ]
    if _MODE.value == "engine":
        from experiments import eviction_engine

        rows = eviction_engine.run(
            traces,
            [p for p in policies if p not in BOUNDS],
            capacities,
            model=_MODEL.value,
            page_size=_PAGE_SIZE.value,
            tokens_per_block=_TOKENS_PER_BLOCK.value,
            max_blocks=_MAX_BLOCKS.value,
            max_tokens=_MAX_TOKENS.value,
            concurrency=_CONCURRENCY.value,
        )
    else:
        total = len(traces) * len(policies) * len(capacities)
        with tqdm(total=total) as bar:
            rows = [row for t in traces for row in sim_rows(t, policies, capacities, bar)]
    add_fraction_of_belady(rows)
    robustness = robustness_table(rows, {"adaptive": AdaptivePolicy().candidates})
    path = os.path.join(_WORKDIR.value, f"compare_eviction_{_SWEEP.value or _MODE.value}.json")
    with open(path, "w") as f:
        record = {"mode": _MODE.value, "flags": _our_flags(), "rows": rows}
        json.dump(record | {"robustness": robustness}, f, indent=1)
    print_table(rows)
    print("\nrobustness over every trace x capacity (token hit rate points; pcjax.sim.robustness)")
    print(format_table(robustness))
    print(f"\nwrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    app.run(main)
