"""Builds every GPU attention kernel configuration of the supported range once.

On a GPU each distinct configuration (`pcjax.kernels.rpa_gpu.launch_configurations`: decode or
prefill launch, dtype, head_dim, rows, tile, warps, split or not, page-table lookup mode) is
lowered and compiled by Triton for the device, from abstract shapes (no memory), so a
configuration that does not fit the chip (shared memory, registers) fails here with Triton's own
message. Elsewhere it is lowered for an abstract `--device_kind` (no compile). Prints one line per
configuration and a summary; writes compile_kernels.json to --workdir.

    python -m experiments.compile_kernels --workdir=/tmp/ck        # on the GPU machine
"""

import concurrent.futures
import functools
import json
import os
import time
import warnings

import jax
from absl import app, flags

from pcjax.kernels.rpa_gpu import launch_configurations, ragged_paged_attention_gpu
from pcjax.kernels.testing import abstract_launch_args

_WORKDIR = flags.DEFINE_string("workdir", "workdir/compile_kernels", "results go here")
_DEVICE_KIND = flags.DEFINE_string("device_kind", "NVIDIA H200", "abstract device off GPU")
_THREADS = flags.DEFINE_integer("threads", 8, "configurations built at once")


def _build(case, compile_: bool) -> dict:
    """Lowers (and compiles) one configuration; returns seconds and the error, if any."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the Triton backend's
            fn = functools.partial(ragged_paged_attention_gpu, sm_scale=case.head_dim**-0.5)
            lowered = jax.jit(fn).lower(*abstract_launch_args(case))
            if compile_:
                lowered.compile()
        error = None
    except Exception as e:  # a configuration that does not build is a result, not a crash
        error = f"{type(e).__name__}: {e}"[:500]
    return dict(seconds=time.perf_counter() - start, error=error)


def _abstract_mesh():
    device = jax.sharding.AbstractDevice(
        device_kind=_DEVICE_KIND.value, num_cores=1, platform="cuda"
    )
    return jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)


def main(argv):
    del argv
    on_gpu = jax.default_backend() == "gpu"
    if on_gpu:
        configs = launch_configurations()
        with concurrent.futures.ThreadPoolExecutor(_THREADS.value) as pool:
            results = list(pool.map(lambda c: _build(c, True), configs.values()))
    else:
        with jax.sharding.use_abstract_mesh(_abstract_mesh()):
            configs = launch_configurations()
            results = [_build(case, False) for case in configs.values()]
    rows = []
    for key, case, result in zip(configs, configs.values(), results, strict=True):
        decode, dtype, head_dim, row_count, block_kv, warps, split, mode = key
        rows.append(dict(
            launch="decode" if decode else "prefill", dtype=dtype, head_dim=head_dim,
            rows=row_count, block_kv=block_kv, num_warps=warps, split=split, lookup=mode,
            page_size=case.page_size, batch=case.num_seqs, context=case.context, **result,
        ))  # fmt: skip
        status = "ok" if result["error"] is None else f"FAILED {result['error'][:200]}"
        print(
            f"{rows[-1]['launch']:7s} {dtype:8s} H={head_dim:3d} R={row_count:3d} "
            f"BKV={block_kv:3d} w={warps} split={int(split)} {mode:9s} "
            f"{result['seconds']:5.1f}s {status}"
        )
    failed = sum(r["error"] is not None for r in rows)
    what = (
        "compiled for " + jax.devices()[0].device_kind
        if on_gpu
        else (f"lowered (not compiled) for an abstract {_DEVICE_KIND.value}")
    )
    print(f"compile_kernels: {len(rows) - failed}/{len(rows)} configurations {what}")
    os.makedirs(_WORKDIR.value, exist_ok=True)
    with open(os.path.join(_WORKDIR.value, "compile_kernels.json"), "w") as f:
        json.dump({"compiled": on_gpu, "results": rows}, f, indent=1)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    app.run(main)
