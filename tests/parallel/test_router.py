"""Two pcjax servers behind SGLang's gateway (sglang-router, default backend): the gateway
registers them (its health and info probes are answered), and cache_aware routing reaches at
least 1.5x the prefix hit rate of round_robin on 8 prefix groups, outputs unchanged (the pass
of `experiments.bench_router`, small: pcjax-tiny, 8 groups x 2 questions, one round)."""

import pytest

from experiments import router_utils

pytestmark = pytest.mark.skipif(
    router_utils.router_command() is None,
    reason="sglang-router is not installed (pip install sglang-router)",
)

SERVER_FLAGS = ["--block-size", "16", "--max-model-len", "1024", "--max-num-seqs", "4",
                "--attention-impl", "cpu"]  # fmt: skip


def test_cache_aware_routing_keeps_prefixes_together(cpu_only, tmp_path):
    workload = router_utils.make_workload(
        0, groups=8, per_group=2, prefix_chars=384, question_chars=24
    )
    opts = {"concurrency": 4, "max_tokens": 4, "timeout": 600}
    [rows] = router_utils.compare(
        "pcjax-tiny",
        2,
        ["cache_aware", "round_robin"],
        [workload],
        None,
        opts,
        SERVER_FLAGS,
        str(tmp_path),
    )
    aware, robin = rows
    assert aware["failed"] == robin["failed"] == 0
    assert aware["texts"] == robin["texts"]  # greedy outputs do not depend on the route
    assert aware["hit_rate_usage"] == pytest.approx(aware["hit_rate_metrics"])
    assert aware["hit_rate_usage"] >= 1.5 * robin["hit_rate_usage"]
    assert aware["hit_rate_usage"] > 0.4  # every second question hits (at most ~0.46 here)
    assert sum(aware["requests_per_server"]) == sum(robin["requests_per_server"]) == 16
