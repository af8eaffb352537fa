"""Runs the shared-prefix workload through the vLLM CPU peer alone and prints its figures.

A smoke run for the peer, not the benchmark (that is experiments/bench_prefix_cache.py): a
warm-up pass and a timed pass, each with its own random prompts (a shared prefix plus unique
suffixes), greedy, one vLLM engine.

    .venv/bin/python -m experiments.peers.vllm_shared_prefix --model_dir=/tmp/llama \
        --prefix_caching=false --out=/tmp/vllm_off.json
"""

import json
import pathlib

from absl import app, flags

from experiments.peers import vllm_peer

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Hugging Face model directory.", required=True)
_PYTHON = flags.DEFINE_string("python", None, "vLLM venv python (default: .peers/vllm/bin/python).")
_PREFIX_CACHING = flags.DEFINE_bool("prefix_caching", True, "vLLM's enable_prefix_caching.")
_NUM_REQUESTS = flags.DEFINE_integer("num_requests", 32, "Requests per pass.")
_PREFIX_LEN = flags.DEFINE_integer("prefix_len", 512, "Tokens of the shared prefix.")
_SUFFIX_LEN = flags.DEFINE_integer("suffix_len", 64, "Tokens of each request's own suffix.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 32, "New tokens per request.")
_MAX_NUM_SEQS = flags.DEFINE_integer("max_num_seqs", 8, "Requests running at once.")
_BLOCK_SIZE = flags.DEFINE_integer("block_size", 16, "KV block size (vLLM CPU rounds up to 32s).")
_MAX_BATCHED = flags.DEFINE_integer("max_num_batched_tokens", None, "Token budget per step.")
_EXTRA = flags.DEFINE_string("extra_engine_args", "{}", "JSON dict passed to vllm.LLM as is.")
_TIMED_PASSES = flags.DEFINE_integer("timed_passes", 1, "Timed passes after the warm-up.")
_SEED = flags.DEFINE_integer("seed", 0, "Prompt seed (pass i uses seed + i).")
_OUT = flags.DEFINE_string("out", None, "Where to write the result JSON.")
_LOG = flags.DEFINE_string("log", None, "Where to write vLLM's full log.")
_ECHO = flags.DEFINE_bool("echo", False, "Stream vLLM's log to stderr.")
_TIMEOUT = flags.DEFINE_float("timeout_s", 900.0, "Wall-clock limit for the vLLM run.")


def pass_names() -> list[str]:
    """warmup, timed, timed_2, timed_3, ..."""
    extra = [f"timed_{i}" for i in range(2, _TIMED_PASSES.value + 1)]
    return ["warmup", "timed", *extra]


def make_passes(vocab_size: int) -> list[dict]:
    """A warm-up and the timed passes, each over its own random shared-prefix prompts."""
    passes = []
    for i, name in enumerate(pass_names()):
        prompts = vllm_peer.shared_prefix_prompts(
            _NUM_REQUESTS.value, _PREFIX_LEN.value, _SUFFIX_LEN.value, vocab_size, _SEED.value + i
        )
        passes.append({"name": name, "prompts": prompts, "max_tokens": _MAX_TOKENS.value})
    return passes


def main(argv: list[str]) -> None:
    """Builds the spec, runs it and prints the summary."""
    del argv
    model_dir = pathlib.Path(_MODEL_DIR.value)
    vocab_size = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    spec = vllm_peer.make_spec(
        model_dir,
        make_passes(vocab_size),
        enable_prefix_caching=_PREFIX_CACHING.value,
        max_num_seqs=_MAX_NUM_SEQS.value,
        max_model_len=_PREFIX_LEN.value + _SUFFIX_LEN.value + _MAX_TOKENS.value,
        block_size=_BLOCK_SIZE.value,
        max_num_batched_tokens=_MAX_BATCHED.value,
        extra_engine_args=json.loads(_EXTRA.value),
    )
    python = _PYTHON.value or vllm_peer.default_vllm_python()
    result = vllm_peer.run_vllm(
        python, spec, timeout_s=_TIMEOUT.value, log_path=_LOG.value, echo=_ECHO.value
    )
    if result is None:
        return
    if _OUT.value:
        pathlib.Path(_OUT.value).write_text(json.dumps(result, indent=1))
    print(vllm_peer.format_summary(result))


if __name__ == "__main__":
    app.run(main)
