r"""Replay speed per policy: the full Mooncake conversation trace (288,500 block references) at one
capacity, sequential mode. Loading the trace and building Belady's next-use table are outside the
timed region (they are per trace, not per replay).

The policies take turns within each repeat (lru, deadline, ..., then again), so a change in the
machine's load falls on all of them alike; each reports its best wall time (`ReplayResult`'s
``runtime_s``), its best CPU time (``time.process_time`` around the replay call: what other jobs
on a shared machine do not inflate) and both as a ratio to LRU's.

    python -m experiments.bench_eviction_speed --capacity_tokens=3000000 --repeats=5 \
        --policies=lru,deadline,learned_hold,adaptive

Writes ``bench_eviction_speed.json`` to --workdir. The budgets: under 5 s per online policy and
under 15 s for Belady on a 2-core machine; the selector (``adaptive``) at most 2x LRU's time.
"""

import json
import os

from absl import app, flags

from experiments.replay_timing import timed_replays
from pcjax.cache.policies import all_policies
from pcjax.sim.sources import open_trace

_TRACE = flags.DEFINE_string("trace", "conversation", "Trace file or bundled trace name.")
_TRACES_DIR = flags.DEFINE_string(
    "traces_dir", None, "A folder searched first for registered traces (pcjax.sim.trace_registry)."
)
_CAPACITY = flags.DEFINE_integer("capacity_tokens", 3_000_000, "Device cache size in tokens.")
_POLICIES = flags.DEFINE_list("policies", None, "Policies (default: all, belady, oracle_lru).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed replays per policy; the best is reported.")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/bench_eviction_speed", "Where results go.")


def main(argv):
    del argv
    trace = open_trace(_TRACE.value, traces_dir=_TRACES_DIR.value)
    blocks = _CAPACITY.value // trace.block_tokens
    refs = sum(len(r.block_ids) for r in trace.requests)
    policies = _POLICIES.value or [*all_policies(), "belady", "oracle_lru"]
    runs = timed_replays(trace, blocks, policies, _REPEATS.value)
    base = runs.get("lru")
    rows = []
    for policy, run in runs.items():
        best, best_cpu = min(run["wall_s"]), min(run["cpu_s"])
        row = {
            "trace": trace.name,
            "policy": policy,
            "capacity_tokens": _CAPACITY.value,
            "block_references": refs,
            "best_s": best,
            "all_s": run["wall_s"],
            "best_cpu_s": best_cpu,
            "us_per_request": 1e6 * best / len(trace.requests),
            "token_hit_rate": run["token_hit_rate"],
            "x_lru": base and best / min(base["wall_s"]),
            "x_lru_cpu": base and best_cpu / min(base["cpu_s"]),
            "load_average": os.getloadavg()[0],
        }
        rows.append(row)
        ratio = f", {row['x_lru']:.2f}x LRU (CPU {row['x_lru_cpu']:.2f}x)" if base else ""
        print(
            f"{policy:>12}: best {best:6.2f} s, CPU {best_cpu:6.2f} s of {_REPEATS.value}"
            f"{ratio}, hit rate {row['token_hit_rate']:.4f}",
            flush=True,
        )
    print(f"load average {os.getloadavg()[0]:.2f}")
    os.makedirs(_WORKDIR.value, exist_ok=True)
    path = os.path.join(_WORKDIR.value, "bench_eviction_speed.json")
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
