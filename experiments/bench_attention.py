"""Ragged paged attention: kernels vs the jnp reference, time per layer call and K/V bandwidth.

Batches are laid out as the engine lays them out (power-of-two buckets for T, B, M and max_q_len,
randomly permuted page tables):

    decode    B sequences of about `context` kv tokens (+-5%), one new token each
    mixed     one chunk of `--chunk` new tokens over context - chunk cached ones, plus B - 1 decodes
    prefill   one chunk of `--chunk` new tokens over context - chunk cached ones

Timing. One jitted call runs the attention of L layers, each over its own K/V cache and on the
previous layer's output (as a model step does), and each timed round dispatches `--calls` such
calls back to back before one sync: host dispatch overlaps the device and the caches rotate, so
neither launch gaps nor an L2-resident cache flatter the figure (L is chosen so the caches
together exceed `--min_cache_mb`). A round's time / (calls * L) is the time per layer call; the
table shows the median (and min) over `--repeats` rounds.

"K/V GB/s" is the K/V bytes a call must read (sum of kv_len * K * H * 2 * itemsize over its
sequences) per second; on an accelerator also as a fraction of the device's peak HBM bandwidth
(`--peak_hbm_gbps`, default from a small table of device kinds) and of a device-to-device copy
measured in the same run (bytes read + written per second). Every output is checked against the
reference (max abs error) where the reference fits `--max_reference_gb`.

    python -m experiments.bench_attention --workdir=/tmp/ba            # CPU: pcjax-small, f32
    python -m experiments.bench_attention --workdir=/tmp/ba --quick    # decode B=8/64, bf16
    python -m experiments.bench_attention --workdir=/tmp/ba --impls=reference,pallas,cpu

`--quick`: decode only, batch 8 and 64, contexts 2k/8k/32k (256/1k/2k on CPU, where the kernels
run in interpret mode), the llama3-8b head layout in bf16, the pallas impl; within 2 minutes on a
GPU including compiles.
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from pcjax.kernels import IMPLS, ragged_paged_attention, resolve_attention_impl
from pcjax.kernels.ragged_paged_attention import AttentionMetadata

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
_QUICK = flags.DEFINE_bool("quick", False, "decode-only quick mode (see the module docstring)")
_SHAPE = flags.DEFINE_enum("shape", None, list(SHAPES), "head layout (default: by platform)")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "default: the shape's")
_PAGE_SIZE = flags.DEFINE_integer("page_size", 16, "tokens per page (P)")
_BATCHES = flags.DEFINE_list("batches", None, "sequences per step (B); default 8 (quick: 8,64)")
_CHUNK = flags.DEFINE_integer("chunk", 512, "new tokens of the prefill chunk (mixed, prefill)")
_CONTEXTS = flags.DEFINE_list("contexts", None, "kv tokens per sequence (default: by platform)")
_KINDS = flags.DEFINE_list("kinds", None, "batch kinds (default decode,mixed,prefill)")
_IMPLS = flags.DEFINE_list("impls", None, f"any of {IMPLS} (default reference,pallas)")
_REPEATS = flags.DEFINE_integer("repeats", None, "timed rounds (default 20; quick 5)")
_CALLS = flags.DEFINE_integer("calls", None, "calls per round (default 10 on GPU/TPU, 1 on CPU)")
_MIN_CACHE_MB = flags.DEFINE_float("min_cache_mb", 512, "caches of all layers exceed this")
_MAX_CACHE_GB = flags.DEFINE_float("max_cache_gb", 24, "memory for the caches of all layers")
_MAX_LAYERS = flags.DEFINE_integer("max_layers", 16, "most layers (caches) per call")
_PEAK = flags.DEFINE_float("peak_hbm_gbps", None, "peak HBM GB/s (default: by device kind)")
_MAX_REF_GB = flags.DEFINE_float("max_reference_gb", 4.0, "skip the reference above this")


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
    """(q_lens, kv_lens) of one step; decode contexts jitter by -5% like a real batch."""
    rng = np.random.default_rng(seed)
    decodes = rng.integers(int(context * 0.95), context + 1, batch).tolist()
    chunk = min(chunk, context)
    if kind == "decode":
        return [1] * batch, decodes
    if kind == "mixed":
        return [chunk] + [1] * (batch - 1), [context] + decodes[1:]
    return [chunk], [context]


def make_metadata(q_lens, kv_lens, page_size: int, seed: int) -> tuple[AttentionMetadata, int]:
    """Engine-shaped metadata over randomly permuted pages; returns it and the pool's page count."""
    rng = np.random.default_rng(seed)
    num_seqs, num_tokens = _bucket(len(q_lens)), _bucket(max(8, sum(q_lens)))
    need = [-(-n // page_size) for n in kv_lens]
    pages_per_seq = _bucket(max(need))
    pages = 1 + rng.permutation(sum(need)).astype(np.int32)  # page 0 stays the null page
    page_table = np.zeros((num_seqs, pages_per_seq), np.int32)
    slots = np.zeros(num_tokens, np.int32)
    cu_q_lens = np.zeros(num_seqs + 1, np.int32)
    cu_q_lens[1 : len(q_lens) + 1] = np.cumsum(q_lens)
    cu_q_lens[len(q_lens) + 1 :] = cu_q_lens[len(q_lens)]
    for b, (q_len, kv_len) in enumerate(zip(q_lens, kv_lens, strict=True)):
        page_table[b, : need[b]], pages = pages[: need[b]], pages[need[b] :]
        pos = np.arange(kv_len - q_len, kv_len)
        slots[cu_q_lens[b] : cu_q_lens[b + 1]] = page_table[b, pos // page_size] * page_size + (
            pos % page_size
        )
    padded_kv = list(kv_lens) + [0] * (num_seqs - len(kv_lens))
    md = AttentionMetadata(
        slot_mapping=jnp.asarray(slots),
        page_table=jnp.asarray(page_table),
        kv_lens=jnp.asarray(padded_kv, jnp.int32),
        cu_q_lens=jnp.asarray(cu_q_lens),
        max_q_len=_bucket(max(q_lens)),
    )
    return md, 1 + sum(need)


def make_case(kind, batch, context, shape, layers_cap: int | None = None):
    """(q, per-layer caches, md, kv_bytes, ref_bytes): caches filled on the device."""
    num_heads, num_kv_heads, head_dim, dtype = shape
    q_lens, kv_lens = _lengths(kind, context, batch, _CHUNK.value, seed=context + batch)
    page_size = _PAGE_SIZE.value
    md, num_pages = make_metadata(q_lens, kv_lens, page_size, seed=context)
    itemsize = jnp.dtype(dtype).itemsize
    kv_bytes = 2 * sum(kv_lens) * num_kv_heads * head_dim * itemsize
    cache_bytes = 2 * num_pages * page_size * num_kv_heads * head_dim * itemsize
    layers = max(1, min(_MAX_LAYERS.value, -(-int(_MIN_CACHE_MB.value * 2**20) // cache_bytes)))
    layers = max(1, min(layers, int(_MAX_CACHE_GB.value * 2**30 // cache_bytes), layers_cap or 99))
    key = jax.random.key(context * 31 + batch)
    make = jax.jit(
        lambda k: jax.random.normal(k, (num_pages, page_size, num_kv_heads, head_dim), dtype)
    )
    caches = [(make(k1), make(k2)) for k1, k2 in jax.random.split(key, (layers, 2))]
    q = jax.random.normal(jax.random.key(7), (md.slot_mapping.shape[0], num_heads, head_dim), dtype)
    num_seqs, pages_per_seq = md.page_table.shape
    ref_bytes = 4 * num_seqs * pages_per_seq * page_size * num_heads * (md.max_q_len + head_dim)
    return q, caches, md, kv_bytes, ref_bytes


def _layers_fn(impl: str, sm_scale: float):
    """`chain_layers` of the attention implementation `impl`."""
    return chain_layers(functools.partial(ragged_paged_attention, sm_scale=sm_scale, impl=impl))


def chain_layers(attention):
    """A jitted call of `attention(q, k, v, md)` over every layer's cache in turn, each layer's
    output the next one's queries (as in a model, and no extra op between the layers)."""

    @jax.jit
    def run(q, caches, md):
        for k, v in caches:
            q = attention(q, k, v, md)
        return q

    return run


def time_impl(fn, args, repeats: int, calls: int) -> dict:
    """Compile s, and min / median ms per call over `repeats` rounds of `calls` calls."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    jax.block_until_ready(fn(*args))  # one untimed call after compiling
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = [fn(*args) for _ in range(calls)]
        jax.block_until_ready(out)
        rounds.append((time.perf_counter() - start) / calls * 1e3)
    return dict(
        compile_s=compile_s, min_ms=float(np.min(rounds)), median_ms=float(np.median(rounds))
    )


def copy_gbps(calls: int, repeats: int, size_mb: float = 2048) -> float:
    """Device-to-device copy bandwidth, bytes read + written per second (GB/s)."""
    x = jnp.zeros((int(size_mb * 2**20) // 4,), jnp.float32) + 1
    fn = jax.jit(jnp.copy)
    stats = time_impl(fn, (x,), repeats, calls)
    return 2 * x.nbytes / stats["median_ms"] / 1e6


def run_case(kind, batch, context, shape, impls, peak, copy) -> list[dict]:
    head_dim = shape[2]
    q, caches, md, kv_bytes, ref_bytes = make_case(kind, batch, context, shape)
    layers = len(caches)
    accelerator = _platform() in ("gpu", "tpu")
    calls = _CALLS.value or (10 if accelerator else 1)
    repeats = _REPEATS.value or (5 if _QUICK.value else 20)
    want = None
    if ref_bytes <= _MAX_REF_GB.value * 1e9:
        ref = _layers_fn("reference", head_dim**-0.5)
        want = ref(q, caches[:1], md)
    rows = []
    for impl in impls:
        fn = _layers_fn(impl, head_dim**-0.5)
        stats = time_impl(fn, (q, caches, md), repeats, calls)
        stats = {k: v / layers if k.endswith("_ms") else v for k, v in stats.items()}
        err = None
        if want is not None:
            out = fn(q, caches[:1], md).astype(jnp.float32)
            err = float(jnp.max(jnp.abs(out - want.astype(jnp.float32))))
        gbps = kv_bytes / stats["median_ms"] / 1e6
        rows.append(
            dict(
                kind=kind, context=context, batch=batch, impl=impl,
                resolved=resolve_attention_impl(impl, _platform()), chunk=_CHUNK.value,
                layers=layers, calls_per_round=calls, kv_bytes=kv_bytes, kv_gbps=gbps,
                frac_peak=None if peak is None else gbps / peak,
                frac_copy=None if copy is None else gbps / copy, max_abs_err=err, **stats,
            )
        )  # fmt: skip
    reference = next((r for r in rows if r["impl"] == "reference"), None)
    for r in rows:
        r["speedup_vs_reference"] = reference and reference["median_ms"] / r["median_ms"]
    return rows


def print_table(rows) -> None:
    head = f"{'kind':8s} {'B':>3s} {'context':>7s} {'impl':10s} {'median ms':>10s} {'min ms':>8s} "
    head += f"{'vs ref':>7s} {'K/V GB/s':>9s} {'% peak':>7s} {'% copy':>7s} {'max err':>8s}"
    print(head)
    pct = lambda x: "" if x is None else f"{100 * x:6.1f}%"
    for r in rows:
        ratio, err = r["speedup_vs_reference"], r["max_abs_err"]
        print(
            f"{r['kind']:8s} {r['batch']:3d} {r['context']:7d} {r['impl']:10s} "
            f"{r['median_ms']:10.4f} {r['min_ms']:8.4f} "
            f"{'' if ratio is None else f'{ratio:6.2f}x':>7s} {r['kv_gbps']:9.1f} "
            f"{pct(r['frac_peak']):>7s} {pct(r['frac_copy']):>7s} "
            f"{'' if err is None else f'{err:.1e}':>8s}"
        )


def _settings(accelerator: bool):
    """(shape name, kinds, batches, contexts, impls) from the flags, quick mode and platform."""
    quick = _QUICK.value
    shape = _SHAPE.value or ("llama3-8b" if accelerator or quick else "pcjax-small")
    kinds = _KINDS.value or (["decode"] if quick else ["decode", "mixed", "prefill"])
    batches = [int(b) for b in _BATCHES.value or ([8, 64] if quick else [8])]
    if _CONTEXTS.value:
        contexts = [int(c) for c in _CONTEXTS.value]
    elif accelerator:
        contexts = [2048, 8192, 32768] if quick else [2048, 4096, 8192, 16384, 32768]
    else:
        contexts = [256, 1024, 2048] if quick else [256, 600, 1024]
    quick_impl = "pallas" if accelerator else "pallas_gpu"  # CPU: the GPU kernel, interpreted
    impls = _IMPLS.value or ([quick_impl] if quick else ["reference", "pallas"])
    return shape, kinds, batches, contexts, impls


def main(argv):
    del argv
    platform = _platform()
    accelerator = platform in ("gpu", "tpu")
    shape_name, kinds, batches, contexts, impls = _settings(accelerator)
    num_heads, num_kv_heads, head_dim, dtype = SHAPES[shape_name]
    shape = (num_heads, num_kv_heads, head_dim, jnp.dtype(_DTYPE.value or dtype))
    peak = _peak_gbps() if accelerator or _PEAK.value else None
    copy = copy_gbps(_CALLS.value or (10 if accelerator else 1), 5) if accelerator else None
    device = jax.devices()[0]
    print(
        f"{device.platform} {device.device_kind}, jax {jax.__version__}; {shape_name} "
        f"N={num_heads} K={num_kv_heads} H={head_dim} {shape[3].name}, P={_PAGE_SIZE.value}, "
        f"chunk={_CHUNK.value}; copy {copy and f'{copy:.0f} GB/s'}; impls "
        + ", ".join(f"{i}->{resolve_attention_impl(i, platform)}" for i in impls),
        flush=True,
    )
    rows = []
    for kind in kinds:
        for batch in batches:
            for context in contexts:
                case_rows = run_case(kind, batch, context, shape, impls, peak, copy)
                print_table(case_rows)
                rows += case_rows
    print("\nall cases:")
    print_table(rows)
    os.makedirs(_WORKDIR.value, exist_ok=True)
    path = os.path.join(_WORKDIR.value, "results.json")
    meta = dict(
        platform=platform, device_kind=device.device_kind, jax=jax.__version__,
        shape=shape_name, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
        dtype=shape[3].name, page_size=_PAGE_SIZE.value, peak_hbm_gbps=peak, copy_gbps=copy,
        quick=_QUICK.value,
    )  # fmt: skip
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
