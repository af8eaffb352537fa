"""Tests for the vLLM peer client and the runner's pure parts (no vLLM needed, a second or two).

The one test that runs vLLM for real (~2-3 min on 2 cores) only runs when PCJAX_VLLM_PYTHON
names the vLLM venv's interpreter, e.g.

    PCJAX_VLLM_PYTHON=.peers/vllm/bin/python .venv/bin/python -m pytest tests/experiments -k real
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from experiments.peers import vllm_peer, vllm_runner


@pytest.fixture
def model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A directory that passes the spec check (a config.json and nothing else)."""
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 512}))
    return tmp_path


def one_pass(name: str = "timed", prompt_len: int = 8, max_tokens: int = 4) -> dict:
    """A pass with two prompts of `prompt_len` tokens."""
    prompts = [list(range(3, 3 + prompt_len)), list(range(4, 4 + prompt_len))]
    return {"name": name, "prompts": prompts, "max_tokens": max_tokens}


def test_make_spec_fills_defaults_and_keeps_overrides(model_dir):
    spec = vllm_peer.make_spec(model_dir, [one_pass()], enable_prefix_caching=False)
    assert spec["enable_prefix_caching"] is False
    assert spec["max_num_seqs"] == 8
    assert spec["block_size"] == 16
    assert spec["dtype"] == "float32"
    assert spec["model_dir"] == str(model_dir)


@pytest.mark.parametrize(
    ("settings", "passes", "message"),
    [
        ({"max_num_seq": 8}, [one_pass()], "unknown spec keys"),
        ({}, [], "no passes"),
        ({"max_model_len": 10}, [one_pass(prompt_len=8, max_tokens=4)], "max_model_len"),
        ({}, [one_pass(max_tokens=0)], "max_tokens"),
        ({}, [{"name": "x", "prompts": [[]], "max_tokens": 1}], "prompts"),
    ],
)
def test_make_spec_rejects_bad_specs(model_dir, settings, passes, message):
    with pytest.raises(ValueError, match=message):
        vllm_peer.make_spec(model_dir, passes, **settings)


def test_make_spec_rejects_a_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match=r"config\.json"):
        vllm_peer.make_spec(tmp_path, [one_pass()])


@pytest.mark.parametrize(
    ("config", "ok"),
    [
        ({"hidden_size": 64, "num_attention_heads": 4}, False),  # head_dim 16
        ({"hidden_size": 64, "num_attention_heads": 2}, True),  # head_dim 32
        ({"hidden_size": 512, "num_attention_heads": 8, "head_dim": 48}, False),
        ({"vocab_size": 512}, True),  # nothing to check
    ],
)
def test_make_spec_checks_the_head_dim_vllm_cpu_supports(tmp_path, config, ok):
    (tmp_path / "config.json").write_text(json.dumps(config))
    if ok:
        vllm_peer.make_spec(tmp_path, [one_pass()])
    else:
        with pytest.raises(ValueError, match="head_dim"):
            vllm_peer.make_spec(tmp_path, [one_pass()])


def test_write_spec_round_trips_through_the_runner_loader(model_dir, tmp_path):
    spec = vllm_peer.make_spec(model_dir, [one_pass("warmup"), one_pass("timed")])
    path = vllm_peer.write_spec(spec, tmp_path)
    assert vllm_runner.load_spec(str(path)) == spec


def test_skip_with_a_missing_interpreter_returns_none_and_says_why(model_dir, capsys):
    spec = vllm_peer.make_spec(model_dir, [one_pass()])
    missing = str(model_dir / "no-such-venv" / "bin" / "python")
    assert vllm_peer.run_vllm(missing, spec, timeout_s=5) is None
    out = capsys.readouterr().out
    assert out.startswith("vLLM peer skipped:")
    assert missing in out
    assert "setup_vllm_cpu.sh .peers/vllm" in out


def test_skip_with_no_interpreter_at_all(model_dir, capsys):
    assert (
        vllm_peer.run_vllm(None, vllm_peer.make_spec(model_dir, [one_pass()]), timeout_s=5) is None
    )
    assert "no vLLM python given" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_skip_with_an_interpreter_without_vllm(model_dir, capsys):
    spec = vllm_peer.make_spec(model_dir, [one_pass()])
    assert vllm_peer.run_vllm(sys.executable, spec, timeout_s=60) is None
    assert "vllm is not importable" in capsys.readouterr().out


def test_bad_spec_raises_before_looking_for_the_interpreter(model_dir):
    with pytest.raises(ValueError, match="no passes"):
        vllm_peer.run_vllm(None, {"model_dir": str(model_dir), "passes": []}, timeout_s=5)


def test_default_vllm_python_is_under_the_repo_root(tmp_path):
    assert vllm_peer.default_vllm_python(tmp_path) is None
    python = tmp_path / ".peers" / "vllm" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    assert vllm_peer.default_vllm_python(tmp_path) == str(python)


def test_runner_env_applies_defaults_then_overrides_and_drops_pythonpath(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/pcjax")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "8")
    env = vllm_peer.runner_env({"VLLM_CPU_OMP_THREADS_BIND": "0"})
    assert "PYTHONPATH" not in env
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"  # the default beats the ambient value
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0"  # an explicit override beats the default
    assert env["PATH"] == os.environ["PATH"]


def test_shared_prefix_prompts_share_exactly_the_prefix():
    prompts = vllm_peer.shared_prefix_prompts(4, 16, 8, 512, seed=0)
    assert [len(p) for p in prompts] == [24] * 4
    assert all(p[:16] == prompts[0][:16] for p in prompts)
    assert len({tuple(p[16:]) for p in prompts}) == 4
    assert all(3 <= t < 512 for p in prompts for t in p)
    assert prompts == vllm_peer.shared_prefix_prompts(4, 16, 8, 512, seed=0)
    assert prompts != vllm_peer.shared_prefix_prompts(4, 16, 8, 512, seed=1)


def test_find_pass():
    result = {"passes": [{"name": "warmup"}, {"name": "timed", "wall_s": 1.0}]}
    assert vllm_peer.find_pass(result, "timed")["wall_s"] == 1.0
    with pytest.raises(KeyError, match="cold"):
        vllm_peer.find_pass(result, "cold")


@pytest.mark.parametrize(("requested", "used"), [(16, 32), (32, 32), (33, 64), (128, 128)])
def test_cpu_block_size_rounds_up_to_a_multiple_of_32(requested, used):
    assert vllm_runner.cpu_block_size(requested) == used


def test_engine_kwargs_record_the_block_size_adjustment(model_dir):
    spec = vllm_peer.make_spec(model_dir, [one_pass()], extra_engine_args={"enforce_eager": True})
    kwargs = vllm_runner.engine_kwargs(spec)
    assert kwargs["block_size"] == 32
    assert kwargs["skip_tokenizer_init"] is True  # model_dir has no tokenizer files
    assert kwargs["disable_log_stats"] is False  # stats fill RequestOutput.metrics (TTFT)
    assert kwargs["enforce_eager"] is True
    assert "max_num_batched_tokens" not in kwargs
    assert vllm_runner.adjustments(spec) == [
        "block_size 16 -> 32: vLLM's CPU attention (CPU_ATTN) takes only multiples of 32"
    ]


def test_summarize_skips_missing_values():
    s = vllm_runner.summarize([1.0, None, 3.0, 2.0])
    assert s["n"] == 3
    assert s["min"] == 1.0 and s["p50"] == 2.0 and s["max"] == 3.0 and s["mean"] == 2.0
    assert vllm_runner.summarize([None]) is None


def test_decode_step_s():
    rec = {"token_ids": [5, 6, 7, 8, 9], "decode_s": 0.2}
    assert vllm_runner.decode_step_s(rec) == pytest.approx(0.05)
    assert vllm_runner.decode_step_s({**rec, "decode_s": None}) is None
    assert vllm_runner.decode_step_s({"token_ids": [5], "decode_s": 0.0}) is None


def test_counter_delta():
    d = vllm_runner.counter_delta({"queries": 10, "hits": 2}, {"queries": 30, "hits": 17})
    assert d == {"queries": 20, "hits": 15, "hit_rate": 0.75}
    assert vllm_runner.counter_delta(d, d)["hit_rate"] is None
    assert vllm_runner.counter_delta(None, None) == {
        "queries": None,
        "hits": None,
        "hit_rate": None,
    }


def test_a_failed_runner_raises_with_its_error_lines_and_log_tail(tmp_path):
    digest = vllm_peer.LogDigest()
    error = "(Worker) ERROR RuntimeError: Unsupported CPU attention"
    lines = [error, error, *["traceback line"] * 50, "last line"]  # the error is not in the tail
    for line in lines:
        digest.add(line)
    (tmp_path / "result.json").write_text(json.dumps({"ok": False, "error": "EngineDeadError"}))
    with pytest.raises(vllm_peer.VllmPeerError) as e:
        vllm_peer.read_result(tmp_path / "result.json", 1, digest)
    message = str(e.value)
    assert message.startswith("vLLM peer failed: EngineDeadError")
    assert message.count("RuntimeError: Unsupported CPU attention") == 1
    assert message.endswith("last line")
    with pytest.raises(vllm_peer.VllmPeerError, match="no result written"):
        vllm_peer.read_result(tmp_path / "missing.json", -9, digest)


def test_a_runner_past_its_timeout_is_killed(model_dir, tmp_path, monkeypatch):
    code = "import sys, time; print('started', flush=True); time.sleep(60)"

    def start(python, spec_path, out_path, env):
        return subprocess.Popen(
            [sys.executable, "-S", "-c", code],  # -S: starts in ms even on a busy machine
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    monkeypatch.setattr(vllm_peer, "start_runner", start)
    log = tmp_path / "vllm.log"
    spec = vllm_peer.make_spec(model_dir, [one_pass()])
    run = vllm_peer.GatedRun(sys.executable, spec, timeout_s=2.0, log_path=log)
    with pytest.raises(vllm_peer.VllmPeerError, match="timed out after 2 s(.|\n)*started"):
        run.finish()
    assert run.proc.returncode is not None
    assert log.read_text() == "started\n"


def test_process_tree_cpu_counts_child_processes():
    code = (
        "import sys, time\n"
        "while time.process_time() < 0.3: pass\n"
        "print('done', flush=True); time.sleep(30)"
    )
    before = vllm_runner.process_tree_cpu_s()
    child = subprocess.Popen([sys.executable, "-S", "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "done\n"
        assert vllm_runner.process_tree_cpu_s() - before >= 0.25  # 10 ms clock ticks
    finally:
        child.kill()
        child.wait()


def fake_result() -> dict:
    """The parts of a runner result that format_summary reads."""
    timed = {
        "name": "timed",
        "wall_s": 2.0,
        "num_requests": 4,
        "ttft_s": {"p50": 0.1, "p90": 0.2, "max": 0.3},
        "cached_tokens": 96,
        "prompt_tokens": 160,
        "prefix_cache": {"hit_rate": 0.6},
        "cpu_s": 3.0,
        "load_avg_1m": {"before": 1.0, "after": 1.5},
    }
    return {
        "versions": {"vllm": "0.32.0"},
        "device": "cpu",
        "engine_start_s": 70.0,
        "effective_config": {
            "enable_prefix_caching": True,
            "block_size": 32,
            "max_num_batched_tokens": 4096,
        },
        "passes": [
            timed,
            {**timed, "name": "off", "ttft_s": None, "prefix_cache": {"hit_rate": None}},
        ],
    }


def test_format_summary():
    lines = vllm_peer.format_summary(fake_result()).splitlines()
    assert "engine start 70.0 s" in lines[0] and "block 32" in lines[0]
    assert "timed:   2.00 s" in lines[1]
    assert "cached 96/160 tok  hit rate 0.600  cpu 1.50 cores" in lines[1]
    assert "ttft p50 nan" in lines[2] and "hit rate n/a" in lines[2]


def vllm_python_for_real_runs() -> str | None:
    """The interpreter named by PCJAX_VLLM_PYTHON, or None (the real-run test is opt-in)."""
    return os.environ.get("PCJAX_VLLM_PYTHON") or None


@pytest.mark.slow
@pytest.mark.timeout(1500)  # its model build (300 s) and vLLM run (900 s) bound themselves
@pytest.mark.skipif(
    vllm_python_for_real_runs() is None,
    reason="set PCJAX_VLLM_PYTHON=.peers/vllm/bin/python to run vLLM for real (~2-3 min)",
)
def test_real_vllm_run_on_a_tiny_random_llama(tmp_path):
    python = vllm_python_for_real_runs()
    maker = pathlib.Path(vllm_peer.__file__).with_name("make_random_llama.py")
    model = tmp_path / "llama"
    tiny = ["--layers=2", "--hidden=64", "--intermediate=128", "--heads=2", "--kv-heads=1"]
    args = [python, str(maker), str(model), *tiny, "--vocab=512", "--init-std=0.3"]
    subprocess.run(args, check=True, capture_output=True, timeout=300)
    prompts = vllm_peer.shared_prefix_prompts(4, 64, 8, 512, seed=0)
    passes = [{"name": n, "prompts": prompts, "max_tokens": 4} for n in ("cold", "warm")]
    spec = vllm_peer.make_spec(
        model, passes, max_model_len=128, reset_prefix_cache_between_passes=False
    )
    result = vllm_peer.run_vllm(python, spec, timeout_s=900, log_path=tmp_path / "vllm.log")
    assert result is not None and result["ok"]
    assert result["effective_config"]["block_size"] == 32
    cold, warm = result["passes"]
    for p in (cold, warm):
        assert p["generated_tokens"] == 16
        assert all(r["finish_reason"] == "length" and r["ttft_s"] > 0 for r in p["requests"])
    # Same prompts again, cache kept: every request reuses its two full 32-token blocks.
    assert [r["num_cached_tokens"] for r in warm["requests"]] == [64] * 4
    assert warm["prefix_cache"]["hits"] == 4 * 64
    # Greedy tokens do not change when the prefix comes from the cache.
    assert [r["token_ids"] for r in warm["requests"]] == [r["token_ids"] for r in cold["requests"]]


# ------------------------------------------------------------------------------------ gates

FAKE_RUNNER = """
import json, os, sys
sys.path.insert(0, {root!r})
from experiments.peers import vllm_runner
spec = json.load(open(sys.argv[1]))
passes = []
for p in spec["passes"]:
    if {die_before!r} == p["name"]:
        print("RuntimeError: engine died", flush=True)
        sys.exit(3)
    if p["name"] in spec["gated_passes"]:
        vllm_runner.wait_for_go(spec["gate_dir"], p["name"], 30)
    with open(os.path.join(spec["gate_dir"], "order.txt"), "a") as log:
        log.write("vllm " + p["name"] + "\\n")
    passes.append({{"name": p["name"], "wall_s": 0.0}})
    if p["name"] in spec["gated_passes"]:
        vllm_runner.touch(os.path.join(spec["gate_dir"], "done_" + p["name"]))
vllm_runner.write_json(sys.argv[2], {{"ok": True, "passes": passes}})
"""


@pytest.fixture
def fake_runner(monkeypatch, tmp_path):
    """Makes `GatedRun` start a stand-in for vllm_runner.py that keeps the gate protocol with
    the runner's own gate functions; returns a setter for the pass it dies before."""
    script = tmp_path / "fake_runner.py"

    def use(die_before: str = ""):
        root = str(vllm_peer.repo_root())
        script.write_text(FAKE_RUNNER.format(root=root, die_before=die_before))

    def start(python, spec_path, out_path, env):
        return subprocess.Popen(
            [sys.executable, "-S", str(script), str(spec_path), str(out_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    monkeypatch.setattr(vllm_peer, "start_runner", start)
    use()
    return use


def test_gated_passes_run_only_when_released_and_in_turn(model_dir, fake_runner):
    passes = [one_pass("warmup"), one_pass("timed_0"), one_pass("timed_1")]
    spec = vllm_peer.make_spec(model_dir, passes, gated_passes=["timed_0", "timed_1"])
    with vllm_peer.GatedRun(sys.executable, spec, timeout_s=60) as run:
        order = run.gate_dir / "order.txt"
        for name in ("timed_0", "timed_1"):
            run.wait_ready(name)
            with open(order, "a") as log:
                log.write(f"ours {name}\n")  # vLLM waits at the gate meanwhile
            run.release(name)
        lines = order.read_text().split("\n")
        result = run.finish()
    assert lines[:-1] == ["vllm warmup", "ours timed_0", "vllm timed_0", "ours timed_1",
                          "vllm timed_1"]  # fmt: skip
    assert [p["name"] for p in result["passes"]] == ["warmup", "timed_0", "timed_1"]
    assert not run.gate_dir.exists()  # cleaned up


def test_a_runner_that_dies_before_a_gate_raises_with_its_log(model_dir, fake_runner):
    fake_runner(die_before="timed_0")
    spec = vllm_peer.make_spec(model_dir, [one_pass("timed_0")], gated_passes=["timed_0"])
    run = vllm_peer.GatedRun(sys.executable, spec, timeout_s=60)
    with pytest.raises(vllm_peer.VllmPeerError, match="exit status 3(.|\n)*engine died"):
        run.wait_ready("timed_0")
    assert run.proc.returncode == 3


def test_a_gate_never_reached_times_out_and_kills_the_runner(model_dir, fake_runner):
    spec = vllm_peer.make_spec(model_dir, [one_pass("a"), one_pass("b")], gated_passes=["a"])
    run = vllm_peer.GatedRun(sys.executable, spec, timeout_s=1.0)
    with pytest.raises(vllm_peer.VllmPeerError, match="timed out waiting for ready_b"):
        run.wait_ready("b")  # "b" is not gated: its ready file never comes
    assert run.proc.returncode is not None


def test_gated_passes_must_name_passes(model_dir):
    with pytest.raises(ValueError, match="gated pass 'nope'"):
        vllm_peer.make_spec(model_dir, [one_pass("a")], gated_passes=["nope"])


def test_wait_for_go_returns_on_go_and_times_out_without(tmp_path):
    (tmp_path / "go_a").touch()
    vllm_runner.wait_for_go(str(tmp_path), "a", 1.0)
    assert (tmp_path / "ready_a").exists()
    with pytest.raises(TimeoutError, match="no go for pass 'b'"):
        vllm_runner.wait_for_go(str(tmp_path), "b", 0.1)
