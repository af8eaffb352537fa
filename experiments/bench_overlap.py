"""What overlap scheduling buys: the same offline workload stepped plainly (schedule, run, wait,
post-process, one after the other) and overlapped (step k+1 scheduled, built and dispatched
before step k is waited for; `pcjax.engine.steps.OverlapLoop`), rounds alternating.

    python -m experiments.bench_overlap --model=pcjax-small --rounds=3

Reports per mode the median wall time of a round, output tokens/s and steps, where a step's
time goes (host work before dispatch, the wait for the device's result, the rest of the host
work: post-processing), the machine's 1-minute load, and the speedup of the medians.
Writes ``bench_overlap.json`` under --workdir.
"""

import json
import os
import statistics
import time

from absl import app, flags

from experiments.serving_utils import make_workload
from pcjax import Engine, SamplingParams
from pcjax.engine.steps import OverlapLoop

_MODEL = flags.DEFINE_string("model", "pcjax-small", "preset or checkpoint dir")
_ATTENTION = flags.DEFINE_string("attention_impl", "auto", "attention_impl")
_GROUPS = flags.DEFINE_integer("groups", 4, "prompt groups")
_PER_GROUP = flags.DEFINE_integer("prompts_per_group", 8, "prompts per group")
_SYSTEM_LEN = flags.DEFINE_integer("system_prompt_len", 512, "shared tokens")
_QUESTION_LEN = flags.DEFINE_integer("question_len", 64, "own tokens")
_OUTPUT_LEN = flags.DEFINE_integer("output_len", 32, "generated tokens")
_MAX_NUM_SEQS = flags.DEFINE_integer("max_num_seqs", 8, "batch size")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "timed rounds per mode")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/bench_overlap", "where the JSON goes")


def run_round(engine: Engine, prompts, overlap: bool) -> dict:
    params = SamplingParams(temperature=0, max_tokens=_OUTPUT_LEN.value, ignore_eos=True,
                            output_kind="final")  # fmt: skip
    engine.reset_prefix_cache()
    for prompt in prompts:
        engine.add_request(prompt, params)
    loop = OverlapLoop(engine) if overlap else None
    before = engine.stats()
    start, tokens = time.perf_counter(), 0
    while loop.has_work() if loop else engine.has_unfinished_requests():
        for out in loop.step() if loop else engine.step():
            tokens += len(out.token_ids)
    wall = time.perf_counter() - start
    after = engine.stats()
    steps = after["num_steps"] - before["num_steps"]
    host = after["host_begin_s"] - before["host_begin_s"]
    wait = after["device_wait_s"] - before["device_wait_s"]
    return {"wall_s": wall, "output_tokens_per_s": tokens / wall, "steps": steps,
            "host_begin_ms_per_step": 1e3 * host / steps,
            "device_wait_ms_per_step": 1e3 * wait / steps,
            "other_host_ms_per_step": 1e3 * (wall - host - wait) / steps,
            "load_avg_1m": os.getloadavg()[0]}  # fmt: skip


def main(argv):
    del argv
    engine = Engine(model=_MODEL.value, attention_impl=_ATTENTION.value,
                    max_num_seqs=_MAX_NUM_SEQS.value, max_model_len=2048)  # fmt: skip
    workload = lambda seed: make_workload(  # noqa: E731
        seed, _GROUPS.value, _PER_GROUP.value, _SYSTEM_LEN.value, _QUESTION_LEN.value
    )
    for overlap in (False, True):  # warm-up: compiles every shape the rounds use
        run_round(engine, workload(1000), overlap)
    results = {"plain": [], "overlap": []}
    for r in range(_ROUNDS.value):
        for mode in ("plain", "overlap"):
            results[mode].append(run_round(engine, workload(r), mode == "overlap"))
            print(f"round {r} {mode}: {results[mode][-1]}", flush=True)
    summary = {
        mode: {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
        for mode, rounds in results.items()
    }
    summary["overlap_speedup"] = summary["plain"]["wall_s"] / summary["overlap"]["wall_s"]
    print(f"{'mode':<10}{'wall s':>9}{'tok/s':>8}{'steps':>7}{'begin ms':>10}{'wait ms':>9}"
          f"{'other ms':>10}{'load':>6}")  # fmt: skip
    for mode in ("plain", "overlap"):
        m = summary[mode]
        print(f"{mode:<10}{m['wall_s']:>9.2f}{m['output_tokens_per_s']:>8.1f}{m['steps']:>7.0f}"
              f"{m['host_begin_ms_per_step']:>10.2f}{m['device_wait_ms_per_step']:>9.2f}"
              f"{m['other_host_ms_per_step']:>10.2f}{m['load_avg_1m']:>6.1f}")  # fmt: skip
    print(f"overlap speedup (plain wall / overlap wall, median): {summary['overlap_speedup']:.3f}")
    os.makedirs(_WORKDIR.value, exist_ok=True)
    with open(os.path.join(_WORKDIR.value, "bench_overlap.json"), "w") as f:
        json.dump({"summary": summary, "rounds": results, "model": _MODEL.value}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
