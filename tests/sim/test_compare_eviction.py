"""The experiment script end to end on a tiny generator trace: JSON rows and their fields."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIELDS = {"trace", "policy", "capacity_tokens", "token_hit_rate", "block_hit_rate", "runtime_s"}


@pytest.mark.parametrize("mode", ["sequential", "timed"])
def test_compare_eviction_writes_one_row_per_trace_policy_capacity(tmp_path, mode):
    cmd = [
        sys.executable,
        "-m",
        "experiments.compare_eviction",
        "--trace=agent",
        "--num_requests=120",
        "--limit=100",
        "--block_tokens=64",
        "--capacities_tokens=3200,12800",
        f"--mode={mode}",
        "--check_every=10",
        f"--workdir={tmp_path}",
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    with open(tmp_path / f"compare_eviction_{mode}.json") as f:
        result = json.load(f)
    rows = result["rows"]
    policies = {r["policy"] for r in rows}
    assert {"lru", "deadline", "belady", "oracle_lru", "infinite"} <= policies
    class_bounds = {p for p in policies if p.startswith("bound:")}
    hindsight = {p for p in policies if p.startswith("hindsight:")}
    if mode == "sequential":
        assert {"bound:none", "bound:uses", "bound:uses+gap"} <= class_bounds
        assert {p.replace("bound:", "hindsight:") for p in class_bounds} == hindsight
    else:
        assert not class_bounds and not hindsight
    assert len(rows) == 2 * len(policies)
    assert all(r.keys() >= FIELDS and r["num_requests"] == 100 for r in rows)
    for r in rows:
        best = next(
            b
            for b in rows
            if b["policy"] == "belady" and b["capacity_tokens"] == r["capacity_tokens"]
        )
        assert r["fraction_of_belady"] == pytest.approx(
            r["token_hit_rate"] / best["token_hit_rate"]
        )
        if mode == "sequential" and r["policy"] not in {"infinite", *class_bounds}:
            assert r["block_hit_rate"] <= best["block_hit_rate"]


def test_named_sweeps_are_valid_and_resolve_their_traces():
    from configs import eviction
    from pcjax.sim.generators import GENERATORS
    from pcjax.sim.trace import MOONCAKE_TRACES

    for name, sweep in eviction.SWEEPS.items():
        assert eviction.get_config(name) is sweep
        assert set(sweep.trace) <= set(GENERATORS) | set(MOONCAKE_TRACES)
    with pytest.raises(ValueError, match="unknown sweep"):
        eviction.get_config("nope")
    with pytest.raises(ValueError, match="positive"):
        eviction.EvictionSweep(("chat",), capacities_tokens=(0,))
