"""Sharded engines against the single-device engine: identical greedy tokens, per mesh.

    JAX_NUM_CPU_DEVICES=8 python -m experiments.check_parallel --meshes=1x1,1x2,1x8,2x4,4x2,8x1
    python -m pcjax.parallel.launch --num_processes=2 --cpu_devices_per_process=4 -- \\
        python -m experiments.check_parallel --meshes=2x4,1x8 \\
        --reference=workdir/check_parallel/check_parallel.json

A mesh ``DxT`` is D data-parallel replicas of T tensor-parallel shards (`pcjax.parallel`); every
engine runs through the sharded path (``1x1`` too) in debug mode, so page accounting is checked
on every replica after every step and freed pages are NaN-filled. The workload: ``--groups`` of
``--per_group`` prompts sharing a ``--prefix_len``-token prefix, with prefix caching, a cache
small enough to evict (``--num_pages`` per replica) and a host tier (``--swap_space`` GB per
device). Each engine runs the workload ``--rounds`` times (2: the second round over what the
first left cached, with overlapped steps under ``--overlap``).

Several processes (`pcjax.parallel.launch` adds the flags): process 0 leads, the others follow;
the reference tokens then come from ``--reference`` (the JSON of a one-process run). Prints one
row per mesh and writes ``check_parallel.json`` under ``--workdir``; exits 1 if any differ.
"""

import json
import os
import sys
import time

from absl import app, flags

_MODEL = flags.DEFINE_string("model", "pcjax-tiny-tp", "preset or checkpoint dir")
_MESHES = flags.DEFINE_list("meshes", ["1x1", "1x2", "1x8", "2x4", "4x2", "8x1"], "DxT meshes")
_GROUPS = flags.DEFINE_integer("groups", 3, "prompt groups (one shared prefix each)")
_PER_GROUP = flags.DEFINE_integer("per_group", 3, "prompts per group")
_PREFIX_LEN = flags.DEFINE_integer("prefix_len", 40, "tokens of each group's shared prefix")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 8, "generated tokens per prompt")
_PAGE_SIZE = flags.DEFINE_integer("page_size", 4, "tokens per KV page")
_NUM_PAGES = flags.DEFINE_integer("num_pages", 30, "KV pages per replica (small: evicts)")
_SWAP_SPACE = flags.DEFINE_float("swap_space", 1e-4, "GB of host tier per device (0: none)")
_ATTENTION = flags.DEFINE_string("attention_impl", "auto", "attention_impl")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "rounds of the workload per engine (1 or 2)")
_OVERLAP = flags.DEFINE_bool("overlap", True, "second round with overlapped steps")
_REFERENCE = flags.DEFINE_string("reference", None, "JSON with the reference tokens")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/check_parallel", "where the JSON goes")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "processes of the job")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "this process")
_CPU_DEVICES = flags.DEFINE_integer("num_cpu_devices", None, "CPU devices per process")


def workload() -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(0)
    prompts = []
    for _ in range(_GROUPS.value):
        prefix = rng.integers(3, 256, _PREFIX_LEN.value).tolist()
        for _ in range(_PER_GROUP.value):
            prompts.append(prefix + rng.integers(3, 256, int(rng.integers(3, 13))).tolist())
    return prompts


def engine_kwargs() -> dict:
    return dict(
        model=_MODEL.value,
        page_size=_PAGE_SIZE.value,
        num_pages=_NUM_PAGES.value,
        max_num_seqs=4,
        max_model_len=_PAGE_SIZE.value * (_NUM_PAGES.value - 1),
        swap_space=_SWAP_SPACE.value,
        attention_impl=_ATTENTION.value,
        debug=True,
    )


def generate(engine, prompts) -> list[list[list[int]]]:
    """``--rounds`` rounds (plain, then plain or overlapped): each prompt's tokens per round."""
    from pcjax import SamplingParams
    from pcjax.engine.steps import OverlapLoop

    params = SamplingParams(
        temperature=0, max_tokens=_MAX_TOKENS.value, ignore_eos=True, output_kind="final"
    )
    rounds = [[o.outputs[0].token_ids for o in engine.generate(prompts, params, use_tqdm=False)]]
    if _ROUNDS.value == 1:
        return [list(pair) for pair in zip(*rounds, strict=True)]
    ids = [engine.add_request(p, params) for p in prompts]
    loop, outs = OverlapLoop(engine) if _OVERLAP.value else None, {}
    while loop.has_work() if loop else engine.has_unfinished_requests():
        for out in loop.step() if loop else engine.step():
            outs[out.request_id] = out.outputs[0].token_ids
    rounds.append([outs[i] for i in ids])
    return [list(pair) for pair in zip(*rounds, strict=True)]


def check_mesh(spec: str, prompts, reference) -> dict | None:
    """Runs one mesh; the leader returns its row, followers None."""
    from pcjax import Engine, parallel

    d, t = (int(x) for x in spec.split("x"))
    start = time.perf_counter()
    engine = Engine(
        **engine_kwargs(),
        tensor_parallel_size=t,
        data_parallel_size=d,
        mesh=parallel.make_mesh(d, t),
    )
    if engine.runner.channel is not None and not engine.runner.channel.is_leader:
        parallel.follow(engine)
        return None
    tokens = generate(engine, prompts)
    parallel.stop_followers(engine)
    stats = engine.stats()
    return {
        "mesh": spec,
        "identical": tokens == reference,
        "wall_s": time.perf_counter() - start,
        "hit_rate": stats["prefix_cache_hit_rate"],
        "host_hit_tokens": stats["prefix_cache_host_hit_tokens"],
        "evicted_pages": stats["evicted_pages"],
        "swapped_out_pages": stats["swapped_out_pages"],
        "dispatched": [r["dispatched_requests"] for r in stats.get("replicas", [])],
        "device_processes": [[dev.process_index for dev in row] for row in engine.mesh.devices],
        "tokens": tokens,
    }


def main(argv):
    del argv
    from pcjax import parallel

    if _NUM_PROCESSES.value > 1:
        parallel.initialize(
            _COORDINATOR.value,
            _NUM_PROCESSES.value,
            _PROCESS_ID.value,
            num_cpu_devices=_CPU_DEVICES.value,
        )
    elif _CPU_DEVICES.value:
        import jax

        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
    import jax

    from pcjax import Engine

    prompts = workload()
    if _REFERENCE.value:
        with open(_REFERENCE.value) as f:
            reference = json.load(f)["reference"]
    elif jax.process_count() == 1:
        reference = generate(Engine(**engine_kwargs()), prompts)
    else:
        raise app.UsageError("several processes need --reference (a one-process run's JSON)")
    rows = [row for spec in _MESHES.value if (row := check_mesh(spec, prompts, reference))]
    if jax.process_index() == 0:
        report(rows, reference)
    parallel.shutdown()
    if not all(row["identical"] for row in rows):
        sys.exit(1)


def report(rows, reference) -> None:
    import jax

    print(
        f"{jax.process_count()} process(es), {jax.device_count()} devices "
        f"({jax.devices()[0].platform}); {len(reference)} prompts, {_ROUNDS.value} round(s)"
    )
    print(
        f"{'mesh':<6}{'same':>6}{'wall s':>8}{'hit':>7}{'host hit':>9}{'evicted':>8}"
        f"{'to host':>8}  per replica"
    )
    for r in rows:
        print(
            f"{r['mesh']:<6}{r['identical']!s:>6}{r['wall_s']:>8.1f}{r['hit_rate']:>7.3f}"
            f"{r['host_hit_tokens']:>9}{r['evicted_pages']:>8}{r['swapped_out_pages']:>8}"
            f"  {r['dispatched']}"
        )
    os.makedirs(_WORKDIR.value, exist_ok=True)
    with open(os.path.join(_WORKDIR.value, "check_parallel.json"), "w") as f:
        json.dump(
            {"reference": reference, "rows": rows, "processes": jax.process_count()}, f, indent=1
        )


if __name__ == "__main__":
    app.run(main)
