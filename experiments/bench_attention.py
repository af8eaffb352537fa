"""Ragged paged attention: Pallas kernels vs the jnp reference, time per call and K/V bandwidth.

Batches are laid out as the engine lays them out (power-of-two buckets for T, B, M and max_q_len;
randomly permuted page tables; unused pages NaN):

    decode    B sequences of `context` kv tokens, one new token each
    mixed     one chunk of `--chunk` new tokens over context - chunk cached ones, plus B - 1 decodes
    prefill   one chunk of `--chunk` new tokens over context - chunk cached ones

Each case runs every impl once per round, interleaved (fair on a shared machine), after a compile
and `--warmup` calls; the table shows the median (and min) over `--repeats` rounds. "K/V GB/s" is
the K/V bytes a step must read (sum of kv_len * K * H * 2 * itemsize over its sequences) per
second; on an accelerator it is also shown as a fraction of the device's peak HBM bandwidth
(`--peak_hbm_gbps`, default from a small table of device kinds). Every output is checked against
the reference (max abs error) where the reference ran.

    PYTHONPATH=. python experiments/bench_attention.py --workdir=/tmp/bench_attention
    # on a GPU/TPU: contexts 2k..32k and a Llama-3-8B-like head layout by default
    PYTHONPATH=. python experiments/bench_attention.py --workdir=/tmp/ba --impls=reference,pallas
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from pcjax.kernels import IMPLS, ragged_paged_attention, resolve_attention_impl, write_kv
from pcjax.kernels.testing import make_batch

SHAPES = {  # name: (N, K, H, dtype)
    "pcjax-small": (12, 4, 64, "float32"),
    "llama3-8b": (32, 8, 128, "bfloat16"),
}
PEAK_HBM_GBPS = {  # device_kind substring -> GB/s
    "H200": 4800,
    "H100": 3350,
    "A100": 2039,
    "L4": 300,
    "TPU v6": 1640,
    "TPU v5p": 2765,
    "TPU v5": 819,  # v5e / v5 lite
    "TPU v4": 1228,
}

_WORKDIR = flags.DEFINE_string("workdir", None, "results.json goes here", required=True)
_SHAPE = flags.DEFINE_enum("shape", None, list(SHAPES), "head layout (default: by platform)")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "default: the shape's")
_PAGE_SIZE = flags.DEFINE_integer("page_size", 16, "tokens per page (P)")
_BATCH = flags.DEFINE_integer("batch", 8, "sequences per step (B)")
_CHUNK = flags.DEFINE_integer("chunk", 512, "new tokens of the prefill chunk (mixed, prefill)")
_CONTEXTS = flags.DEFINE_list("contexts", None, "kv tokens per sequence (default: by platform)")
_KINDS = flags.DEFINE_list("kinds", ["decode", "mixed", "prefill"], "batch kinds")
_IMPLS = flags.DEFINE_list("impls", ["reference", "pallas"], f"any of {IMPLS}")
_REPEATS = flags.DEFINE_integer("repeats", 20, "timed rounds")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed calls after compiling")
_PEAK = flags.DEFINE_float("peak_hbm_gbps", None, "peak HBM GB/s (default: by device kind)")
_MAX_REF_GB = flags.DEFINE_float("max_reference_gb", 16.0, "skip the reference above this")


def _platform() -> str:
    return {"cuda": "gpu", "rocm": "gpu"}.get(jax.default_backend(), jax.default_backend())


def _peak_gbps() -> float | None:
    if _PEAK.value:
        return _PEAK.value
    kind = jax.devices()[0].device_kind
    return next((gbps for name, gbps in PEAK_HBM_GBPS.items() if name in kind), None)


def _bucket(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _lengths(kind: str, context: int, batch: int, chunk: int, seed: int):
    """(q_lens, kv_lens) of one step; decode contexts jitter by +-5% like a real batch."""
    rng = np.random.default_rng(seed)
    decodes = rng.integers(int(context * 0.95), context + 1, batch).tolist()
    chunk = min(chunk, context)
    if kind == "decode":
        return [1] * batch, decodes
    if kind == "mixed":
        return [chunk] + [1] * (batch - 1), [context] + decodes[1:]
    return [chunk], [context]


def make_case(kind: str, context: int, num_heads, num_kv_heads, head_dim, dtype):
    q_lens, kv_lens = _lengths(kind, context, _BATCH.value, _CHUNK.value, seed=context)
    page_size = _PAGE_SIZE.value
    pages = _bucket(-(-max(kv_lens) // page_size))
    padded = q_lens + [0] * (_bucket(len(q_lens)) - len(q_lens))
    batch = make_batch(
        context,
        padded,
        kv_lens + [0] * (len(padded) - len(kv_lens)),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        page_size=page_size,
        dtype=dtype,
        num_tokens=_bucket(max(8, sum(q_lens))),
        pages_per_seq=pages,
        max_q_len=_bucket(max(q_lens)),
    )
    k_pages, v_pages = write_kv(
        batch.k_pages, batch.v_pages, batch.k, batch.v, batch.md.slot_mapping
    )
    kv_bytes = 2 * sum(kv_lens) * num_kv_heads * head_dim * jnp.dtype(dtype).itemsize
    ref_bytes = 4 * len(padded) * num_heads * batch.md.max_q_len * pages * page_size
    return (batch.q, k_pages, v_pages, batch.md), kv_bytes, ref_bytes


def time_interleaved(fns: dict, args, repeats: int, warmup: int) -> dict:
    """Per impl: compile s, min and median ms over `repeats` interleaved rounds, and the output."""
    stats, outs = {}, {}
    for name, fn in fns.items():
        start = time.perf_counter()
        outs[name] = jax.block_until_ready(fn(*args))
        stats[name] = {"compile_s": time.perf_counter() - start, "ms": []}
        for _ in range(warmup):
            jax.block_until_ready(fn(*args))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            stats[name]["ms"].append(1e3 * (time.perf_counter() - start))
    for s in stats.values():
        times = s.pop("ms")
        s.update(min_ms=float(np.min(times)), median_ms=float(np.median(times)))
    return stats, outs


def run_case(kind, context, shape, impls, peak) -> list[dict]:
    num_heads, num_kv_heads, head_dim, dtype = shape
    args, kv_bytes, ref_bytes = make_case(kind, context, num_heads, num_kv_heads, head_dim, dtype)
    attention = functools.partial(ragged_paged_attention, sm_scale=head_dim**-0.5)
    fns = {
        impl: jax.jit(functools.partial(attention, impl=impl))
        for impl in impls
        if impl != "reference" or ref_bytes <= _MAX_REF_GB.value * 1e9
    }
    stats, outs = time_interleaved(fns, args, _REPEATS.value, _WARMUP.value)
    want = outs.get("reference")
    rows = []
    for impl, s in stats.items():
        gbps = kv_bytes / s["median_ms"] / 1e6
        err = (
            None
            if want is None
            else float(jnp.max(jnp.abs(outs[impl].astype(jnp.float32) - want.astype(jnp.float32))))
        )
        rows.append(
            dict(
                kind=kind,
                context=context,
                impl=impl,
                resolved=resolve_attention_impl(impl, _platform()),
                batch=_BATCH.value,
                chunk=_CHUNK.value,
                kv_bytes=kv_bytes,
                kv_gbps=gbps,
                frac_peak=None if peak is None else gbps / peak,
                max_abs_err=err,
                speedup_vs_reference=(
                    stats["reference"]["median_ms"] / s["median_ms"]
                    if "reference" in stats
                    else None
                ),
                **s,
            )
        )
    return rows


def print_table(rows, peak) -> None:
    head = f"{'kind':8s} {'context':>7s} {'impl':10s} {'median ms':>10s} {'min ms':>8s} "
    head += f"{'vs ref':>7s} {'K/V GB/s':>9s} {'% peak':>7s} {'max err':>8s}"
    print(head)
    for r in rows:
        ratio = r["speedup_vs_reference"]
        print(
            f"{r['kind']:8s} {r['context']:7d} {r['impl']:10s} {r['median_ms']:10.2f} "
            f"{r['min_ms']:8.2f} {'' if ratio is None else f'{ratio:6.2f}x':>7s} "
            f"{r['kv_gbps']:9.1f} {'' if peak is None else f'{100 * r["frac_peak"]:6.1f}%':>7s} "
            f"{'' if r['max_abs_err'] is None else f'{r["max_abs_err"]:.1e}':>8s}"
        )


def main(argv):
    del argv
    platform = _platform()
    accelerator = platform in ("gpu", "tpu")
    shape_name = _SHAPE.value or ("llama3-8b" if accelerator else "pcjax-small")
    num_heads, num_kv_heads, head_dim, dtype = SHAPES[shape_name]
    shape = (num_heads, num_kv_heads, head_dim, jnp.dtype(_DTYPE.value or dtype))
    default_contexts = [2048, 4096, 8192, 16384, 32768] if accelerator else [256, 600, 1024]
    contexts = [int(c) for c in _CONTEXTS.value] if _CONTEXTS.value else default_contexts
    peak = _peak_gbps() if accelerator or _PEAK.value else None
    device = jax.devices()[0]
    print(
        f"{device.platform} {device.device_kind}, jax {jax.__version__}; {shape_name} "
        f"N={num_heads} K={num_kv_heads} H={head_dim} {shape[3].name}, P={_PAGE_SIZE.value}, "
        f"B={_BATCH.value}, chunk={_CHUNK.value}; impls "
        + ", ".join(f"{i}->{resolve_attention_impl(i, platform)}" for i in _IMPLS.value)
    )
    rows = []
    for kind in _KINDS.value:
        for context in contexts:
            case_rows = run_case(kind, context, shape, _IMPLS.value, peak)
            print_table(case_rows, peak)
            rows += case_rows
    print("\nall cases:")
    print_table(rows, peak)
    os.makedirs(_WORKDIR.value, exist_ok=True)
    path = os.path.join(_WORKDIR.value, "results.json")
    meta = dict(
        platform=platform,
        device_kind=device.device_kind,
        jax=jax.__version__,
        shape=shape_name,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        dtype=shape[3].name,
        page_size=_PAGE_SIZE.value,
        peak_hbm_gbps=peak,
        repeats=_REPEATS.value,
    )
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
