"""The report of the shared-prefix benchmark: ratios, round pairing, token agreement, the table."""

import pytest

from experiments import prefix_cache_report


def _run(wall_s, rounds, token_ids, cold=1.0, hit=0.25):
    return {
        "wall_s": wall_s,
        "wall_s_rounds": rounds,
        "token_ids": token_ids,
        "ttft_probe_cold_s": cold,
        "ttft_probe_hit_s": hit,
        "hit_rate": 0.86,
        "prefill_tokens_per_s": 400.0,
        "decode_tokens_per_s": 180.0,
    }


def _results():
    tokens = [[1, 2], [3, 4], [5, 6], [7, 8]]
    return {
        "pcjax": {
            "caching_on/cpu": _run(8.0, [8.0, 9.0, 7.0], tokens),
            "caching_off/cpu": _run(12.0, [12.0], tokens[:3] + [[0, 0]]),
        },
        "vllm": {
            "caching_on": _run(10.0, [10.0, 12.0, 7.0], tokens[:2] + [[5, 0], [7, 8]], 2.0, 0.5),
            "caching_off": None,  # vLLM did not run
        },
    }


def test_ratios_pair_the_rounds_that_ran_together():
    out = prefix_cache_report.compare(_results())
    assert out["caching_on/cpu/wall_ratio_vs_vllm"] == pytest.approx(0.8)
    assert out["caching_on/cpu/round_ratios_vs_vllm"] == pytest.approx([0.8, 0.75, 1.0])
    assert out["caching_on/cpu/same_tokens_as_vllm"] == 0.75  # one request of four differs
    assert out["caching_on/cpu/ttft_cold_over_hit"] == pytest.approx(4.0)
    assert out["vllm/caching_on/ttft_cold_over_hit"] == pytest.approx(4.0)
    assert "caching_off/cpu/wall_ratio_vs_vllm" not in out
    assert out["pcjax_configs_same_tokens"] is False


def test_round_counts_must_match():
    results = _results()
    results["vllm"]["caching_on"]["wall_s_rounds"] = [10.0]
    with pytest.raises(ValueError):
        prefix_cache_report.compare(results)


def test_the_table_shows_every_system_and_ratio(capsys):
    results = _results()
    results["comparison"] = prefix_cache_report.compare(results)
    prefix_cache_report.print_table(results)
    out = capsys.readouterr().out
    assert "pcjax caching_on/cpu wall s per round: 8.000 9.000 7.000" in out
    assert "vLLM caching_on wall s per round: 10.000 12.000 7.000" in out
    assert "caching_on/cpu/wall_ratio_vs_vllm: 0.800" in out
    assert "vLLM caching_off" not in out
