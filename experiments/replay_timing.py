"""Timed replays for `experiments.bench_eviction_speed`, without absl flags (importable beside
other experiments' modules in one process, as the tests do)."""

import time

from pcjax.sim.replay import replay


def timed_replays(trace, blocks: int, policies: list[str], repeats: int) -> dict[str, dict]:
    """``repeats`` rounds, each replaying every policy once in turn: per policy its wall times,
    CPU times and token hit rate."""
    runs = {p: {"wall_s": [], "cpu_s": [], "token_hit_rate": None} for p in policies}
    for _ in range(repeats):
        for policy in policies:
            cpu = time.process_time()
            result = replay(trace, blocks, policy)
            runs[policy]["cpu_s"].append(time.process_time() - cpu)
            runs[policy]["wall_s"].append(result.runtime_s)
            runs[policy]["token_hit_rate"] = result.token_hit_rate
    return runs
