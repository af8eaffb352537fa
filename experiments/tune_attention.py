"""Sweeps the GPU kernel's launch parameters on decode steps beside the default tuning.

For each batch and context (bench_attention's engine-shaped decode batches, llama3-8b heads in
bf16, multi-layer calls timed back to back), every combination of `--splits`, `--stages` and
`--block_kv` runs next to `rpa_gpu_tuning.choose_tuning`'s pick; the table gives time per layer
call and the fraction of peak HBM bandwidth, best first. This is how the tuning's cost model is
checked on a device; writes tune_attention.json to --workdir.

    python -m experiments.tune_attention --workdir=/tmp/ta --batches=8 --contexts=8192,32768
"""

import functools
import itertools
import json
import os

import jax
import jax.numpy as jnp
from absl import app, flags

from experiments import bench_attention as bench
from pcjax.kernels.rpa_gpu import ragged_paged_attention_gpu

_SPLITS = flags.DEFINE_list("splits", ["2", "4", "8", "16"], "kv_splits values")
_STAGES = flags.DEFINE_list("stages", ["3", "4"], "num_stages values")
_BLOCK_KV = flags.DEFINE_list("block_kv", ["64", "128"], "block_kv values")


def _variants():
    yield "default", {}
    for splits, stages, block_kv in itertools.product(
        _SPLITS.value, _STAGES.value, _BLOCK_KV.value
    ):
        yield (
            f"S={splits} st={stages} bkv={block_kv}",
            dict(kv_splits=int(splits), num_stages=int(stages), block_kv=int(block_kv)),
        )


def _layers_fn(tuning: dict, sm_scale: float):
    """`bench.chain_layers` of the GPU kernel with `tuning`."""
    return bench.chain_layers(
        functools.partial(ragged_paged_attention_gpu, sm_scale=sm_scale, **tuning)
    )


def main(argv):
    del argv
    interpret = jax.default_backend() != "gpu"
    shape = (*bench.SHAPES["llama3-8b"][:3], jnp.bfloat16)
    peak = bench._peak_gbps() or 4800.0
    rows = []
    for batch in [int(b) for b in bench._BATCHES.value or [8]]:
        for context in [int(c) for c in bench._CONTEXTS.value or [8192, 32768]]:
            q, caches, md, kv_bytes, _ = bench.make_case("decode", batch, context, shape)
            for name, tuning in _variants():
                if interpret:
                    tuning = {**tuning, "interpret": True}
                fn = _layers_fn(tuning, shape[2] ** -0.5)
                try:
                    stats = bench.time_impl(fn, (q, caches, md), bench._REPEATS.value or 5, 10)
                except Exception as e:  # a variant that does not build is a result
                    print(f"B={batch} ctx={context} {name}: {type(e).__name__}: {str(e)[:120]}")
                    continue
                ms = stats["median_ms"] / len(caches)
                rows.append(dict(batch=batch, context=context, variant=name, ms=ms,
                                 frac_peak=kv_bytes / ms / 1e6 / peak))  # fmt: skip
            best = sorted((r for r in rows if r["context"] == context and r["batch"] == batch),
                          key=lambda r: r["ms"])  # fmt: skip
            for r in best:
                print(f"B={batch:3d} ctx={context:6d} {r['variant']:24s} {r['ms'] * 1e3:8.1f} us "
                      f"{100 * r['frac_peak']:5.1f}% of peak")  # fmt: skip
    os.makedirs(bench._WORKDIR.value, exist_ok=True)
    with open(os.path.join(bench._WORKDIR.value, "tune_attention.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    app.run(main)
