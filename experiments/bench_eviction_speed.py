r"""Replay speed per policy: the full Mooncake conversation trace (288,500 block references) at one
capacity, sequential mode, best of --repeats. Loading the trace and building Belady's next-use
table are outside the timed region (they are per trace, not per replay).

    python -m experiments.bench_eviction_speed --capacity_tokens=3000000 --repeats=3

Writes ``bench_eviction_speed.json`` to --workdir. The issue's budget: under 5 s per online
policy and under 15 s for Belady on a 2-core machine.
"""

import json
import os

from absl import app, flags

from pcjax.cache.policies import all_policies
from pcjax.sim.replay import replay
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
    rows = []
    for policy in _POLICIES.value or [*all_policies(), "belady", "oracle_lru"]:
        results = [replay(trace, blocks, policy) for _ in range(_REPEATS.value)]
        best = min(r.runtime_s for r in results)
        rows.append(
            {
                "trace": trace.name,
                "policy": policy,
                "capacity_tokens": _CAPACITY.value,
                "block_references": refs,
                "best_s": best,
                "all_s": [r.runtime_s for r in results],
                "us_per_request": 1e6 * best / len(trace.requests),
                "token_hit_rate": results[0].token_hit_rate,
            }
        )
        row = rows[-1]
        print(
            f"{policy:>10}: best {best:6.2f} s of {_REPEATS.value} "
            f"({row['us_per_request']:5.1f} us/request), hit rate {row['token_hit_rate']:.4f}",
            flush=True,
        )
    os.makedirs(_WORKDIR.value, exist_ok=True)
    path = os.path.join(_WORKDIR.value, "bench_eviction_speed.json")
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
