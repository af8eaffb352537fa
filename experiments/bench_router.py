"""N pcjax servers behind SGLang's model gateway (sglang-router): prefix hit rate and TTFT with
``cache_aware`` routing against ``round_robin``.

    pip install sglang-router
    python -m experiments.bench_router --model=pcjax-small --groups=8 --per_group=3

Starts ``--num_servers`` pcjax servers and, per policy, ``sglang-router launch --policy P
--worker-urls ...`` in its default backend, all on 127.0.0.1. The workload: ``--groups`` text
prefixes of ``--prefix_chars`` characters, each followed by ``--per_group`` questions, sent in a
seeded random order by ``--concurrency`` streaming clients (with every request in flight at
once the gateway's cache_aware policy can spread new prefixes by load; sent one by one every
new prefix would go to the first worker). Before each policy the servers' prefix caches are
emptied, so both start cold; an unmeasured warm-up pass per policy (another seed) compiles the
servers' programs first, and the policies take turns going first in a round.

Hit rate: cached prompt tokens / prompt tokens, from the responses' ``usage`` and from the
servers' ``pcjax:prefix_cache_*`` metrics. TTFT: first streamed chunk, at the client. Greedy
outputs must not depend on the route: the texts of both policies are compared. ``--rounds``
repeat this with other workload seeds (every policy, caches emptied, per round). Prints a table
per round and the totals; writes ``bench_router.json`` under ``--workdir``.

What to expect. With Q questions per prefix in random order over 2 servers, ideal affinity
misses once per group (hit share (Q-1)/Q of the prefix tokens), while round robin misses once
per server a group touches, ``2 - 2^(1-Q)`` on average: the expected ratio is
``(Q-1) / (Q-2+2^(1-Q))``: 2.0 for Q = 2, 1.6 for Q = 3, 1.41 for Q = 4 (and it grows with the
number of servers). Round robin's rate varies with the order, hence several rounds.
"""

import json
import os
import statistics

from absl import app, flags

from experiments.router_utils import compare, make_workload, router_command

_MODEL = flags.DEFINE_string("model", "pcjax-small", "preset or checkpoint dir of the servers")
_NUM_SERVERS = flags.DEFINE_integer("num_servers", 2, "pcjax servers behind the gateway")
_POLICIES = flags.DEFINE_list("policies", ["cache_aware", "round_robin"], "gateway policies")
_GROUPS = flags.DEFINE_integer("groups", 8, "prefix groups")
_PER_GROUP = flags.DEFINE_integer("per_group", 3, "questions per prefix")
_PREFIX_CHARS = flags.DEFINE_integer("prefix_chars", 1024, "characters of each shared prefix")
_QUESTION_CHARS = flags.DEFINE_integer("question_chars", 64, "characters of each question")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 16, "generated tokens per request")
_CONCURRENCY = flags.DEFINE_integer("concurrency", 4, "requests in flight")
_SERVER_FLAGS = flags.DEFINE_list("server_flags", [], "extra flags of every pcjax server")
_SEED = flags.DEFINE_integer("seed", 0, "workload seed of the first round")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "rounds (workload seeds seed, seed + 1, ...)")
_TIMEOUT = flags.DEFINE_float("timeout_s", 900, "bound on each phase (start, one policy)")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/bench_router", "where the JSON goes")


def totals(rounds: list[list[dict]]) -> list[dict]:
    """Per policy over all rounds: token-weighted hit rates and pooled TTFTs."""
    out = []
    for rows in zip(*rounds, strict=True):
        records = [r for row in rows for r in row["records"] if r and r["status"] == 200]
        ttfts = [r["ttft_s"] for r in records if r["ttft_s"] is not None]
        prompt = sum(r["prompt_tokens"] for r in records)
        per_server = zip(*(row["requests_per_server"] for row in rows), strict=True)
        out.append(
            {
                "policy": rows[0]["policy"],
                "ok": len(records),
                "hit_rate_usage": sum(r["cached_tokens"] for r in records) / max(1, prompt),
                "hit_rate_metrics": statistics.fmean(row["hit_rate_metrics"] for row in rows),
                "ttft_p50_s": statistics.median(ttfts),
                "ttft_mean_s": statistics.fmean(ttfts),
                "wall_s": sum(row["wall_s"] for row in rows),
                "requests_per_server": [sum(x) for x in per_server],
            }
        )
    return out


def print_rows(title: str, rows: list[dict]) -> None:
    print(title)
    print(
        f"  {'policy':<13}{'ok':>4}{'hit(usage)':>11}{'hit(metrics)':>13}{'TTFT p50':>10}"
        f"{'TTFT mean':>10}{'wall s':>8}  per server"
    )
    for r in rows:
        print(
            f"  {r['policy']:<13}{r['ok']:>4}{r['hit_rate_usage']:>11.3f}"
            f"{r['hit_rate_metrics']:>13.3f}{r['ttft_p50_s']:>10.3f}{r['ttft_mean_s']:>10.3f}"
            f"{r['wall_s']:>8.1f}  {r['requests_per_server']}"
        )


def main(argv):
    del argv
    if router_command() is None:
        raise app.UsageError("sglang-router is not installed: pip install sglang-router")
    shape = (_GROUPS.value, _PER_GROUP.value, _PREFIX_CHARS.value, _QUESTION_CHARS.value)
    opts = {
        "concurrency": _CONCURRENCY.value,
        "max_tokens": _MAX_TOKENS.value,
        "timeout": _TIMEOUT.value,
    }
    workloads = [make_workload(_SEED.value + r, *shape) for r in range(_ROUNDS.value)]
    warmup = make_workload(_SEED.value + 1000, *shape)
    rounds = compare(
        _MODEL.value,
        _NUM_SERVERS.value,
        _POLICIES.value,
        workloads,
        warmup,
        opts,
        _SERVER_FLAGS.value,
        _WORKDIR.value,
    )
    same = all(row["texts"] == rows[0]["texts"] for rows in rounds for row in rows)
    print(
        f"{_NUM_SERVERS.value} x {_MODEL.value} behind sglang-router, {_GROUPS.value} groups x "
        f"{_PER_GROUP.value} questions, concurrency {_CONCURRENCY.value}, "
        f"1-min load {os.getloadavg()[0]:.1f}"
    )
    for r, rows in enumerate(rounds):
        print_rows(f"round {r} (seed {_SEED.value + r})", rows)
    total = totals(rounds)
    print_rows(f"all {len(rounds)} rounds", total)
    if len(total) > 1 and total[-1]["hit_rate_usage"] > 0:
        ratio = total[0]["hit_rate_usage"] / total[-1]["hit_rate_usage"]
        print(f"hit rate ratio {total[0]['policy']} / {total[-1]['policy']}: {ratio:.2f}")
    print(f"outputs identical across policies: {same}")
    for rows in rounds:
        for row in rows:
            row.pop("records")
    config = {
        "model": _MODEL.value,
        "groups": _GROUPS.value,
        "per_group": _PER_GROUP.value,
        "concurrency": _CONCURRENCY.value,
        "num_servers": _NUM_SERVERS.value,
    }
    with open(os.path.join(_WORKDIR.value, "bench_router.json"), "w") as f:
        json.dump(
            {"config": config, "rounds": rounds, "totals": total, "outputs_identical": same},
            f,
            indent=1,
        )


if __name__ == "__main__":
    app.run(main)
