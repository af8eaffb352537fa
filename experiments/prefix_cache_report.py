"""The report of `experiments.bench_prefix_cache`: pcjax/vLLM ratios and the side-by-side table,
from its ``results`` dict (no absl flags here, so tests import it).

``results`` holds ``pcjax`` (per ``caching_<on|off>/<impl>``) and ``vllm`` (per
``caching_<on|off>``, None where vLLM did not run) entries with ``wall_s`` (the median round),
``wall_s_rounds``, ``token_ids`` of round 0 and the TTFT probes. Example::

    results = {"pcjax": {"caching_on/cpu": run}, "vllm": {"caching_on": peer}}
    compare(results)["caching_on/cpu/wall_ratio_vs_vllm"]   # run["wall_s"] / peer["wall_s"]
"""


def compare(results: dict) -> dict:
    """pcjax/vLLM wall-time ratios per caching setting (of the median rounds, and round by
    round: the rounds that ran next to each other when interleaved), and greedy-token
    agreement."""
    out = {}
    for name, run in results["pcjax"].items():
        caching = name.split("/")[0]
        peer = results["vllm"].get(caching)
        if peer:
            out[f"{name}/wall_ratio_vs_vllm"] = run["wall_s"] / peer["wall_s"]
            pairs = zip(run["wall_s_rounds"], peer["wall_s_rounds"], strict=True)
            out[f"{name}/round_ratios_vs_vllm"] = [ours / theirs for ours, theirs in pairs]
            out[f"{name}/same_tokens_as_vllm"] = _agreement(run["token_ids"], peer["token_ids"])
        if run.get("ttft_probe_hit_s"):
            out[f"{name}/ttft_cold_over_hit"] = run["ttft_probe_cold_s"] / run["ttft_probe_hit_s"]
    for caching, peer in results["vllm"].items():
        if peer and peer.get("ttft_probe_hit_s"):
            ratio = peer["ttft_probe_cold_s"] / peer["ttft_probe_hit_s"]
            out[f"vllm/{caching}/ttft_cold_over_hit"] = ratio
    runs = list(results["pcjax"].values())
    if len(runs) > 1:
        out["pcjax_configs_same_tokens"] = all(r["token_ids"] == runs[0]["token_ids"] for r in runs)
    return out


def _agreement(a, b) -> float | None:
    if not a or not b:
        return None
    return sum(x == y for x, y in zip(a, b, strict=False)) / len(a)


def print_table(results: dict) -> None:
    rows = [
        ("system", "wall s", "TTFT cold", "TTFT hit", "hit rate", "prefill tok/s", "decode tok/s")
    ]
    for name, r in results["pcjax"].items():
        rows.append(
            (
                f"pcjax {name}",
                r["wall_s"],
                r["ttft_probe_cold_s"],
                r["ttft_probe_hit_s"],
                r["hit_rate"],
                r["prefill_tokens_per_s"],
                r["decode_tokens_per_s"],
            )
        )
    for name, r in results["vllm"].items():
        if r:
            rows.append(
                (
                    f"vLLM {name}",
                    r["wall_s"],
                    r["ttft_probe_cold_s"],
                    r["ttft_probe_hit_s"],
                    "",
                    "",
                    "",
                )
            )
    for row in rows:
        print("  ".join(f"{_fmt(v):>14}" if i else f"{v:<28}" for i, v in enumerate(row)))
    systems = [(f"pcjax {n}", r) for n, r in results["pcjax"].items()]
    systems += [(f"vLLM {n}", r) for n, r in results["vllm"].items() if r]
    for name, r in systems:
        print(f"{name} wall s per round: " + " ".join(_fmt(w) for w in r["wall_s_rounds"]))
    for key, value in results["comparison"].items():
        print(f"{key}: {_fmt(value)}")


def _fmt(value) -> str:
    if isinstance(value, list):
        return " ".join(_fmt(v) for v in value)
    return f"{value:.3f}" if isinstance(value, float) else str(value)
